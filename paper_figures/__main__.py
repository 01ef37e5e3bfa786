"""``python -m paper_figures [--results-dir DIR]``: redraw every figure of every suite that has results, and
``benchmark perf``'s figures where ``DIR/perf/perf.csv`` exists."""
import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from paper_figures import FIGURES, perf_figures, render_suite_figures
from paper_figures.style import SuiteInputs, save


def read_inputs(suite_dir: Path) -> SuiteInputs:
    """A suite's ``metrics.csv`` and ``tables/*.csv`` as the harness wrote them (it validated them then), and
    whether run.json names the quick (smoke-test) profile."""
    metrics = pd.read_csv(suite_dir / "metrics.csv", dtype={"suite": str, "method": str, "split": str, "metric": str})
    metrics["epoch"] = metrics["epoch"].astype("Int64")
    run = suite_dir / "run.json"
    smoke = run.is_file() and json.loads(run.read_text()).get("profile") == "quick"
    return SuiteInputs(metrics, {p.stem: pd.read_csv(p) for p in sorted((suite_dir / "tables").glob("*.csv"))},
                       smoke)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m paper_figures", description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    args = parser.parse_args()
    found = False
    for suite in FIGURES:
        suite_dir = args.results_dir / suite
        if (suite_dir / "metrics.csv").is_file():
            found = True
            for path in render_suite_figures(suite, read_inputs(suite_dir), suite_dir / "figures"):
                print(path, "(+ .pdf)")
    perf_csv = args.results_dir / "perf" / "perf.csv"
    if perf_csv.is_file():  # `benchmark perf`'s figures, from its table
        found = True
        frame = pd.read_csv(perf_csv)
        for name, draw in perf_figures.FIGURES.items():
            if (figure := draw(frame)) is not None:
                print(save(figure, perf_csv.parent / name), "(+ .pdf)")
    if not found:
        print(f"error: no suite results under {args.results_dir}", file=sys.stderr)
        return 2
    return 0


sys.exit(main())
