"""How fast bad input is refused: each case as a fresh `python -m benchmark` process, timed from start to exit
(median of 3, the catalog of this code version already cached), against the goal of 1.5 s. Writes
results/perf/refusals.md; a benchmark, not a test: timings depend on the machine and its load.

    python scripts/bench_refusals.py
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 1.5
CASES = [
    ("negative seed", ["run", "--suite", "kd", "--seeds", "-1"]),
    ("repeated seed", ["run", "--suite", "kd", "--seeds", "1", "1"]),
    ("seed not an integer", ["run", "--suite", "kd", "--seeds", "one"]),
    ("negative seed, --print-config", ["run", "--suite", "kd", "--seeds", "-1", "--print-config"]),
    ("unknown suite", ["run", "--suite", "kdd"]),
    ("unknown method", ["run", "--suite", "ovd", "--methods", "regionclipp"]),
    ("unknown profile", ["run", "--suite", "detr", "--profile", "fast"]),
    ("unknown config key", ["run", "--suite", "kd", "--set", "fitnet.hint_wieght=1"]),
    ("unreadable value", ["run", "--suite", "kd", "--set", "train.lr=fast"]),
    ("unknown suite, tune", ["tune", "--suite", "kdd"]),
]


def timed(args: list[str], results: Path) -> tuple[float, int, str]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "benchmark", *args, "--results-dir", str(results)],
                         capture_output=True, text=True, cwd=REPO)
    return time.perf_counter() - started, out.returncode, out.stderr.strip()


def main() -> int:
    subprocess.run([sys.executable, "-m", "benchmark", "list"], capture_output=True, cwd=REPO)  # warm the catalog
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "results"
        for name, args in CASES:
            runs = [timed(args, results) for _ in range(3)]
            seconds = statistics.median(r[0] for r in runs)
            code, message = runs[0][1], runs[0][2]
            rows.append(f"| {name} | `{' '.join(args)}` | {seconds:.2f} | {code} | {message.replace('|', '/')} |")
            print(f"{name}: {seconds:.2f} s, exit {code}: {message}")
        created = results.exists()
    lines = ["# Refusals of bad input", "", f"Goal: one line, exit 2, under {GOAL_SECONDS} s, nothing created. Median "
             "of 3 fresh processes each, catalog cached (`python scripts/bench_refusals.py`).", "",
             "| case | arguments | seconds | exit | message |", "|---|---|---|---|---|", *rows, "",
             f"Results folder created: {'yes' if created else 'no'}."]
    path = REPO / "results" / "perf" / "refusals.md"
    path.write_text("\n".join(lines) + "\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
