"""Is the training code of this working tree result-identical to the code at another commit?

Trains every method of every suite from scratch (quick profile, fresh caches: the shared CLIPs, localizers and
backbones too) with the code at ``--against`` (a temporary git worktree) and with this tree's, and compares the two
metrics.csv files byte for byte. When every suite matches, it appends a record to ``results/code_equivalence.json``:
a study tuned on either code then stays valid for the other (``benchmark.params.staleness``). A refactor of the
library is checked this way instead of re-tuning; a change that moves one number is not equivalent, and its
studies must be rerun.

    python scripts/check_equivalence.py --against d033ad1 [more commits]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmark.params import EQUIVALENCE_FILE, TRAINING_CODE, training_code_digest  # noqa: E402
from benchmark.paths import source_digest  # noqa: E402
from benchmark.reproducibility import git_state  # noqa: E402
from benchmark.suites import SUITES  # noqa: E402


def run_suite(code: Path, suite: str, seeds: list[str], out: Path) -> Path:
    """One quick run of ``suite`` with the code under ``code``; its metrics.csv."""
    command = [sys.executable, "-m", "benchmark", "run", "--suite", suite, "--profile", "quick", "--seeds", *seeds,
               "--results-dir", str(out / "results"), "--cache-dir", str(out / "cache"), "-q"]
    subprocess.run(command, cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, check=True,
                   stdout=subprocess.DEVNULL)
    return next((out / "results" / suite).glob("*/metrics.csv"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, nargs="+",
                        help="the commits whose training code to compare with (this tree's runs train once)")
    parser.add_argument("--seeds", nargs="+", default=["0", "1"])
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    args = parser.parse_args()
    checked = training_code_digest()  # the code the runs below train with: it must not change under them
    verdicts = {}  # commit → (its training-code digest, every suite identical)
    with tempfile.TemporaryDirectory() as tmp:
        after = {suite: run_suite(REPO, suite, args.seeds, Path(tmp) / "after" / suite) for suite in args.suites}
        for index, against in enumerate(args.against):
            old = Path(tmp) / f"code{index}"
            subprocess.run(["git", "worktree", "add", "--detach", str(old), against], cwd=REPO, check=True,
                           capture_output=True)
            try:
                old_digest = source_digest(*(old / path.relative_to(REPO) for path in TRAINING_CODE))
                same = {}
                for suite in args.suites:
                    before = run_suite(old, suite, args.seeds, Path(tmp) / f"before{index}" / suite)
                    same[suite] = before.read_bytes() == after[suite].read_bytes()
                    print(f"{against} {suite}: metrics.csv {'identical' if same[suite] else 'DIFFERENT'}", flush=True)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, check=False)
            verdicts[against] = (old_digest, all(same.values()))
    digest = training_code_digest()
    if digest != checked:
        print("not recorded: the training code changed while it was checked; check again")
        return 1
    records = json.loads(EQUIVALENCE_FILE.read_text())["records"] if EQUIVALENCE_FILE.is_file() else []
    commit, dirty = git_state()
    for against, (old_digest, identical) in verdicts.items():
        if not identical or digest == old_digest:
            print(f"{against}: not recorded: " + ("the code differs in its results" if not identical else
                                                  "the training code is the same"))
            continue
        records.append({"digest": digest, "same_as": old_digest, "against": against,
                        "checked_at": commit + ("+dirty" if dirty else ""), "suites": args.suites,
                        "profile": "quick", "seeds": [int(s) for s in args.seeds],
                        "written": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        print(f"{against}: recorded in {EQUIVALENCE_FILE.relative_to(REPO)}: training code {digest} ≡ {old_digest}")
    EQUIVALENCE_FILE.write_text(json.dumps({"records": records}, indent=1) + "\n")
    return 0 if all(identical for _, identical in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
