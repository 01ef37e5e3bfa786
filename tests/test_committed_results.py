"""Slow: the committed default-profile results are what the code produces (``python -m pytest -m slow``).

Compared with ``results/<suite>/metrics.csv`` as committed at git ``HEAD`` (a run that rewrote ``results/`` does not
make this pass), with the committed run's thread count: identical values where the hardware signature matches the
committed run's, final metrics within the README's tolerances otherwise. The failure message says which case."""
import pytest

from benchmark.cli import main
from benchmark.reproducibility import committed_run, compare_with_committed


@pytest.mark.slow
@pytest.mark.parametrize("suite, methods", [("ovd", ["clip_crop", "clip_roi", "regionclip"]),
                                            ("kd", ["student_baseline", "logit_kd"]),
                                            ("detr", ["detr", "dn_dab_detr"])])
def test_default_profile_seed0_reproduces_committed_metrics(suite, methods, tmp_path):
    _, committed = committed_run(suite)
    assert main(["run", "--suite", suite, "--seeds", "0", "--methods", *methods, "--profile", committed["profile"],
                 "--threads", str(committed["threads"]), "--results-dir", str(tmp_path)]) == 0
    comparison = compare_with_committed(suite, tmp_path, methods=methods, seeds=[0])
    assert comparison.misses.empty, comparison.report()
    print(comparison.case)
