"""Slow: the committed default-profile results are what the code produces (``python -m pytest -m slow``).

Compared with ``results/<suite>/metrics.csv`` as committed at git ``HEAD`` (a run that rewrote ``results/`` does not
make this pass), with the committed run's thread count: identical values where the hardware signature matches the
committed run's, final metrics within the README's tolerances otherwise. The failure message says which case."""
import pytest

from benchmark.verify import compare_with_committed, verify


@pytest.mark.slow
@pytest.mark.parametrize("suite, methods", [("ovd", ["clip_crop", "clip_roi", "regionclip"]),
                                            ("kd", ["student_baseline", "logit_kd"]),
                                            ("detr", ["detr", "dn_dab_detr"])])
def test_default_profile_seed0_reproduces_committed_metrics(suite, methods, tmp_path):
    """`verify --run` on seed 0: the committed profile, threads and tuned values (run.json ``params``)."""
    code = verify(suite, results_dir=tmp_path, run=True, methods=methods, seeds=[0])
    comparison = compare_with_committed(suite, tmp_path, methods=methods, seeds=[0])
    assert code == 0 and comparison.misses.empty, comparison.report()
    print(comparison.case)


def test_report_over_the_committed_results_reproduces_every_committed_report(tmp_path):
    """`report` over a copy of ``results/`` rewrites every committed summary.md and REPORT.md byte for byte: a change
    of the report code cannot leave the committed reports stale (regenerate them with `report --suite <suite>`).
    In a child process, as a user runs it: REPORT.md covers every registered suite, and test modules register toy
    ones in this process."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    results = Path(__file__).resolve().parent.parent / "results"
    copy = tmp_path / "results"
    shutil.copytree(results, copy, ignore=shutil.ignore_patterns(  # what a local run adds beside them
        "cells", "logs", "mlartifacts", "mlflow.db*", "digits-*", "coco-*", "imagefolder-*"))
    summaries = sorted(results.glob("*/summary.md"))
    assert {p.parent.name for p in summaries} == {"detr", "kd", "ovd"}
    # the fresh-seed reruns (planned and staged) and the tuned regime first: REPORT.md quotes them
    confirmations = sorted([*results.glob("confirmation/*/summary.md"),
                            *results.glob("exploratory/staged-confirmation/*/summary.md"),
                            *results.glob("tuned/*/summary.md"), *results.glob("tuned/confirmation/*/summary.md")])
    for summary in [*confirmations, *summaries]:
        done = subprocess.run([sys.executable, "-m", "benchmark", "-q", "report", "--suite", summary.parent.name,
                               "--results-dir", str(copy / summary.parent.parent.relative_to(results))],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    reports = [results / "REPORT.md"] + sorted({p.parent.parent / "REPORT.md" for p in confirmations})
    stale = [str(p.relative_to(results)) for p in [*confirmations, *summaries, *reports]
             if (copy / p.relative_to(results)).read_bytes() != p.read_bytes()]
    assert not stale, f"stale committed reports: {stale}; regenerate them with `python -m benchmark report`"
