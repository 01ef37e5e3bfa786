"""The ``kd`` figures: student top-1 per method, validation curves, intrinsic dimensions."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from paper_figures.bars import grouped_bars
from cvpdl.evaluation.stats import summarize
from paper_figures.style import SuiteInputs, final, t_interval

METHOD_ORDER = ["student_baseline", "logit_kd", "gld", "fitnet", "reverse_feature_kd"]


def _methods(frame: pd.DataFrame) -> list[str]:
    present = set(frame["method"])
    return [m for m in METHOD_ORDER if m in present]


def kd_accuracy(inputs: SuiteInputs):
    frame = final(inputs.metrics, "top1_last")
    if frame.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.8))
    grouped_bars(ax, frame.assign(hue="student top-1 (last epoch)"), "method", "hue", _methods(frame),
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
    sns.lineplot(curves, x="epoch", y="value", hue="method", hue_order=_methods(curves), errorbar=t_interval,
                 ax=ax)
    ax.set_ylabel("validation top-1 (mean, 95% t-interval)")
    ax.set_title("Training curves")
    return fig


def intrinsic_dimension(inputs: SuiteInputs):
    frame = final(inputs.metrics, "intrinsic_dim")
    if frame.empty:
        return None
    frame = frame.assign(model=frame["split"] + " (" + frame["method"] + ")")
    order = list(dict.fromkeys(frame.sort_values(["split", "method"])["model"]))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    grouped_bars(ax, frame.assign(hue="TwoNN"), "model", "hue", order, ["TwoNN"])
    ax.set_ylabel("intrinsic dimension (mean, 95% t-interval)")
    ax.set_title("Intrinsic dimension (TwoNN; same test samples for every model)")
    ax.tick_params(axis="x", labelrotation=20)
    return fig


FIGURES = {"kd_accuracy": kd_accuracy, "kd_curves": kd_curves, "intrinsic_dimension": intrinsic_dimension}
CAPTIONS = {
    "kd_accuracy": "Student test top-1 at the last epoch per method. Bar: mean over seeds; whisker: 95% t-interval "
                   "over seeds. Dashed line: the teacher's mean test top-1; dotted line: the student trained alone.",
    "kd_curves": "Validation top-1 per epoch. Line: mean over seeds; band: 95% t-interval over seeds.",
    "intrinsic_dimension": "TwoNN intrinsic dimension of each model's test embeddings (same samples for every model). "
                           "Bar: mean over seeds; whisker: 95% t-interval over seeds.",
}
