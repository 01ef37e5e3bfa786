"""CLI behaviour: one clear line and exit 2 for bad input; `evaluate` prints the evaluator's JSON."""
import json
import subprocess
import sys

import pytest

from tests.test_coco_eval import gt_as_detections, make_gt


def test_list_shows_the_three_suites():
    out = subprocess.run([sys.executable, "-m", "benchmark", "list"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in ("ovd:", "detr:", "kd:", "clip_crop", "clip_roi", "regionclip"):
        assert name in out.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--suite", "nope"], "unknown suite 'nope'; choose from:"),
    (["run", "--suite", "ovd", "--methods", "foo"], "unknown method 'foo' for suite 'ovd'; choose from: clip_crop"),
    (["run", "--suite", "ovd", "--set", "clip.nope=1"], "unknown config key 'clip.nope'"),
    (["run", "--suite", "ovd", "--profile", "huge"], "unknown profile 'huge'"),
    (["run", "--suite", "ovd", "--data", "coco", "--data-root", "/nonexistent"], "--data coco needs --data-root"),
    (["run", "--suite", "ovd", "--clip", "RN50", "--clip-weights", "/nonexistent.pt"], "CLIP checkpoint not found"),
    (["run", "--suite", "detr", "--seeds", "1", "1"], "--seeds lists seed 1 more than once"),
    (["run", "--suite", "kd", "--set", "train.epochs=ten"], "cannot read 'ten' as int"),
    (["run", "--suite", "ovd", "--set", "regionclip.label_pool=x"], "regionclip.label_pool must be one of"),
    (["report", "--suite", "ovd", "--results-dir", "/nonexistent"], "no results at"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, cli):
    out = cli(*args, "--results-dir", str(tmp_path)) if args[0] == "run" else cli(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir()), "bad input must not write anything"


def test_evaluate_prints_stats_and_ov_split(tmp_path, cli):
    (tmp_path / "gt.json").write_text(json.dumps(make_gt()))
    (tmp_path / "dt.json").write_text(json.dumps(gt_as_detections(make_gt())))
    out = cli("evaluate", "--gt", str(tmp_path / "gt.json"), "--dt", str(tmp_path / "dt.json"),
              "--novel-cat-ids", "7")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50_novel"] == pytest.approx(1.0)
    assert set(stats) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}


def test_evaluate_rejects_malformed_files(tmp_path, cli):
    (tmp_path / "gt.json").write_text(json.dumps(make_gt()))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "dt.json").write_text(json.dumps([{"image_id": 1}]))
    bad_gt = cli("evaluate", "--gt", str(tmp_path / "bad.json"), "--dt", str(tmp_path / "dt.json"))
    bad_dt = cli("evaluate", "--gt", str(tmp_path / "gt.json"), "--dt", str(tmp_path / "dt.json"))
    bad_ids = cli("evaluate", "--gt", str(tmp_path / "gt.json"), "--dt", str(tmp_path / "gt.json"))
    for out, text in ((bad_gt, "not valid JSON"), (bad_dt, "expected a list"), (bad_ids, "expected a list")):
        assert out.returncode == 2 and text in out.stderr and "Traceback" not in out.stderr
