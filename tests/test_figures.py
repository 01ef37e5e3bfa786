"""The figures from small synthetic frames: each renders (NaN and empty inputs included), bounded metrics' drawn
intervals stay inside their range where the plain t-interval would leave it, the paired panels draw the hand-computed
per-seed differences, and labels and legends stay inside the canvas and off the data."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PolyCollection, QuadMesh

from cvpdl.evaluation.stats import summarize
from paper_figures import render_suite_figures
from paper_figures.detr_figures import convergence, matching_instability
from paper_figures.kd_figures import kd_accuracy
from paper_figures.ovd_figures import SATURATED, fig1a_score_vs_iou, paired_differences, region_zero_shot
from paper_figures.style import SuiteInputs, plt, save
from paper_figures.tuning_figures import repeated_trial_std, sensitivity, sensitivity_figure


def metrics(rows) -> pd.DataFrame:
    """metrics.csv's long format from ``(method, seed, epoch or None, split, metric, value)`` rows."""
    frame = pd.DataFrame(rows, columns=["method", "seed", "epoch", "split", "metric", "value"]).assign(suite="s")
    frame["epoch"] = frame["epoch"].astype("Int64")
    return frame


def curve_rows(method, metric, per_seed: dict[int, list[float]], split="val"):
    return [(method, seed, epoch, split, metric, v) for seed, values in per_seed.items()
            for epoch, v in enumerate(values, start=1)]


def band_ys(ax) -> np.ndarray:
    """The y of every vertex of the axes' filled bands (seaborn's error bands)."""
    return np.concatenate([p.vertices[:, 1] for c in ax.collections if isinstance(c, PolyCollection)
                           for p in c.get_paths()])


def whisker_ys(ax) -> np.ndarray:
    """The y of every errorbar whisker end (errorbar's vertical LineCollection)."""
    return np.concatenate([np.asarray(seg)[:, 1] for c in ax.collections if isinstance(c, LineCollection)
                           for seg in c.get_segments()])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_convergence_band_stays_in_0_1_where_the_t_interval_leaves_it():
    # epoch 2 of method b: values 0, 0, 0.3 → the t-interval of the mean reaches below 0
    rows = curve_rows("a", "AP50", {0: [0.0, 0.1], 1: [0.0, 0.12], 2: [0.01, 0.11]}) + \
        curve_rows("b", "AP50", {0: [0.0, 0.0], 1: [0.0, 0.0], 2: [0.0, 0.3]})
    assert summarize([0.0, 0.0, 0.3]).ci_low < 0  # the test can fail: unclipped, the band would dip below 0
    figure = convergence(SuiteInputs(metrics(rows), {}))
    ys = band_ys(figure.axes[0])
    assert len(ys) and ys.min() >= 0.0 and ys.max() <= 1.0
    assert ys.min() == 0.0  # clipped, not dropped
    assert "clipped to [0, 1]" in figure.axes[0].get_ylabel()


def test_matching_instability_label_bounds_and_legend_outside_the_data(tmp_path):
    rows = curve_rows("detr", "matching_instability", {0: [1.9, 1.2], 1: [2.0, 1.0], 2: [1.2, 0.9]}) + \
        curve_rows("dab_detr", "matching_instability", {0: [0.1, 0.2], 1: [0.0, 0.0], 2: [0.0, 0.6]})
    assert summarize([1.9, 2.0, 1.2]).ci_high > 2 and summarize([0.0, 0.0, 0.6]).ci_low < 0
    figure = matching_instability(SuiteInputs(metrics(rows), {}))
    ax = figure.axes[0]
    ys = band_ys(ax)
    assert ys.min() == 0.0 and ys.max() == 2.0
    assert ax.get_ylabel().startswith("changed assignments per ground truth")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    axes_box, legend_box = ax.get_window_extent(renderer), ax.get_legend().get_window_extent(renderer)
    assert legend_box.x0 >= axes_box.x1  # beside the axes, over no band
    canvas = figure.bbox
    for artist in (ax.yaxis.label, ax.xaxis.label, ax.title, ax.get_legend()):
        box = artist.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= canvas.x1 and box.y1 <= canvas.y1
    assert save(figure, tmp_path / "matching_instability").is_file()


def kd_rows(values: dict[str, list[float]]):
    return [(method, seed, None, "test", "top1_last", v) for method, vs in values.items()
            for seed, v in enumerate(vs)] + [(m, s, None, "test", "teacher_top1", 0.99)
                                              for m in values for s in range(len(values[m]))]


def test_kd_accuracy_dots_intervals_in_range_and_paired_differences():
    values = {"student_baseline": [0.90, 0.95, 0.97], "logit_kd": [0.93, 1.0, 0.99], "gld": [0.5, math.nan, 0.6]}
    assert summarize(values["logit_kd"]).ci_high > 1
    figure = kd_accuracy(SuiteInputs(metrics(kd_rows(values)), {}))
    left, right = figure.axes[:2]
    assert [t.get_text() for t in left.get_xticklabels()] == list(values)
    ys = whisker_ys(left)
    assert ys.max() == 1.0 and ys.min() >= 0.0
    assert not any(isinstance(p, plt.Rectangle) and p.get_height() > 0 for p in left.patches)  # no bars
    # the paired panel: per-seed method − baseline, hand-computed; gld's seed 1 has no value, so no pair
    diffs = sorted(np.round(np.concatenate([c.get_offsets()[:, 1] for c in right.collections
                                            if c.get_offsets().shape[0] and not isinstance(c, LineCollection)]), 6))
    assert diffs == sorted([0.03, 0.05, 0.02, -0.4, -0.37])
    assert [t.get_text() for t in right.get_xticklabels()] == ["logit_kd", "gld"]
    counts = sorted(t.get_text() for t in right.texts)
    assert counts == ["0↑ 2↓ of 2", "3↑ 0↓ of 3"]


def test_kd_accuracy_without_baseline_or_values():
    assert kd_accuracy(SuiteInputs(metrics([]), {})) is None
    figure = kd_accuracy(SuiteInputs(metrics(kd_rows({"logit_kd": [math.nan, math.nan]})), {}))
    assert len(figure.axes) == 1  # nothing to pair with: one panel, and no crash on all-NaN values


def test_paired_differences_figure_per_comparison_and_empty():
    rows = [(m, seed, None, split, "zs_top1", v) for m, vs in
            {"clip_crop": [0.2, 0.3], "clip_roi": [0.6, 0.65], "regionclip": [0.62, 0.6]}.items()
            for seed, v in enumerate(vs) for split in ("base", "novel", "all")]
    figure = paired_differences(SuiteInputs(metrics(rows), {}))
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["clip_roi − clip_crop", "regionclip − clip_roi"]
    points = figure.axes[1].collections[0].get_offsets()[:, 1]  # first column: region top-1, base classes
    assert np.allclose(sorted(points), [-0.05, 0.02])
    assert paired_differences(SuiteInputs(metrics([]), {})) is None


def score_table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for method in ("clip_crop", "regionclip"):
        score = np.concatenate([np.ones(n // 2), rng.uniform(0.3, 0.999, n - n // 2)])  # a pile at exactly 1.0
        rows.append(pd.DataFrame({"iou": rng.uniform(0, 1, n), "score": score, "method": method, "seed": 0}))
    table = pd.concat(rows, ignore_index=True)
    table.loc[3, "score"] = np.nan  # a proposal with no score is left out, not drawn at 0
    return table


def test_fig1a_counts_every_proposal_and_names_rho():
    table = score_table()
    rho = metrics([("clip_crop", 0, None, "all", "score_iou_spearman", 0.1),
                   ("clip_crop", 1, None, "all", "score_iou_spearman", 0.3),
                   ("regionclip", 0, None, "all", "score_iou_spearman", math.nan)])
    figure = fig1a_score_vs_iou(SuiteInputs(rho, {"score_vs_iou": table}))
    # the 2-D histograms (not the colour bar, whose axes also hold a mesh; not the marginals, sharing the logit y)
    mains = [ax for ax in figure.axes if ax.get_yscale() == "logit" and ax.collections]
    meshes = [c for ax in mains for c in ax.collections if isinstance(c, QuadMesh)]
    assert [int(m.get_array().sum()) for m in meshes] == [59, 60]  # every proposal with a score, the ones included
    titles = [ax.get_title() for ax in figure.axes if "Spearman" in ax.get_title()]
    assert titles[0].startswith("clip_crop: Spearman ρ = 0.20 (mean of 2 seeds)")
    assert "50% with score 1.0" in titles[1]
    assert len(mains) == 2 and all(ax.get_ylim()[1] > 1 - SATURATED for ax in mains)
    assert fig1a_score_vs_iou(SuiteInputs(rho, {"score_vs_iou": table.iloc[:0]})) is None


def test_bar_whiskers_are_clipped_to_the_metric_range():
    rows = [(m, seed, None, split, "zs_top1", v) for m, vs in {"clip_crop": [0.97, 1.0, 0.9]}.items()
            for seed, v in enumerate(vs) for split in ("base", "all")]
    assert summarize([0.97, 1.0, 0.9]).ci_high > 1
    ys = whisker_ys(region_zero_shot(SuiteInputs(metrics(rows), {})).axes[0])
    assert ys.max() == 1.0


def trials_frame(values, lrs, stages):
    return pd.DataFrame({"method": "fitnet", "trial": range(len(values)), "state": "COMPLETE", "value": values,
                         "counted": True, "param:train.lr": lrs, "param:fitnet.hint_stage": stages})


def test_repeated_trial_std_pools_repeats_only():
    frame = trials_frame([0.5, 0.7, 0.4, 0.6, 0.62], [1e-3, 1e-3, 2e-3, 3e-3, 3e-3], [1, 1, 1, 0, 0])
    # repeats: (0.5, 0.7) and (0.6, 0.62): pooled variance (0.02 + 0.0002) / 2
    assert repeated_trial_std(frame) == pytest.approx(math.sqrt(0.0202 / 2))
    assert repeated_trial_std(frame.iloc[[0, 2, 3]]) is None


def test_sensitivity_band_readable_ticks_and_nan(tmp_path):
    frame = trials_frame([0.71, 0.759, 0.764, math.nan], [0.003, 0.00353845, 0.0044248, 0.005], [1, 0, 1, 1])
    path = sensitivity(frame, ("top1", "val"), tmp_path / "sensitivity_fitnet.png", seed_noise=0.012)
    assert path.is_file() and path.with_suffix(".pdf").is_file()
    figure = sensitivity_figure(frame, ("top1", "val"), seed_noise=0.012)
    lr_ax, stage_ax = figure.axes
    band = next(p for p in lr_ax.patches if p.get_label().startswith("best ±"))
    ys = band.get_path().transformed(band.get_patch_transform()).vertices[:, 1]
    assert (ys.min(), ys.max()) == pytest.approx((0.764 - 0.012, 0.764 + 0.012))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for ax in (lr_ax, stage_ax):
        low, high = ax.get_xlim()
        boxes = [t.get_window_extent(renderer) for t, x in zip(ax.get_xticklabels(), ax.get_xticks())
                 if t.get_text() and low <= x <= high]
        assert len(boxes) >= 2
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), "tick labels overlap"
    low, high = stage_ax.get_xlim()
    assert {t.get_text() for t, x in zip(stage_ax.get_xticklabels(), stage_ax.get_xticks()) if low <= x <= high} \
        == {"0", "1"}  # an integer parameter gets integer ticks
    assert "(3 trials)" in figure.get_suptitle()
    # no seed noise given, no repeats: no band, and the title says so
    bare = sensitivity_figure(frame, ("top1", "val"))
    assert not bare.axes[0].patches[1:] and "no seed-noise estimate" in bare.get_suptitle()
    diverged = sensitivity_figure(frame.assign(value=[0.71, -math.inf, 0.764, math.nan]), ("top1", "val"))
    assert "(2 trials, 1 diverged;" in diverged.get_suptitle()
    # every value missing: a figure that says so, no traceback
    assert sensitivity(frame.assign(value=math.nan), ("top1", "val"), tmp_path / "none.png").is_file()


def test_every_suite_figure_renders_from_synthetic_results(tmp_path):
    detr = metrics(curve_rows("detr", "AP50", {0: [0.0, 0.1], 1: [0.0, 0.2]})
                   + curve_rows("detr", "matching_instability", {0: [math.nan, 1.0], 1: [math.nan, 1.5]})
                   + [("detr", s, None, "test", "AP50", 0.1 * s) for s in range(2)]
                   + [("dab_detr", s, None, "test", "AP50", 0.2 * s) for s in range(2)])
    written = render_suite_figures("detr", SuiteInputs(detr, {}), tmp_path / "detr")
    assert {p.stem for p in written} == {"convergence", "matching_instability", "paired_differences"}
    kd = metrics(kd_rows({"student_baseline": [0.8, 0.7], "fitnet": [0.75, math.nan]})
                 + curve_rows("fitnet", "top1", {0: [0.1, 0.5]}))
    assert {p.stem for p in render_suite_figures("kd", SuiteInputs(kd, {}), tmp_path / "kd")} == \
        {"kd_accuracy", "kd_curves"}
    assert render_suite_figures("ovd", SuiteInputs(metrics([]), {}), tmp_path / "ovd") == []
