"""The ``ovd`` figures: RegionCLIP Fig. 1(a) and 1(b), region zero-shot accuracy and OV AP50 per method."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from paper_figures.bars import grouped_bars
from paper_figures.style import SuiteInputs, final, method_order

SPLITS = ["base", "novel", "all"]


def fig1a_score_vs_iou(inputs: SuiteInputs):
    points = inputs.tables.get("score_vs_iou")
    if points is None or points.empty:
        return None
    rho = final(inputs.metrics, "score_iou_spearman")
    methods = method_order(points)
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.6), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        sub = points[points["method"] == method]
        ax.scatter(sub["iou"], sub["score"], s=4, alpha=0.35)
        r = rho[rho["method"] == method]["value"]
        ax.set_title(f"{method}: Spearman ρ = {r.mean():.2f} (n={len(r)} seeds)")
        ax.set_xlabel("IoU with best-matching ground truth")
    axes[0][0].set_ylabel("zero-shot score of the proposal")
    fig.suptitle("Fig. 1(a) setting: zero-shot score of each proposal against its IoU")
    return fig


def fig1b_crop_vs_image(inputs: SuiteInputs):
    m = inputs.metrics
    rows = []
    image = final(m, "clip_zs_top1_image")
    image = image[(image["split"] == "all") & (image["method"] == method_order(m)[0])]
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
    grouped_bars(ax, frame.assign(hue="top-1"), "group", "hue", order, ["top-1"])
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
    grouped_bars(ax, frame, "method", "split", method_order(frame), [s for s in SPLITS if s in set(frame["split"])])
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


FIGURES = {"fig1a_score_vs_iou": fig1a_score_vs_iou, "fig1b_crop_vs_image": fig1b_crop_vs_image,
           "region_zero_shot": region_zero_shot, "ovd_ap50": ovd_ap50}
CAPTIONS = {
    "fig1a_score_vs_iou": "Each point is one jittered proposal around a ground-truth box (a sample of the test "
                          "split, all seeds): its IoU with the best-matching ground truth against its zero-shot "
                          "score. Panel titles: mean Spearman ρ over seeds.",
    "fig1b_crop_vs_image": "Zero-shot top-1 over all classes: the CLIP on whole single-digit images, and each method "
                           "on ground-truth regions (clip_crop and clip_roi use the same CLIP; regionclip uses its "
                           "region-pretrained encoder). Bar: mean over seeds; whisker: 95% t-interval over seeds. "
                           "Dashed line: chance, 1 / number of classes, from metrics.csv (`chance_top1`).",
    "region_zero_shot": "Zero-shot top-1 on ground-truth boxes per class split. Bar: mean over seeds; whisker: 95% "
                        "t-interval over seeds.",
    "ovd_ap50": "Detection AP50 (all classes scored together) per class split. Bar: mean over seeds; whisker: 95% "
                "t-interval over seeds.",
}
