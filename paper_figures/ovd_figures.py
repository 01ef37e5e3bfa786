"""The ``ovd`` figures: RegionCLIP Fig. 1(a) and 1(b), region zero-shot accuracy and OV AP50 per method, and the
per-seed paired differences behind the RoIAlign and RegionCLIP claims."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from scipy.special import expit, logit

from cvpdl.evaluation.stats import summarize
from paper_figures.bars import grouped_bars
from paper_figures.paired import paired_differences_figure
from paper_figures.style import SuiteInputs, final, method_order

SPLITS = ["base", "novel", "all"]
SATURATED = 1e-7  # a score of exactly 0 or 1 (float32 saturation) is drawn this far inside (0, 1)


def fig1a_score_vs_iou(inputs: SuiteInputs):
    points = inputs.tables.get("score_vs_iou")
    if points is None or points.empty:
        return None
    points = points.dropna(subset=["iou", "score"])
    rho = final(inputs.metrics, "score_iou_spearman")
    methods = method_order(points) if len(points) else []
    if not methods:
        return None
    # most scores pile up within 1e-3 of 1 (many saturate to exactly 1.0 in float32): a logit score axis spreads
    # the pile, exact ones are drawn at 1 - SATURATED; a 2-D histogram on a log colour scale and the marginal
    # histograms show where the proposals are
    score = points["score"].clip(SATURATED, 1.0 - SATURATED)
    low = min(0.1, float(score.min()))  # the axis reaches 0.1 at least, and the lowest score
    score_edges = expit(np.linspace(logit(low), logit(1.0 - SATURATED), 29))
    # the outer edges a hair outside the clipped range, so the lowest score and the exact ones are counted
    score_edges[0], score_edges[-1] = low * (1 - 1e-6), 1.0 - SATURATED / 2
    iou_edges = np.linspace(0.0, 1.0, 26)  # IoU lies in [0, 1]
    counts = [np.histogram2d(points.loc[points["method"] == m, "iou"], score[points["method"] == m],
                             bins=[iou_edges, score_edges])[0] for m in methods]
    norm = LogNorm(vmin=1, vmax=max(1.0, max(float(c.max()) for c in counts)))  # one colour scale for every panel
    fig = plt.figure(figsize=(4.3 * len(methods) + 0.8, 4.8), layout="constrained")
    grid = fig.add_gridspec(2, 2 * len(methods), width_ratios=[4, 1] * len(methods), height_ratios=[1, 4])
    image = None
    for k, (method, count) in enumerate(zip(methods, counts)):
        in_method = points["method"] == method
        main = fig.add_subplot(grid[1, 2 * k])
        top = fig.add_subplot(grid[0, 2 * k], sharex=main)
        right = fig.add_subplot(grid[1, 2 * k + 1], sharey=main)
        image = main.pcolormesh(iou_edges, score_edges, np.ma.masked_equal(count.T, 0), cmap="viridis", norm=norm)
        main.set_yscale("logit")
        top.hist(points.loc[in_method, "iou"], bins=iou_edges, color="0.4")
        right.hist(score[in_method], bins=score_edges, orientation="horizontal", color="0.4")
        top.tick_params(labelbottom=False)
        right.tick_params(labelleft=False)
        top.set_ylabel("count", fontsize=8)
        right.set_xlabel("count", fontsize=8)
        main.set_xlim(0.0, 1.0)
        main.set_ylim(score_edges[0], score_edges[-1])
        main.set_xlabel("IoU with best-matching ground truth")
        if k == 0:
            main.set_ylabel(f"zero-shot score of the proposal\n(logit scale; 1.0 drawn at 1 − {SATURATED:g})")
        r = summarize(rho.loc[rho["method"] == method, "value"].tolist())
        saturated = float((points.loc[in_method, "score"] >= 1.0).mean())
        top.set_title(f"{method}: Spearman ρ = {r.mean:.2f} (mean of {r.n} seeds)\n"
                      f"{int(in_method.sum())} proposals, {saturated:.0%} with score 1.0", fontsize=10)
    fig.colorbar(image, ax=fig.axes, shrink=0.7, label="proposals per cell (log scale)")
    fig.suptitle("Fig. 1(a) setting: zero-shot score of each proposal against its IoU")
    return fig


def fig1b_crop_vs_image(inputs: SuiteInputs):
    m = inputs.metrics
    rows = []
    image = final(m, "clip_zs_top1_image")
    # the same CLIP for every method: its whole-image accuracy once, from the first method's cells
    image = image[(image["split"] == "all") & (image["method"] == (method_order(image) or [None])[0])]
    rows.append(image.assign(group="whole image"))
    labels = {"clip_crop": "GT crop (clip_crop)", "clip_roi": "GT RoIAlign (clip_roi)",
              "regionclip": "GT RoIAlign (regionclip)"}
    for method, label in labels.items():
        crop = final(m, "zs_top1")
        rows.append(crop[(crop["method"] == method) & (crop["split"] == "all")].assign(group=label))
    frame = pd.concat(rows)
    if frame.empty:
        return None
    order = [g for g in ["whole image", *labels.values()] if g in set(frame["group"])]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    grouped_bars(ax, frame.assign(hue="top-1"), "group", "hue", order, ["top-1"], bounds=(0.0, 1.0))
    chance = final(m, "chance_top1")["value"]
    if len(chance):
        ax.axhline(chance.mean(), ls="--", c="grey", lw=1, label=f"chance (1 / classes = {chance.mean():.3f})")
        ax.legend(frameon=False, loc="upper right", ncol=2)
    ax.set_ylim(0, 1.12)  # top-1 lies in [0, 1]; the headroom keeps the legend off the bars
    ax.set_ylabel("zero-shot top-1, all classes\n(mean, 95% t-interval)")
    ax.set_title("Fig. 1(b) setting: whole images vs ground-truth regions")
    ax.tick_params(axis="x", labelrotation=12)
    return fig


def _per_split(inputs: SuiteInputs, metric: str, ylabel: str, title: str):
    frame = final(inputs.metrics, metric)
    if frame.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    grouped_bars(ax, frame, "method", "split", method_order(frame), [s for s in SPLITS if s in set(frame["split"])],
                 bounds=(0.0, 1.0))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(title="classes", frameon=False)
    return fig


def region_zero_shot(inputs: SuiteInputs):
    return _per_split(inputs, "zs_top1", "top-1 on ground-truth boxes",
                      "Zero-shot region classification (mean, 95% t-interval over seeds)")


def ovd_ap50(inputs: SuiteInputs):
    return _per_split(inputs, "AP50", "AP50 (generalized: all classes scored together)",
                      "Locate, then classify: OV detection AP50")


def paired_differences(inputs: SuiteInputs):
    # RoIAlign against crops isolates pooling from the image's feature map; RegionCLIP against RoIAlign CLIP isolates
    # region-text pretraining (the same pooling), and its whole-image accuracy shows what that pretraining costs
    return paired_differences_figure(
        inputs.metrics, [("clip_roi", "clip_crop"), ("regionclip", "clip_roi")],
        [("zs_top1", split, f"region top-1\n{split} classes") for split in SPLITS]
        + [("AP50", split, f"AP50\n{split} classes") for split in SPLITS]
        + [("zs_top1_image", "all", "whole-image\ntop-1, all")], "Per-seed paired differences (final metrics)")


FIGURES = {"fig1a_score_vs_iou": fig1a_score_vs_iou, "fig1b_crop_vs_image": fig1b_crop_vs_image,
           "region_zero_shot": region_zero_shot, "ovd_ap50": ovd_ap50, "paired_differences": paired_differences}
CAPTIONS = {
    "fig1a_score_vs_iou": "Jittered proposals around ground-truth boxes (a sample of the test split, all seeds): "
                          "each proposal's IoU with the best-matching ground truth against its zero-shot score, as a "
                          "2-D histogram (colour: proposals per cell, log scale, one scale for all panels) with the "
                          "marginal histograms of IoU (top) and score (right). The score axis is on a logit scale, "
                          "which spreads the scores piled up near 1; a score of exactly 1.0 (float32 saturation) is "
                          "drawn at 1 − 10⁻⁷. Panel titles: mean Spearman ρ over seeds and the share of scores of "
                          "exactly 1.0.",
    "fig1b_crop_vs_image": "Zero-shot top-1 over all classes: the CLIP on whole single-digit images, and each method "
                           "on ground-truth regions (clip_crop and clip_roi use the same CLIP; regionclip uses its "
                           "region-pretrained encoder). Bar: mean over seeds; whisker: 95% t-interval over seeds, "
                           "clipped to [0, 1]. Dashed line: chance, 1 / number of classes, from metrics.csv "
                           "(`chance_top1`).",
    "region_zero_shot": "Zero-shot top-1 on ground-truth boxes per class split. Bar: mean over seeds; whisker: 95% "
                        "t-interval over seeds, clipped to [0, 1].",
    "ovd_ap50": "Detection AP50 (all classes scored together) per class split. Bar: mean over seeds; whisker: 95% "
                "t-interval over seeds, clipped to [0, 1].",
    "paired_differences": "Per-seed paired differences: RoIAlign CLIP − crop CLIP (pooling from the image's feature "
                          "map) and RegionCLIP − RoIAlign CLIP (region–text pretraining with the same pooling), on "
                          "region top-1, AP50 and whole-image top-1. Coloured dots: seeds; black: mean difference "
                          "and its 95% t-interval (the paired t-test's); above each "
                          "column, the seeds above (↑) and below (↓) zero.",
}
