"""End-to-end: the ovd suite on the quick profile, run determinism, report regeneration, MLflow tracking."""
import json
import shutil

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.results import COLUMNS
from tests.conftest import suite_folder


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, cache_dir):
    results = tmp_path_factory.mktemp("results")
    code = main(["run", "--suite", "ovd", "--profile", "quick", "--seeds", "0", "1", "--results-dir", str(results),
                 "--cache-dir", str(cache_dir)])
    assert code == 0
    return results


def test_quick_run_writes_every_output(quick_run):
    suite_dir = suite_folder(quick_run, "ovd")
    for name in ("metrics.csv", "timings.csv", "summary.md", "run.json", "tables/score_vs_iou.csv"):
        assert (suite_dir / name).is_file(), name
    for name in ("fig1a_score_vs_iou", "fig1b_crop_vs_image", "region_zero_shot", "ovd_ap50"):
        assert (suite_dir / "figures" / f"{name}.png").is_file() and (suite_dir / "figures" / f"{name}.pdf").is_file()
    metrics = pd.read_csv(suite_dir / "metrics.csv")
    assert list(metrics.columns) == COLUMNS
    assert set(metrics["method"]) == {"clip_crop", "clip_roi", "regionclip"}
    assert set(metrics["seed"]) == {0, 1}
    finals = metrics[metrics["epoch"].isna()]
    for metric in ("zs_top1_image", "clip_zs_top1_image", "AP50"):
        assert set(finals[finals["metric"] == metric]["split"]) == {"base", "novel", "all"}, metric
    # zs_top1 also on the val-pool canvases: the tuning objective
    assert set(finals[finals["metric"] == "zs_top1"]["split"]) == {"base", "novel", "all", "val"}
    assert "score_iou_spearman" in set(finals["metric"])
    assert metrics[metrics["method"] == "regionclip"]["metric"].str.startswith("loss_").any()
    summary = (suite_dir / "summary.md").read_text()
    assert "Paired tests against `clip_crop`" in summary and "What the numbers say" in summary
    assert (quick_run / "mlflow.db").is_file()
    # where the time went (train/eval wall seconds per cell) and whether the shared models were trained or loaded
    timings = pd.read_csv(suite_dir / "timings.csv")
    for metric in ("train_seconds", "eval_seconds"):
        seconds = timings[timings["metric"] == metric]["value"]
        assert len(seconds) == 6 and (seconds >= 0).all(), metric  # 3 methods × 2 seeds
    run = json.loads((suite_dir / "run.json").read_text())
    # --population auto: this CPU's committed perf run measured no population faster, so each seed alone
    assert run["population"] == {"clip_crop": 1, "clip_roi": 1, "regionclip": 1}
    assert run["population_choice"].startswith("no population measured 1.25× faster on cpu")
    cache = run["prepare_cache"]
    assert sorted(name.split("_")[0] for name in cache) == ["fcos", "tiny"]
    assert set(cache.values()) <= {"trained", "loaded"}


def test_regionclip_cells_carry_their_pseudo_label_diagnostics(quick_run):
    metrics = pd.read_csv(suite_folder(quick_run, "ovd") / "metrics.csv")
    finals = metrics[metrics["epoch"].isna() & (metrics["method"] == "regionclip") & (metrics["split"] == "train")]
    values = finals.groupby("metric")["value"].apply(list)
    for metric in ("pseudo_label_accuracy", "pseudo_label_kept", "regions_on_objects", "student_teacher_agreement",
                   "agreement_chance", "region_loss_over_ln_k"):
        assert len(values[metric]) == 2, metric  # one per seed
    for metric in ("pseudo_label_kept", "regions_on_objects", "student_teacher_agreement", "agreement_chance"):
        assert all(0.0 <= v <= 1.0 for v in values[metric]), metric
    assert all(0.0 < v <= 1.0 for v in values["agreement_chance"])
    assert "Pseudo-labels on `regionclip`'s pretraining regions" in (suite_folder(quick_run, "ovd")
                                                                     / "summary.md").read_text()


def test_tiny_clip_beats_chance_clearly_on_quick(quick_run):
    metrics = pd.read_csv(suite_folder(quick_run, "ovd") / "metrics.csv")
    clip = metrics[(metrics["metric"] == "clip_zs_top1_image") & (metrics["split"] == "all")]["value"]
    assert clip.mean() > 0.2, f"tiny CLIP at {clip.mean():.3f}, chance is 0.1"


def test_every_regionclip_loss_term_carries_weight_in_the_first_epoch(quick_run):
    """Each of the three pretraining losses is a non-negligible share (> 1%) of the first epoch's total; the
    distillation term starts at exactly 0 (student = teacher) and grows within the epoch."""
    metrics = pd.read_csv(suite_folder(quick_run, "ovd") / "metrics.csv")
    first = metrics[(metrics["method"] == "regionclip") & (metrics["epoch"] == 1)]
    for seed, rows in first.groupby("seed"):
        losses = dict(zip(rows["metric"], rows["value"]))
        assert set(losses) == {"loss_region", "loss_image", "loss_distill"}
        total = sum(losses.values())
        for name, value in losses.items():
            assert value > 0.01 * total, f"seed {seed}: {name} is {value:.4f} of {total:.4f}"


def test_same_seed_twice_gives_identical_metrics(quick_run, tmp_path, cache_dir):
    code = main(["run", "--suite", "ovd", "--profile", "quick", "--seeds", "1", "--methods", "clip_roi", "regionclip",
                 "--results-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--force"])
    assert code == 0
    again = pd.read_csv(suite_folder(tmp_path, "ovd") / "metrics.csv")
    first = pd.read_csv(suite_folder(quick_run, "ovd") / "metrics.csv")
    first = first[(first["seed"] == 1) & first["method"].isin(["clip_roi", "regionclip"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, again)


def test_regionclip_seeds_as_one_population_give_the_cells_trained_alone(quick_run, tmp_path, cache_dir):
    """``run --population 2``: RegionCLIP's two seeds fitted as one population (``RegionClip.fit_population``) give
    each cell's metrics as its seed fitted alone (the quick run), within floating-point summation order: the loss
    terms to 1e-5 relative, every evaluation metric to 2e-3 (measured here: identical, the losses to 5e-7)."""
    code = main(["run", "--suite", "ovd", "--profile", "quick", "--seeds", "0", "1", "--methods", "regionclip",
                 "--population", "2", "--results-dir", str(tmp_path), "--cache-dir", str(cache_dir)])
    assert code == 0
    together = pd.read_csv(suite_folder(tmp_path, "ovd") / "metrics.csv")
    alone = pd.read_csv(suite_folder(quick_run, "ovd") / "metrics.csv")
    keys = ["seed", "epoch", "split", "metric"]
    both = alone[alone["method"] == "regionclip"].merge(together, on=keys, suffixes=("_alone", "_together"))
    assert len(both) == len(together) == (alone["method"] == "regionclip").sum()
    losses = both["metric"].str.startswith("loss_")
    assert both[losses]["value_together"].to_numpy() == pytest.approx(both[losses]["value_alone"].to_numpy(),
                                                                       rel=1e-5)
    assert both[~losses]["value_together"].to_numpy() == pytest.approx(both[~losses]["value_alone"].to_numpy(),
                                                                        abs=2e-3, nan_ok=True)
    timings = pd.read_csv(suite_folder(tmp_path, "ovd") / "timings.csv")
    assert set(timings[timings["metric"] == "population"]["value"]) == {2.0}


def test_report_rebuilds_summary_byte_for_byte(quick_run, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(quick_run / "ovd", copy / "ovd", ignore=shutil.ignore_patterns("cells"))
    run = suite_folder(copy, "ovd")
    original = (run / "summary.md").read_bytes()
    (run / "summary.md").unlink()
    shutil.rmtree(run / "figures")
    assert main(["report", "--suite", "ovd", "--results-dir", str(copy)]) == 0
    assert (run / "summary.md").read_bytes() == original
    assert (run / "figures" / "ovd_ap50.png").is_file()


def test_report_from_mlflow_matches_metrics_csv(quick_run, tmp_path):
    from benchmark.tracking import metrics_from_mlflow

    tracked, folder = metrics_from_mlflow("ovd", quick_run)
    written = pd.read_csv(suite_folder(quick_run, "ovd") / "metrics.csv")
    assert quick_run / folder == suite_folder(quick_run, "ovd")
    assert len(tracked) == len(written)
    assert sorted(tracked["value"].round(6)) == pytest.approx(sorted(written["value"].round(6)), nan_ok=True)


def test_malformed_metrics_csv_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "ovd").mkdir()
    (tmp_path / "ovd" / "metrics.csv").write_text("a,b\n1,2\n")
    assert main(["report", "--suite", "ovd", "--results-dir", str(tmp_path)]) == 2
    assert "columns must be" in capsys.readouterr().err


@pytest.mark.parametrize("field, value", [("clip_large_scale", (0.8, 0.5)),
                                          ("clip_digit_scale", (0.0, 0.5)), ("clip_large_fraction", 1.5)])
def test_bad_clip_corpus_option_is_one_clear_error(field, value):
    from benchmark.suites.ovd import OvdDataConfig, _check_clip_corpus
    from cvpdl.errors import UserInputError

    _check_clip_corpus(OvdDataConfig())  # the defaults pass
    with pytest.raises(UserInputError, match=f"data.{field} must"):
        _check_clip_corpus(OvdDataConfig(**{field: value}))
