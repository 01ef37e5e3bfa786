"""``python -m benchmark perf`` end to end (short), and its goals table on a hand-made report."""
import pandas as pd

from benchmark.cli import main
from benchmark.perf import PerfReport, goals


def test_perf_writes_its_tables(tmp_path, cache_dir):
    code = main(["perf", "--steps", "1", "--suites-profile", "none", "--results-dir", str(tmp_path),
                 "--cache-dir", str(cache_dir)])
    assert code == 0
    rows = pd.read_csv(tmp_path / "perf" / "perf.csv").set_index("item")["value"]
    for name in ("detr", "dab_detr", "dn_dab_detr"):
        assert rows[f"{name} images/s"] > 0 and 0 < rows[f"{name} utilisation of matmul peak"] < 1
    assert rows["largest |Δ| over the 12 COCO stats"] < 1e-9  # faster-coco-eval agrees with pycocotools
    text = (tmp_path / "perf" / "perf.md").read_text()
    assert "## Goals" in text and "Command: `python -m benchmark" in text


def test_goals_compare_against_the_targets():
    report = PerfReport()
    for name, ips in (("detr", 300.0), ("dab_detr", 150.0), ("dn_dab_detr", 100.0), ("hf_detr", 100.0)):
        report.add("train", f"{name} images/s", ips, "img/s")
        report.add("train", f"{name} utilisation of matmul peak", ips / 1000, "fraction")
    report.add("evaluator", "speed-up over pycocotools", 12.0, "×")
    report.add("evaluator", "largest |Δ| over the 12 COCO stats", 0.0, "AP")
    report.add("suites", "ovd default wall time", 290.0, "s")
    table = {goal: (measured, met) for goal, measured, met in goals(report)}
    assert table["detr training ≥ 1.5× HF DETR images/s"] == ("3.00×", True)
    assert table["dab_detr training ≥ 1.5× HF DETR images/s"] == ("1.50×", True)
    assert table["dn_dab_detr training ≥ 1.5× HF DETR images/s"] == ("1.00×", False)
    assert table["detr ≥ 30% of measured matmul FLOP/s"] == ("30.0%", True)
    assert table["evaluator ≥ 10× pycocotools, identical stats"][1] is True
    assert table["ovd default ≤ 5 min with its CLIP cached"][1] is True
    assert table["kd default ≤ 10 min"] == ("nan min", False)  # not measured is not met
