"""The ``kd`` figures: student top-1 per method, validation curves, intrinsic dimensions."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from paper_figures.bars import grouped_bars
from paper_figures.paired import (difference_panel, dot_interval, legend_handles, paired_differences,
                                  seed_colors)
from paper_figures.style import SuiteInputs, bounded_t_interval, final, method_order

BASELINE = "student_baseline"  # the student trained alone: what isolates each distiller's idea


def kd_accuracy(inputs: SuiteInputs):
    frame = final(inputs.metrics, "top1_last")
    if frame.empty:
        return None
    order = method_order(frame)
    colors = seed_colors(frame["seed"])
    others = [m for m in order if m != BASELINE]
    paired = BASELINE in order and others
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(11.5 if paired else 7, 4.0), squeeze=False,
                             width_ratios=[len(order), len(others)] if paired else None, layout="constrained")
    ax = axes[0][0]
    dot_interval(ax, frame, order, colors, bounds=(0.0, 1.0))
    teacher = final(inputs.metrics, "teacher_top1")["value"].mean()
    if not np.isnan(teacher):
        ax.axhline(teacher, c="black", ls="--", lw=1, label=f"teacher {teacher:.3f}")
    base = frame[frame["method"] == BASELINE]["value"]
    if base.notna().any():
        ax.axhline(base.mean(), c="grey", ls=":", lw=1, label=f"student alone {base.mean():.3f}")
    ax.set_ylabel("test top-1, last epoch\n(black: mean, 95% t-interval)")
    ax.set_title("Student accuracy per distillation method")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    if paired:
        diffs = {m: paired_differences(frame, m, BASELINE) for m in others}
        difference_panel(axes[0][1], diffs, colors, bounds=(-1.0, 1.0))
        axes[0][1].set_ylabel("top-1 − student alone, same seed")
        axes[0][1].set_title("Paired with the student alone", pad=14)
        plt.setp(axes[0][1].get_xticklabels(), rotation=20, ha="right")
    handles = [h for h, label in zip(*ax.get_legend_handles_labels()) if not label.startswith("seed")]
    fig.legend(handles=legend_handles(colors) + handles, loc="outside right upper", frameon=False)
    return fig


def kd_curves(inputs: SuiteInputs):
    m = inputs.metrics
    curves = m[(m["metric"] == "top1") & (m["split"] == "val") & m["epoch"].notna()].astype({"epoch": int})
    if curves.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
    sns.lineplot(curves, x="epoch", y="value", hue="method", hue_order=method_order(curves),
                 errorbar=bounded_t_interval(0.0, 1.0), ax=ax)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # off the bands
    ax.set_ylabel("validation top-1\n(mean, 95% t-interval clipped to [0, 1])")
    ax.set_title("Training curves")
    return fig


def intrinsic_dimension(inputs: SuiteInputs):
    frame = final(inputs.metrics, "intrinsic_dim")
    if frame.empty:
        return None
    # one teacher per seed is shared by every method: draw it once; students per method
    methods = method_order(frame)
    shared = frame["split"].isin(["teacher"]) & (frame["method"] != methods[0])
    frame = frame[~shared]
    names = {"teacher": "teacher", "student_alone": "student alone", "teacher_after_reverse": "teacher after reverse"}
    frame = frame.assign(model=[names.get(split) or f"student: {method}"
                                for split, method in zip(frame["split"], frame["method"])])
    rank = {"teacher": 0, "student_alone": 1, "student": 2, "teacher_after_reverse": 3}
    frame = frame.assign(rank=frame["split"].map(rank).fillna(9), m=frame["method"].map(methods.index))
    order = list(dict.fromkeys(frame.sort_values(["rank", "m"], kind="stable")["model"]))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    grouped_bars(ax, frame.assign(hue="TwoNN"), "model", "hue", order, ["TwoNN"], bounds=(0.0, np.inf))
    ax.set_ylabel("intrinsic dimension\n(mean, 95% t-interval)")
    ax.set_title("Intrinsic dimension (TwoNN; same test samples for every model)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return fig


FIGURES = {"kd_accuracy": kd_accuracy, "kd_curves": kd_curves, "intrinsic_dimension": intrinsic_dimension}
CAPTIONS = {
    "kd_accuracy": "Left: student test top-1 at the last epoch per method; coloured dots: one per seed, a thin line "
                   "joins one seed across methods; black: mean over seeds and 95% t-interval over seeds (clipped to "
                   "[0, 1]). Dashed line: the teacher's mean test top-1; dotted line: the student trained alone. "
                   "Right: each distiller minus the student alone on the same seed (the paired comparison the report "
                   "tests); black: mean difference and its 95% t-interval; above each "
                   "column, the seeds above (↑) and below (↓) zero.",
    "kd_curves": "Validation top-1 per epoch. Line: mean over seeds; band: 95% t-interval over seeds, clipped to "
                 "[0, 1].",
    "intrinsic_dimension": "TwoNN intrinsic dimension of each model's test embeddings (same samples for every model). "
                           "Bar: mean over seeds; whisker: 95% t-interval over seeds.",
}
