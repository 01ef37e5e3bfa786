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
