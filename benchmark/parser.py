"""The command line's grammar: every subcommand of ``python -m benchmark``, its options, their defaults and help,
and one-line usage errors (``cli`` runs what it parses)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.config import seed
from benchmark.perf import extras as perf_extras
from benchmark.registry import PROFILES, SUITE_NAMES
from benchmark.sizing import AUTO, population_option
from cvpdl.errors import UserInputError

EXIT_USAGE = 2
EXIT_FAILED_CELLS = 3
EXIT_INTERRUPTED = 130


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default in its help line, where it has one and the line does not already say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
        return f"{text} (default: {shown})"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=_HelpFormatter, **kwargs)

    def error(self, message: str):  # one line, not argparse's usage block
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _seed(text: str) -> int:
    try:
        return seed(text)
    except UserInputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _population(text: str) -> int | str:
    try:
        return population_option(text)
    except UserInputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


DESCRIPTION = "cvpdl-bench: measure, over seeds, the claims of DETR/DAB/DN-DETR, distillation and RegionCLIP papers."
FIRST_STEP = ("start with: python -m benchmark run --suite kd --profile quick --seeds 0  (a smoke test, about a "
              "minute); `COMMAND --help` tells more")


def _add_suite_argument(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--suite`` (checked against the catalog, so that a suite a test registers is accepted too)."""
    parser.add_argument("--suite", required=True, metavar="SUITE",
                        help=f"the suite to {verb}: {' | '.join(SUITE_NAMES)}")


def _add_machine_options(parser: argparse.ArgumentParser) -> None:
    """Where a command that trains computes: cache, device, threads."""
    parser.add_argument("--cache-dir", type=Path, help="cached data and models (default $CVPDL_CACHE or "
                                                       "~/.cache/cvpdl-bench)")
    parser.add_argument("--device", default="auto", metavar="{auto,cpu,cuda}", help="auto: CUDA when present")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: all cores)")


def _add_population_option(parser: argparse.ArgumentParser, what: str = "a method's seeds") -> None:
    parser.add_argument("--population", type=_population, default=AUTO, metavar="{N,auto}",
                        help=f"train {what} N at a time as one batched model (consecutive chunks; kd, detr, "
                             "RegionCLIP). Each member's numbers equal its run alone up to rounding "
                             "(docs/performance.md); auto: the size the committed perf --population run on this "
                             "device type measured fastest (1 on this CPU), recorded in run.json")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m benchmark", description=DESCRIPTION, epilog=FIRST_STEP)
    parser.add_argument("-v", "--verbose", dest="verbosity", action="count", default=0,
                        help="more output: debug lines, MLflow/alembic messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors and the final table only, no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, title="commands",
                                metavar="COMMAND")

    listing = sub.add_parser("list", help="suites, their methods, datasets and paper references")
    listing.add_argument("--verbose", "-v", action="store_true", help="also each method's declared deviations "
                                                                       "from the paper's official code")

    run = sub.add_parser("run", help="train and evaluate every (method, seed) cell of a suite")
    _add_suite_argument(run, "run")
    run.add_argument("--methods", nargs="+", help="subset of the suite's methods (default: all; `list` names them)")
    run.add_argument("--seeds", nargs="+", type=_seed, default=[0, 1, 2, 3, 4],
                     help="distinct integers >= 0, one cell per method and seed")
    run.add_argument("--profile", default="default", metavar="PROFILE",
                     help="quick: a smoke test whose numbers are not results; default: the README's run; full: GPU")
    run.add_argument("--plan", type=Path, metavar="PLAN.json",
                     help="run exactly a pre-registered confirmation plan (`plan` writes it): its seeds, methods and "
                          "profile, into DIR/confirmation/<suite>/")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one config value (repeatable); see run.json for the keys")
    run.add_argument("--config", dest="config_file", type=Path, metavar="FILE.yaml",
                     help="config values over the profile: {section: {key: value}} in YAML or JSON (a --print-config "
                          "output, run.json's config section, or run.json); --set still overrides")
    run.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    run.add_argument("--dry-run", action="store_true", help="print the cells, seeds and an estimated wall time, "
                                                            "train nothing, write nothing")
    run.add_argument("--results-dir", type=Path, default=Path("results"), help="where results/<suite>/ is written")
    run.add_argument("--device", default="auto", metavar="{auto,cpu,cuda}", help="auto: CUDA when present")
    run.add_argument("--data", default="digits", metavar="{digits,coco,imagefolder}",
                     help="digits: the embedded default; coco / imagefolder need --data-root")
    run.add_argument("--data-root", type=Path, help="root of a COCO-format dataset / ImageFolder")
    run.add_argument("--clip", help="open_clip architecture of --clip-weights (e.g. RN50)")
    run.add_argument("--clip-weights", type=Path, help="local open_clip checkpoint file (nothing is downloaded)")
    run.add_argument("--cache-dir", type=Path, help="cached data and models (default $CVPDL_CACHE or "
                                                    "~/.cache/cvpdl-bench)")
    run.add_argument("--threads", type=int, help="torch threads per process (default: all cores, shared by --jobs)")
    run.add_argument("--jobs", type=int, default=1, help="train cells in N worker processes side by side (default "
                                                         "1); the numbers are those of one process with the same "
                                                         "--threads")
    _add_population_option(run)
    run.add_argument("--executor", choices=["local", "submitit"], default="local",
                     help="submitit: each cell to train becomes a job (a SLURM job array; submitit's local executor "
                          "where there is no SLURM), gathered into this results dir as a local run (docs/clusters.md)")
    run.add_argument("--submitit-cluster", choices=["auto", "slurm", "local"], default="auto",
                     help="--executor submitit: where the jobs run (auto: SLURM where `srun` is on PATH, else "
                          "processes on this machine)")
    run.add_argument("--slurm-partition", help="--executor submitit: the partition of the cells' jobs")
    run.add_argument("--slurm-time", type=int, default=240, metavar="MINUTES",
                     help="--executor submitit: each cell's job time limit (a timed-out job is requeued from its "
                          "checkpoint)")
    run.add_argument("--gpus-per-cell", type=int, default=0, help="--executor submitit: GPUs of each cell's job")
    run.add_argument("--submitit-folder", type=Path, help="--executor submitit: the jobs' logs and pickles "
                                                          "(default: DIR/submitit)")
    run.add_argument("--force", action="store_true", help="recompute cells that finished before")
    run.add_argument("--params", type=Path, help="best.json of `benchmark tune`: each method runs with its tuned "
                                                 "values (--set still wins); `tuned`: DIR/<suite>/tuning/best.json "
                                                 "(the tuned regime, written to DIR/tuned/<suite>/); default: the "
                                                 "papers' settings")
    run.add_argument("--allow-stale", action="store_true", help="use a best.json tuned on other training code "
                                                                "(refused otherwise; run.json records its provenance)")
    run.add_argument("--resume", action="store_true", help="continue interrupted cells from their last per-epoch "
                                                           "checkpoint (finished cells are always reused)")

    plan = sub.add_parser("plan", help="pre-register a suite's confirmation from its development pilot (seeds 0-4) → "
                                       "DIR/confirmation/<suite>/plan.json; `run --plan` runs it once")
    _add_suite_argument(plan, "plan")
    plan.add_argument("--results-dir", type=Path, default=Path("results"), help="where the pilot results/<suite>/ is")
    plan.add_argument("--force", action="store_true", help="replace a plan whose confirmation has not started")
    plan.add_argument("--tuned", action="store_true", help="plan the tuned regime's confirmation from its pilot "
                                                           "DIR/tuned/<suite>/ (→ DIR/tuned/confirmation/<suite>/)")
    plan.add_argument("--seed-cap", type=int, help="the most seeds the plan may ask, a budget fixed before the run "
                                                   "(default: confirmation.SEED_CAP, 64); a claim that needs more is "
                                                   "planned underpowered and says so")

    sensitivity = sub.add_parser("sensitivity", help="each primary claim across the knob that may drive it (the "
                                                     "suite's declared sweeps), on the development seeds → "
                                                     "DIR/<suite>/sensitivity.csv")
    _add_suite_argument(sensitivity, "sweep")
    sensitivity.add_argument("--seeds", nargs="+", type=_seed, default=[0, 1, 2, 3, 4],
                             help="the development seeds (never a plan's)")
    sensitivity.add_argument("--profile", default="default", metavar="PROFILE",
                             help=f"the profile of every run: {' | '.join(PROFILES)}")
    sensitivity.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                             help="fixed overrides under every value (repeatable)")
    sensitivity.add_argument("--results-dir", type=Path, default=Path("results"), help="where results/<suite>/ is")
    sensitivity.add_argument("--sweep", metavar="SECTION.KEY=V1,V2,...",
                             help="sweep this knob instead of the suite's declared sweeps, for every method of each "
                                  "claim (e.g. train.lr=5e-4,1e-3,2e-3): an exploratory question of your own, so give "
                                  "it a --results-dir of its own")
    sensitivity.add_argument("--claims", nargs="+", metavar="KEY", help="with --sweep: only these primary claims "
                                                                         "(default: every one)")
    _add_machine_options(sensitivity)
    _add_population_option(sensitivity, "a method's seeds, and a sweep's values × seeds,")
    sensitivity.add_argument("--jobs", type=int, default=1, help="train cells in N worker processes side by side")

    evaluate = sub.add_parser("evaluate", help="the common COCO evaluator on a ground truth and detections")
    evaluate.add_argument("--gt", type=Path, required=True, help="COCO ground-truth JSON")
    evaluate.add_argument("--dt", type=Path, required=True, help="COCO results JSON (list of detections)")
    evaluate.add_argument("--novel-cat-ids", nargs="+", type=int, help="adds AP50_base / AP50_novel / AP50_all")

    perf = sub.add_parser("perf", help="throughput, evaluator speed, suite wall times and memory, cost curves → "
                                       "DIR/perf/perf.md")
    perf.add_argument("--results-dir", type=Path, default=Path("results"), help="writes DIR/perf/")
    perf.add_argument("--device", default="auto", metavar="{auto,cpu,cuda}", help="auto: CUDA when present")
    perf.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    perf.add_argument("--suites-profile", default="quick", help="profile each suite is run on (in its own process) "
                                                                "for its wall time and peak memory (none: skip)")
    perf.add_argument("--curves", action=argparse.BooleanOptionalAction, default=True,
                      help="cost curves: seconds per epoch vs images, per step vs queries, evaluator vs detections, "
                           "tune trials per hour (default: on; estimated about a minute on 2 free CPU cores)")
    perf.add_argument("--suite-jobs", type=int, default=1, help="--jobs of those suite runs")
    perf.add_argument("--profile-steps", type=int, default=5,
                      help="profiled training steps per model: where a step's time goes, by op group")
    perf.add_argument("--cache-dir", type=Path, help="cached data and models (default $CVPDL_CACHE or "
                                                   "~/.cache/cvpdl-bench)")
    perf.add_argument("--threads", type=int, help="torch threads per process (default: all cores)")
    for extra in perf_extras.EXTRAS.values():  # optional sections, each behind its own flag (--compile, --ddp)
        perf.add_argument(f"--{extra.name}", dest=f"extra_{extra.name}", action="store_true", help=extra.help)

    verify = sub.add_parser("verify", help="compare a run with the committed results/<suite> (git HEAD), metric by "
                                           "metric; exit 3 when something did not reproduce")
    _add_suite_argument(verify, "compare")
    verify.add_argument("--results-dir", type=Path, help="where the run to check is (default: results), or with "
                                                         "--run where to write it (default: a new temporary folder)")
    verify.add_argument("--run", action="store_true", help="rerun the committed profile, methods, seeds and thread "
                                                           "count first")
    verify.add_argument("--methods", nargs="+", help="only these methods' cells")
    verify.add_argument("--seeds", nargs="+", type=_seed, help="only these seeds' cells")
    verify.add_argument("--cache-dir", type=Path, help="with --run: cached data and models")
    verify.add_argument("--threads", type=int, help="with --run: torch threads (default: the committed run's)")

    tune = sub.add_parser("tune", help="the same Optuna budget per method on the val split → DIR/<suite>/tuning/")
    _add_suite_argument(tune, "tune")
    tune.add_argument("--methods", nargs="+", help="subset of the suite's methods (default: all)")
    tune.add_argument("--trials", type=int, default=20, help="completed trials per method (a killed study resumes)")
    tune.add_argument("--profile", default="default", metavar="PROFILE",
                      help=f"the profile every trial runs: {' | '.join(PROFILES)}")
    tune.add_argument("--seeds", nargs="+", type=_seed, default=[1000, 1001],
                      help="seeds of every trial (the objective is their mean); the first seeds the TPE sampler "
                           "(default 1000 1001: no final run evaluates them)")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                      help="fixed overrides under every trial (e.g. a shorter schedule)")
    tune.add_argument("--results-dir", type=Path, default=Path("results"), help="writes DIR/<suite>/tuning/")
    _add_machine_options(tune)
    _add_population_option(tune, "a trial's seeds, and a batch of N // seeds trials × seeds,")
    tune.add_argument("--timeout", type=float, help="wall seconds per method's study (the trial in flight finishes)")
    tune.add_argument("--storage", metavar="URL", help="Optuna storage shared by `tune` workers on several machines: "
                      "a journal file on a shared file system (a path) or a database URL (postgresql://…); default: "
                      "DIR/<suite>/tuning/optuna.db")

    report = sub.add_parser("report", help="rebuild summary.md and figures of every written run of a suite (and "
                                           "REPORT.md), no training")
    _add_suite_argument(report, "re-render")
    report.add_argument("--results-dir", type=Path, default=Path("results"), help="where results/<suite>/ is")
    report.add_argument("--from-mlflow", action="store_true", help="rebuild metrics.csv from the tracked runs")
    for name, command in sub.choices.items():  # -v/-q also after the subcommand (list's own -v lists deviations)
        if name != "list":
            command.add_argument("-v", "--verbose", dest="verbosity", action="count", default=argparse.SUPPRESS,
                                 help="more output: debug lines, MLflow/alembic messages")
            command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                 help="errors and the final table only, no progress bars")
    return parser
