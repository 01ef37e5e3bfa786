"""Slow: the committed default-profile results are what the code produces (``python -m pytest -m slow``)."""
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main

RESULTS = Path(__file__).resolve().parent.parent / "results"


@pytest.mark.slow
@pytest.mark.parametrize("suite, methods", [("ovd", ["clip_crop", "clip_roi", "regionclip"]),
                                            ("kd", ["student_baseline", "logit_kd"]),
                                            ("detr", ["detr", "dn_dab_detr"])])
def test_default_profile_seed0_reproduces_committed_metrics(suite, methods, tmp_path):
    assert main(["run", "--suite", suite, "--seeds", "0", "--methods", *methods,
                 "--results-dir", str(tmp_path)]) == 0
    ours = pd.read_csv(tmp_path / suite / "metrics.csv")
    committed = pd.read_csv(RESULTS / suite / "metrics.csv")
    committed = committed[(committed["seed"] == 0) & committed["method"].isin(methods)].reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, committed)
