"""``python -m benchmark``: list, run, evaluate, report, perf.

User errors (unknown names, bad files, bad values) print one line and exit 2; nothing already written is touched.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from cvpdl.errors import UserInputError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m benchmark", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    listing = sub.add_parser("list", help="suites, their methods, datasets and paper references")
    listing.add_argument("--verbose", "-v", action="store_true", help="also each method's declared deviations "
                                                                       "from the paper's official code")

    run = sub.add_parser("run", help="train and evaluate every (method, seed) cell of a suite")
    run.add_argument("--suite", required=True)
    run.add_argument("--methods", nargs="+", help="subset of the suite's methods (default: all)")
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run.add_argument("--profile", default="default", help="quick | default | full")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one config value (repeatable); see run.json for the keys")
    run.add_argument("--results-dir", type=Path, default=Path("results"))
    run.add_argument("--device", default="auto", help="auto | cpu | cuda")
    run.add_argument("--data", default="digits", help="digits (embedded default) | coco | imagefolder")
    run.add_argument("--data-root", type=Path, help="root of a COCO-format dataset / ImageFolder")
    run.add_argument("--clip", help="open_clip architecture of --clip-weights (e.g. RN50)")
    run.add_argument("--clip-weights", type=Path, help="local open_clip checkpoint file (nothing is downloaded)")
    run.add_argument("--cache-dir", type=Path, help="cached data and models (default $CVPDL_CACHE or "
                                                    "~/.cache/cvpdl-bench)")
    run.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    run.add_argument("--force", action="store_true", help="recompute cells that finished before")
    run.add_argument("--resume", action="store_true", help="continue interrupted cells from their last per-epoch "
                                                           "checkpoint (finished cells are always reused)")

    evaluate = sub.add_parser("evaluate", help="the common COCO evaluator on a ground truth and detections")
    evaluate.add_argument("--gt", type=Path, required=True, help="COCO ground-truth JSON")
    evaluate.add_argument("--dt", type=Path, required=True, help="COCO results JSON (list of detections)")
    evaluate.add_argument("--novel-cat-ids", nargs="+", type=int, help="adds AP50_base / AP50_novel / AP50_all")

    perf = sub.add_parser("perf", help="throughput, evaluator speed and suite wall times → DIR/perf/perf.md")
    perf.add_argument("--results-dir", type=Path, default=Path("results"))
    perf.add_argument("--device", default="auto", help="auto | cpu | cuda")
    perf.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    perf.add_argument("--suites-profile", default="quick", help="profile each suite is run on for its wall time "
                                                                "(none: skip)")
    perf.add_argument("--cache-dir", type=Path)
    perf.add_argument("--threads", type=int)

    report = sub.add_parser("report", help="rebuild summary.md and figures from written results, no training")
    report.add_argument("--suite", required=True)
    report.add_argument("--results-dir", type=Path, default=Path("results"))
    report.add_argument("--from-mlflow", action="store_true", help="rebuild metrics.csv from the tracked runs")
    return parser


def cmd_list(verbose: bool = False) -> None:
    from benchmark.registry import REGISTRY

    for suite in REGISTRY.suites():
        state = "" if suite.status == "ready" else f"  [not runnable: {suite.status}]"
        print(f"{suite.name}: {suite.question}{state}\n  dataset: {suite.dataset}")
        for method in REGISTRY.methods(suite.name):
            print(f"  - {method.name}: {method.paper}")
            if verbose:
                for deviation in method.deviations:
                    print(f"      deviation: {deviation.line()}")


def cmd_evaluate(args) -> None:
    from cvpdl.data.coco import read_json, validate_coco
    from cvpdl.evaluation.coco_eval import evaluate_detections

    gt = read_json(args.gt, "ground-truth file")
    validate_coco(gt, str(args.gt))
    dt = read_json(args.dt, "detections file")
    if not isinstance(dt, list) or any(not {"image_id", "category_id", "bbox", "score"} <= set(d) for d in dt):
        raise UserInputError(f"{args.dt}: expected a list of {{image_id, category_id, bbox, score}} detections")
    known = {c["id"] for c in gt["categories"]}
    if args.novel_cat_ids and set(args.novel_cat_ids) - known:
        raise UserInputError(f"--novel-cat-ids {sorted(set(args.novel_cat_ids) - known)} are not categories of "
                             f"{args.gt}; choose from: {sorted(known)}")
    try:
        stats = evaluate_detections(gt, dt, args.novel_cat_ids)
    except ValueError as err:
        raise UserInputError(f"{args.dt}: {err}") from None
    print(json.dumps(stats, indent=2))


def cmd_report(args) -> None:
    from benchmark.registry import REGISTRY
    from benchmark.report import metrics_from_mlflow, render_suite
    from benchmark.results import atomic_write_csv

    spec = REGISTRY.suite(args.suite)
    suite_dir = args.results_dir / spec.name
    if args.from_mlflow:
        atomic_write_csv(suite_dir / "metrics.csv", metrics_from_mlflow(spec.name, args.results_dir))
    for path in render_suite(spec.name, suite_dir):
        print(path)


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a scheduler, `kill`) ends runs KILLED, like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        import benchmark.suites  # noqa: F401  (registers every suite)

        if args.command == "list":
            cmd_list(args.verbose)
        elif args.command == "run":
            from benchmark.runner import RunOptions, run_suite

            run_suite(RunOptions(**{k: v for k, v in vars(args).items() if k != "command"}))
        elif args.command == "evaluate":
            cmd_evaluate(args)
        elif args.command == "report":
            cmd_report(args)
        elif args.command == "perf":
            from benchmark.perf import PerfOptions, run_perf

            if args.steps < 1:
                raise UserInputError(f"--steps must be at least 1, got {args.steps}")
            run_perf(PerfOptions(**{k: v for k, v in vars(args).items() if k != "command"}))
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept and reused by the next run; add --resume to continue the "
              "interrupted cell from its last epoch", file=sys.stderr)
        return 130
    return 0
