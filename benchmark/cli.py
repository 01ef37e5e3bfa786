"""``python -m benchmark``: list, run, plan, tune, report, verify, evaluate, perf.

User errors (unknown names, bad files, bad values) print one line and exit 2; nothing already written is touched.
Exit codes: 0 done, 2 usage or bad input, 3 some cell failed or diverged (the others are kept), 130 interrupted.
Heavy packages (torch, mlflow, open_clip) are imported by the subcommand that needs them, so ``--help`` and a
cached ``list`` answer at once.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from benchmark import catalog
from benchmark.parser import EXIT_FAILED_CELLS, EXIT_INTERRUPTED, EXIT_USAGE, build_parser
from benchmark.perf import extras as perf_extras
from cvpdl.errors import UserInputError

def cmd_list(verbose: bool = False) -> None:
    for suite in catalog.suite_catalog():
        print(f"{suite['name']}: {suite['question']}\n  dataset: {suite['dataset']} "
              f"(--data {' | '.join(suite['datasets'])})")
        for method in suite["methods"]:
            print(f"  - {method['name']}: {method['paper']}")
            if verbose:
                for deviation in method["deviations"]:
                    print(f"      deviation: {deviation}")


class _TqdmLogHandler(logging.Handler):
    """Log lines printed between progress bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def configure_console(verbosity: int, quiet: bool) -> None:
    """-q: warnings, errors and the final table; default: progress lines too; -v: debug lines and MLflow's own."""
    logger = logging.getLogger("benchmark")
    if not any(isinstance(h, _TqdmLogHandler) for h in logger.handlers):
        handler = _TqdmLogHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbosity else logging.INFO)
    if verbosity:
        for name in ("alembic", "mlflow"):
            logging.getLogger(name).setLevel(logging.INFO)
    if quiet or not sys.stderr.isatty():  # a log file gets the plain lines, not carriage-return bars
        os.environ["TQDM_DISABLE"] = "1"  # read by tqdm when it is imported, which the subcommands do after this


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


def cmd_plan(args) -> None:
    from benchmark.confirmation import write_plan

    path = write_plan(args.suite, args.results_dir, args.force, args.tuned, args.seed_cap)
    plan = json.loads(path.read_text())
    print(f"{path}: {plan['n']} seeds ({plan['seeds'][0]}-{plan['seeds'][-1]}, none used before), one look, family of "
          f"{plan['family_size']} primary claims at α={plan['alpha']:g} (each test at "
          f"≈{plan['alpha'] / plan['family_size']:.2g})")
    for claim in plan["claims"]:
        needs = claim["seeds_needed"]
        print(f"  {claim['text']}: pilot Δ {claim['pilot']['diff']:+.4f}; needs "
              f"{'∞' if needs is None else f'{needs:.0f}'} seeds; power at {plan['n']}: {claim['power_at_n']}")
    print(f"run it once: python -m benchmark run --suite {args.suite} --plan {path}  (commit the plan first)")


def cmd_print_config(options) -> None:
    """The resolved config as YAML that ``--config`` reads back (same config hash with the same --data options)."""
    import yaml

    from benchmark import config as config_lib
    from benchmark.plan import apply_plan, resolve

    _, _, cfg = resolve(apply_plan(options))
    print(f"# suite {options.suite}, profile {options.profile}; config_hash "
          f"{config_lib.config_hash({'cfg': cfg, **options.data_options()})} with --data {options.data}")
    print(yaml.safe_dump(cfg, sort_keys=False), end="")


def cmd_report(args) -> None:
    """Re-render the suite's default results and every other run's folder (``<suite>/<data>-<profile>-<hash>/``);
    ``--from-mlflow`` first rebuilds the latest invocation's metrics.csv from its tracked cells."""
    from benchmark.registry import REGISTRY
    from benchmark.report import render_suite
    from benchmark.results import atomic_write_csv
    from benchmark.tracking import metrics_from_mlflow

    spec = REGISTRY.suite(args.suite)
    base = args.results_dir / spec.name
    if args.from_mlflow:
        metrics, folder = metrics_from_mlflow(spec.name, args.results_dir)
        atomic_write_csv(args.results_dir / folder / "metrics.csv", metrics)
    folders = [path.parent for path in sorted(base.glob("*/metrics.csv")) if path.parent.name != "tuning"]
    if (base / "metrics.csv").is_file() or not folders:
        folders.insert(0, base)  # the default results (a missing file is the error render_suite names)
    for folder in folders:
        for path in render_suite(spec.name, folder, args.results_dir if folder == base else None):
            print(path)


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a scheduler, `kill`) ends runs KILLED, like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console(args.__dict__.pop("verbosity"), args.__dict__.pop("quiet"))
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command == "list":
            cmd_list(args.verbose)
            return 0
        catalog.preflight(args)  # names, seeds and keys refused before torch is imported or anything written
        if args.command == "run" and args.__dict__.pop("dry_run"):
            print(catalog.dry_run(args))
            return 0
        import benchmark.suites  # noqa: F401  (registers every suite)

        if args.command == "run":
            from benchmark.runner import RunOptions, run_suite

            print_config = args.__dict__.pop("print_config")
            options = RunOptions(**{k: v for k, v in vars(args).items() if k != "command"})
            cmd_print_config(options) if print_config else run_suite(options)
        elif args.command == "plan":
            cmd_plan(args)
        elif args.command == "sensitivity":
            from benchmark.runner import RunOptions
            from benchmark.sensitivity import run_sensitivity

            asked = args.__dict__.pop("sweep"), args.__dict__.pop("claims")
            table = run_sensitivity(RunOptions(**{k: v for k, v in vars(args).items() if k != "command"},
                                               params=Path("none")), *asked)
            print(table[["text", "knob", "value", "n", "diff", "ci_low", "ci_high", "p", "direction"]].to_string(
                index=False, float_format=lambda x: f"{x:.4g}"))
        elif args.command == "evaluate":
            cmd_evaluate(args)
        elif args.command == "report":
            cmd_report(args)
        elif args.command == "tune":
            from benchmark.tune import TuneOptions, tune_suite

            tune_suite(TuneOptions(**{k: v for k, v in vars(args).items() if k != "command"}))
        elif args.command == "verify":
            from benchmark.verify import verify

            return verify(**{k: v for k, v in vars(args).items() if k != "command"})
        elif args.command == "perf":
            from benchmark.perf.command import PerfOptions, run_perf

            for flag in ("steps", "profile_steps", "suite_jobs"):
                if getattr(args, flag) < 1:
                    raise UserInputError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
            extras = tuple(name for name in perf_extras.EXTRAS if args.__dict__.pop(f"extra_{name}"))
            run_perf(PerfOptions(**{k: v for k, v in vars(args).items() if k != "command"}, extras=extras))
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept and reused by the next run; add --resume to continue the "
              "interrupted cell from its last epoch", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        runner = sys.modules.get("benchmark.runner")  # loaded whenever cells ran
        if runner is None or not isinstance(err, runner.CellsFailedError):
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED_CELLS
    return 0
