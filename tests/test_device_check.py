"""The GPU device check (``scripts/device_check.py``): its CPU dry run (``--device cpu``: every step on tiny settings)
and its own logic: argument errors, the metrics comparison, the data-only cache of the repeat, the perf ratios.
Nothing about speed is checked here."""
import json
import runpy
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    return runpy.run_path(str(SCRIPT))


# every suite, perf, detr full, tiny: about 100 s on a quiet 2-core machine; in the default set, as issue 24 asks
def test_dry_run_writes_every_step(device_check, tmp_path, cache_dir):
    out = tmp_path / "device_check"
    started = time.process_time()
    # the session's cache: its data is reused; the repeat trains every model anew from a data-only cache
    assert device_check["main"](["--device", "cpu", "--out", str(out), "--cache-dir", str(cache_dir)]) == 0
    cpu_seconds = time.process_time() - started
    record = json.loads((out / "device_check.json").read_text())
    assert record["device"] == "cpu" and record["device_name"].startswith("CPU")
    steps = record["steps"]
    assert list(steps) == ["quick profile, detr, kd, ovd, seeds 0", "same seed twice", "perf", "detr full profile"]
    # seed 0 twice, the models trained anew the second time: on the CPU every metric is bitwise the same
    for suite, compared in steps["same seed twice"]["suites"].items():
        assert compared["values"] > 0 and compared["bitwise_equal"] == compared["values"], suite
        assert compared["unmatched_rows"] == 0
    assert steps["same seed twice"]["outcome"] == "identical"
    items = {row["item"] for row in steps["perf"]["rows"]}
    assert {"detr images/s", "speed-up over pycocotools"} <= items
    assert set(steps["detr full profile"]["test_AP50"]) == {"dn_dab_detr"}  # the dry run's one method
    assert (out / "perf" / "perf.md").is_file() and (out / "runs" / "full" / "detr" / "metrics.csv").is_file()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("mlflow.db"))  # models and MLflow stay in scratch
    markdown = (out / "device_check.md").read_text()
    assert "Device: CPU" in markdown and "| detr |" in markdown
    print(f"dry run: {cpu_seconds:.0f} s of CPU time")  # the dry run's cost, for the CI budget


def test_bad_arguments_are_one_clear_line(device_check, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        device_check["main"](["--device", "tpu"])
    assert exit_.value.code == 2 and "--device must be cuda or cpu" in capsys.readouterr().err
    (tmp_path / "keep.txt").write_text("not a device check")
    assert device_check["main"](["--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "not overwritten" in capsys.readouterr().err and (tmp_path / "keep.txt").is_file()


def _metrics(path: Path, rows: list[tuple]) -> Path:
    path.mkdir()
    lines = ["suite,method,seed,epoch,split,metric,value"] + [",".join(map(str, row)) for row in rows]
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")
    return path


def test_compare_metrics_hand_values(device_check, tmp_path):
    first = _metrics(tmp_path / "a", [("ovd", "m", 0, "", "test", "AP50", 0.5), ("ovd", "m", 0, 1, "val", "loss", 2.0),
                                      ("ovd", "m", 0, "", "test", "rho", "nan"),
                                      ("ovd", "m", 1, "", "test", "AP50", 9)])
    same = _metrics(tmp_path / "b", [("ovd", "m", 0, "", "test", "AP50", 0.5), ("ovd", "m", 0, 1, "val", "loss", 2.0),
                                     ("ovd", "m", 0, "", "test", "rho", "nan")])
    result = device_check["compare_metrics"](first, same, 0)  # seed 1 is not compared; NaN equals NaN
    assert result == {"values": 3, "bitwise_equal": 3, "unmatched_rows": 0, "max_abs_diff": 0.0,
                      "max_rel_diff": 0.0, "worst": ""}
    moved = _metrics(tmp_path / "c", [("ovd", "m", 0, "", "test", "AP50", 0.5), ("ovd", "m", 0, 1, "val", "loss", 2.5)])
    result = device_check["compare_metrics"](first, moved, 0)
    assert result["values"] == 2 and result["bitwise_equal"] == 1 and result["unmatched_rows"] == 1
    assert result["max_abs_diff"] == pytest.approx(0.5) and result["max_rel_diff"] == pytest.approx(0.25)
    assert result["worst"] == "m 0 1.0 val loss"


def test_repeat_cache_links_data_but_no_model(device_check, tmp_path):
    cache = tmp_path / "cache"
    (cache / "digits_world" / "k1").mkdir(parents=True)
    (cache / "digits_world" / "k1" / "images.npy").write_bytes(b"x")
    (cache / "clip").mkdir()
    (cache / "clip" / "tiny_clip_k.pt").write_bytes(b"x")
    device_check["data_only_cache"](cache, tmp_path / "again")
    assert [p.name for p in (tmp_path / "again").iterdir()] == ["digits_world"]
    assert (tmp_path / "again" / "digits_world" / "k1" / "images.npy").read_bytes() == b"x"


def test_perf_rows_ratios(device_check, tmp_path):
    (tmp_path / "perf.csv").write_text(
        "section,item,value,unit\nmachine,fp32 matmul FLOP/s (measured),100,GFLOP/s\ntrain,detr images/s,300,img/s\n"
        "train,detr parameters,5,count\ntrain,hf_detr images/s,200,img/s\ntrain,dab_detr images/s,150,img/s\n"
        "train,hf_dab_detr images/s,100,img/s\ntrain,dn_dab_detr images/s,120,img/s\n"
        "evaluator,speed-up over pycocotools,12,×\nstep profile,detr: whole step,9,ms/step\n")
    rows = {row["item"]: row["value"] for row in device_check["perf_rows"](tmp_path)}
    assert rows["detr ÷ hf_detr images/s"] == pytest.approx(1.5)
    assert rows["dab_detr ÷ hf_dab_detr images/s"] == pytest.approx(1.5)
    assert rows["dn_dab_detr ÷ hf_dab_detr images/s"] == pytest.approx(1.2)
    assert rows["speed-up over pycocotools"] == 12 and "detr parameters" not in rows and "detr: whole step" not in rows


def test_a_failed_step_is_recorded_and_the_check_goes_on(device_check, tmp_path):
    record = device_check["Record"](tmp_path, "cpu", "CPU")

    def broken():
        raise RuntimeError("python -m benchmark run ... exited with 130\nsecond line")

    record.attempt("detr full profile", broken)
    record.attempt("perf", lambda: {"rows": [{"item": "x ÷ y images/s", "value": 2.0, "unit": "×"}], "outcome": "ok"})
    steps = json.loads((tmp_path / "device_check.json").read_text())["steps"]
    assert steps["detr full profile"]["failed"] is True
    assert steps["detr full profile"]["outcome"] == "failed: RuntimeError: python -m benchmark run ... exited with 130"
    markdown = (tmp_path / "device_check.md").read_text()
    assert "| detr full profile |" in markdown and "| x ÷ y images/s | 2 | × |" in markdown
    assert "runner wall time" not in markdown  # no section for a step that has no result


def test_chosen_steps_only_and_a_shorter_full_profile(device_check, tmp_path, cache_dir):
    """A lease too short for the whole check: ``--steps full --full-epochs 1`` runs the detr full profile alone."""
    out = tmp_path / "device_check"
    assert device_check["main"](["--device", "cpu", "--out", str(out), "--cache-dir", str(cache_dir),
                                 "--steps", "full", "--full-epochs", "1"]) == 0
    record = json.loads((out / "device_check.json").read_text())
    assert list(record["steps"]) == ["detr full profile"] and record["steps"]["detr full profile"]["epochs"] == 1
    assert "--steps full --full-epochs 1" in (out / "device_check.md").read_text()
    assert "(epochs: 1)" in (out / "device_check.md").read_text()


def test_chosen_suites_only(device_check, tmp_path, cache_dir):
    """``--suites kd`` runs steps 1 and 2 for kd alone (the second lease went to the suites that had differed)."""
    out = tmp_path / "device_check"
    assert device_check["main"](["--device", "cpu", "--out", str(out), "--cache-dir", str(cache_dir),
                                 "--steps", "quick", "same", "--suites", "kd"]) == 0
    record = json.loads((out / "device_check.json").read_text())
    assert list(record["steps"]) == ["quick profile, kd, seeds 0", "same seed twice"]
    assert list(record["steps"]["same seed twice"]["suites"]) == ["kd"]
    assert sorted(p.name for p in (out / "runs" / "quick").iterdir()) == ["kd"]
