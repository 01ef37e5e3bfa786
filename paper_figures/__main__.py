"""``python -m paper_figures [--results-dir DIR]``: redraw every figure of every suite that has results."""
import argparse
import sys
from pathlib import Path

from paper_figures import FIGURES, render_suite_figures


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m paper_figures", description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    args = parser.parse_args()
    found = False
    for suite in FIGURES:
        suite_dir = args.results_dir / suite
        if (suite_dir / "metrics.csv").is_file():
            found = True
            for path in render_suite_figures(suite, suite_dir):
                print(path, "(+ .pdf)")
    if not found:
        print(f"error: no suite results under {args.results_dir}", file=sys.stderr)
        return 2
    return 0


sys.exit(main())
