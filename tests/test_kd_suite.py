"""End-to-end: the kd suite on the quick profile; the teacher is trained once per seed and reused."""
import json
import re

import pandas as pd

from benchmark.cli import main
from benchmark.results import COLUMNS
from tests.conftest import report_over, suite_folder


def test_kd_quick_run(tmp_path, cache_dir):
    code = main(["run", "--suite", "kd", "--profile", "quick", "--seeds", "0", "1", "--results-dir", str(tmp_path),
                 "--cache-dir", str(cache_dir)])
    assert code == 0
    suite_dir = suite_folder(tmp_path, "kd")
    metrics = pd.read_csv(suite_dir / "metrics.csv")
    assert list(metrics.columns) == COLUMNS
    assert set(metrics["method"]) == {"student_baseline", "logit_kd", "gld", "fitnet", "reverse_feature_kd"}
    finals = metrics[metrics["epoch"].isna()]
    teacher = finals[finals["metric"] == "teacher_top1"].groupby("seed")["value"].nunique()
    assert (teacher == 1).all(), "every method of a seed must distil from the same cached teacher"
    assert len(list((cache_dir / "kd_teacher").glob("*.pt"))) >= 2
    ids = finals[finals["metric"] == "intrinsic_dim"]
    assert set(ids[ids["method"] == "reverse_feature_kd"]["split"]) == {"teacher", "student", "teacher_after_reverse",
                                                                       "student_alone"}
    assert set(ids[ids["method"] == "fitnet"]["split"]) == {"teacher", "student"}
    # reverse KD's stage-0 student is trained exactly as the student baseline: the same embedding, the same ID
    alone = ids[(ids["method"] == "reverse_feature_kd") & (ids["split"] == "student_alone")].set_index("seed")["value"]
    baseline = ids[(ids["method"] == "student_baseline") & (ids["split"] == "student")].set_index("seed")["value"]
    pd.testing.assert_series_equal(alone.sort_index(), baseline.sort_index(), check_names=False)
    per_epoch = metrics[metrics["epoch"].notna()]
    assert {"top1", "loss_ce", "loss_kd", "loss_local", "loss_relation", "loss_hint", "loss_feature"} <= \
        set(per_epoch["metric"])
    for name in ("kd_accuracy", "kd_curves", "intrinsic_dimension"):
        assert (suite_dir / "figures" / f"{name}.png").is_file()
    assert "Paired tests against `student_baseline`" in (suite_dir / "summary.md").read_text()
    assert "B3. Reverse feature distillation" in report_over(suite_dir, "kd", tmp_path)


def test_kd_same_seed_twice_gives_identical_metrics(tmp_path, cache_dir):
    """The reverse-KD cell (three training stages, the cached teacher) recomputed from scratch: same bytes."""
    args = ["run", "--suite", "kd", "--profile", "quick", "--methods", "reverse_feature_kd", "--seeds", "0",
            "--cache-dir", str(cache_dir)]
    assert main([*args, "--results-dir", str(tmp_path / "a")]) == 0
    assert main([*args, "--results-dir", str(tmp_path / "b")]) == 0
    assert (suite_folder(tmp_path / "a", "kd") / "metrics.csv").read_bytes() == \
        (suite_folder(tmp_path / "b", "kd") / "metrics.csv").read_bytes()


def test_an_unknown_data_task_is_refused_in_one_line(tmp_path, cli):
    code, _, err = cli("run", "--suite", "kd", "--set", "data.task=letters", "--results-dir", str(tmp_path / "r"))
    assert code == 2 and "data.task must be one of numbers, digits, got 'letters'" in err
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_a_population_run_gives_each_seed_its_cell_alone_within_rounding(tmp_path, cache_dir):
    """``--population 2``: both seeds trained as one batched model, stored and reported as their own cells, keyed
    apart from the cells trained alone; every number as alone within rounding (top-1 to one test image)."""
    args = ["run", "--suite", "kd", "--profile", "quick", "--methods", "logit_kd", "--seeds", "0", "1",
            "--cache-dir", str(cache_dir), "--results-dir", str(tmp_path)]
    assert main(args) == 0
    alone = pd.read_csv(suite_folder(tmp_path, "kd") / "metrics.csv")
    assert main([*args, "--population", "2"]) == 0
    together = pd.read_csv(suite_folder(tmp_path, "kd") / "metrics.csv")
    assert json.loads((suite_folder(tmp_path, "kd") / "run.json").read_text())["population"] == {"logit_kd": 2}
    assert len(list((suite_folder(tmp_path, "kd") / "cells").iterdir())) == 2  # one key alone, one together
    keys = ["method", "seed", "epoch", "split", "metric"]
    merged = alone.merge(together, on=keys, suffixes=("_alone", "_together"))
    assert len(merged) == len(alone) == len(together)
    difference = (merged["value_alone"] - merged["value_together"]).abs()
    relative = difference / merged["value_alone"].abs().clip(lower=1.0)
    # accuracies may flip an image (quick profile: 200 val, 300 test images); the intrinsic-dimension estimators
    # (nearest-neighbour distance ratios) amplify rounding (measured: up to 0.9%); the losses agree to rounding
    accuracy = merged["metric"].isin(["top1", "top1_last", "top1_best", "teacher_top1"])
    estimated = merged["metric"].str.startswith("intrinsic_dim")
    assert (difference[accuracy] <= 1 / 200 + 1e-9).all()
    assert relative[estimated].max() < 0.05 and relative[~accuracy & ~estimated].max() < 1e-3


def test_sensitivity_trains_a_sweeps_values_and_seeds_together(tmp_path, cache_dir, monkeypatch, capfd):
    """``sensitivity --population 4``: FitNet's hint weights 1 and 10 × seeds 0 1 are one population of four members
    differing in the knob; each member is stored as its value's cell, which that value's run then reuses, and its
    numbers are those of the value trained alone within rounding."""
    from dataclasses import replace

    import benchmark.suites  # noqa: F401  (registers the suites)
    from benchmark.registry import REGISTRY, Sweep

    kd = REGISTRY.suite("kd")
    monkeypatch.setitem(REGISTRY._suites, "kd", replace(kd, sweeps=(
        Sweep("fitnet:student", "fitnet.hint_weight", (1.0, 10.0, 100.0), ("fitnet",)),)))
    common = ["--suite", "kd", "--profile", "quick", "--seeds", "0", "1", "--cache-dir", str(cache_dir)]
    assert main(["sensitivity", *common, "--population", "4", "--results-dir", str(tmp_path / "sweep")]) == 0
    together = re.findall(r"\[fitnet seeds [^]]*\] finished together", capfd.readouterr().err)
    assert len(together) == 2, together  # the default value's run, then the sweep's one population
    assert together[1] == ("[fitnet seeds 0 fitnet.hint_weight=1, 1 fitnet.hint_weight=1, 0 fitnet.hint_weight=10, "
                           "1 fitnet.hint_weight=10] finished together")
    table, = [pd.read_csv(path) for path in (tmp_path / "sweep" / "kd").glob("*/sensitivity.csv")]
    assert sorted(table["value"]) == [1.0, 10.0, 100.0]
    assert main(["run", *common, "--methods", "fitnet", "--set", "fitnet.hint_weight=10",
                 "--results-dir", str(tmp_path / "alone")]) == 0
    alone = pd.read_csv(suite_folder(tmp_path / "alone", "kd") / "metrics.csv")
    swept, = [pd.read_csv(path) for path in (tmp_path / "sweep" / "kd").glob("*/metrics.csv")
              if json.loads((path.parent / "run.json").read_text())["config"]["fitnet"]["hint_weight"] == 10.0]
    keys = ["method", "seed", "epoch", "split", "metric"]
    merged = alone.merge(swept, on=keys, suffixes=("_alone", "_swept"))
    assert len(merged) == len(alone) == len(swept)
    # rounding drifts through FitNet's two epochs: measured here, at most 2 of 200 val and 2 of 300 test images
    accuracy = merged["metric"].isin(["top1", "top1_last", "top1_best"])
    assert ((merged["value_alone"] - merged["value_swept"]).abs()[accuracy] <= 3 / 200 + 1e-9).all()


def test_tune_trains_a_batch_of_trials_and_seeds_together(tmp_path, cache_dir, capfd):
    """``tune --population 4`` with two seeds: logit KD's trials two at a time, each batch one population of four
    members that differ in lr, weight decay, temperature and KD weight (``member_slices``); every trial is scored
    from its own cells, and a trial's cells are its values trained alone within rounding."""
    common = ["--suite", "kd", "--profile", "quick", "--cache-dir", str(cache_dir)]
    assert main(["tune", *common, "--methods", "logit_kd", "--trials", "4", "--seeds", "1000", "1001",
                 "--population", "4", "--results-dir", str(tmp_path / "tuning")]) == 0
    together = re.findall(r"\[logit_kd seeds ([^]]*)\] finished together", capfd.readouterr().err)
    assert len(together) == 2, together  # two batches of two trials × two seeds
    assert all(label.count("train.lr=") == 4 and label.count("logit_kd.temperature=") == 4 for label in together)
    trials = pd.read_csv(tmp_path / "tuning" / "kd" / "tuning" / "trials.csv")
    assert len(trials) == 4 and trials["value"].notna().all()
    assert trials["param:train.lr"].nunique() == 4  # the constant liar keeps a batch's trials apart
    trial = trials.iloc[3]  # the second batch's second trial, a population member with its own lr
    values = [f"{key.removeprefix('param:')}={trial[key]}" for key in trials.columns if key.startswith("param:")]
    assert main(["run", *common, "--methods", "logit_kd", "--seeds", "1000", "1001",
                 *[arg for value in values for arg in ("--set", value)], "--results-dir", str(tmp_path / "alone")]) == 0
    alone = pd.read_csv(suite_folder(tmp_path / "alone", "kd") / "metrics.csv")
    val = alone[(alone["metric"] == "top1") & (alone["split"] == "val")]
    objective = val[val["epoch"] == val["epoch"].max()]["value"].mean()
    assert abs(objective - trial["value"]) <= 3 / 200 + 1e-9  # rounding through two epochs, as the sweep above
