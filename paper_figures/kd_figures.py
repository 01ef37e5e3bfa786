"""The ``kd`` figures: student top-1 per method, validation curves, intrinsic dimensions."""
from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

from cvpdl.evaluation.stats import summarize
from paper_figures.bars import grouped_bars
from paper_figures.style import SuiteInputs, final, method_order, t_interval


def kd_accuracy(inputs: SuiteInputs):
    frame = final(inputs.metrics, "top1_last")
    if frame.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.8))
    grouped_bars(ax, frame.assign(hue="student top-1 (last epoch)"), "method", "hue", method_order(frame),
                 ["student top-1 (last epoch)"])
    teacher = final(inputs.metrics, "teacher_top1")["value"].mean()
    ax.axhline(teacher, c="black", ls="--", lw=1, label=f"teacher {teacher:.3f}")
    base = frame[frame["method"] == "student_baseline"]["value"]
    if len(base):
        ax.axhline(base.mean(), c="grey", ls=":", lw=1, label=f"student alone {base.mean():.3f}")
    # the axis holds every whisker (the 95% t-interval of each bar), not only the per-seed values
    spans = [summarize(g["value"].tolist()) for _, g in frame.groupby("method")]
    lows = [s.ci_low if s.n > 1 else s.mean for s in spans] + [frame["value"].min(), teacher]
    highs = [s.ci_high if s.n > 1 else s.mean for s in spans] + [frame["value"].max(), teacher]
    ax.set_ylim(max(0.0, min(lows) - 0.03), min(1.0, max(highs)) + 0.02)
    ax.set_ylabel("test top-1 (mean, 95% t-interval)")
    ax.set_title("Student accuracy per distillation method")
    ax.tick_params(axis="x", labelrotation=12)
    ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    return fig


def kd_curves(inputs: SuiteInputs):
    m = inputs.metrics
    curves = m[(m["metric"] == "top1") & (m["split"] == "val") & m["epoch"].notna()].astype({"epoch": int})
    if curves.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    sns.lineplot(curves, x="epoch", y="value", hue="method", hue_order=method_order(curves), errorbar=t_interval,
                 ax=ax)
    ax.set_ylabel("validation top-1 (mean, 95% t-interval)")
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
    grouped_bars(ax, frame.assign(hue="TwoNN"), "model", "hue", order, ["TwoNN"])
    ax.set_ylabel("intrinsic dimension\n(mean, 95% t-interval)")
    ax.set_title("Intrinsic dimension (TwoNN; same test samples for every model)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return fig


FIGURES = {"kd_accuracy": kd_accuracy, "kd_curves": kd_curves, "intrinsic_dimension": intrinsic_dimension}
CAPTIONS = {
    "kd_accuracy": "Student test top-1 at the last epoch per method. Bar: mean over seeds; whisker: 95% t-interval "
                   "over seeds. Dashed line: the teacher's mean test top-1; dotted line: the student trained alone.",
    "kd_curves": "Validation top-1 per epoch. Line: mean over seeds; band: 95% t-interval over seeds.",
    "intrinsic_dimension": "TwoNN intrinsic dimension of each model's test embeddings (same samples for every model). "
                           "Bar: mean over seeds; whisker: 95% t-interval over seeds.",
}
