"""The ``detr`` figures: convergence, matching instability, cross-attention sparsity, positional attention."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from paper_figures.style import SuiteInputs, method_order, t_interval


def _curves(inputs: SuiteInputs, metric: str) -> pd.DataFrame:
    m = inputs.metrics
    return m[(m["metric"] == metric) & m["epoch"].notna()].astype({"epoch": int})


def _line(inputs: SuiteInputs, metric: str, ylabel: str, title: str):
    curves = _curves(inputs, metric)
    if curves.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    order = method_order(curves)
    sns.lineplot(curves, x="epoch", y="value", hue="method", hue_order=order, errorbar=t_interval, marker="o",
                 ax=ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def convergence(inputs: SuiteInputs):
    return _line(inputs, "AP50", "val AP50 (mean, 95% t-interval)", "Convergence (DN-DETR Fig. 5)")


def matching_instability(inputs: SuiteInputs):
    return _line(inputs, "matching_instability", "changed assignments / #GT (mean, 95% t-interval)",
                 "Matching instability between consecutive epochs (DN-DETR §3)")


def cross_attn_sparsity(inputs: SuiteInputs):
    m = inputs.metrics
    curves = m[m["metric"].str.startswith("cross_attn_neg_entropy_l") & m["epoch"].notna()].astype({"epoch": int})
    if curves.empty:
        return None
    curves = curves.assign(layer=curves["metric"].str.replace("cross_attn_neg_entropy_l", "layer ", regex=False))
    order = method_order(curves)
    grid = sns.relplot(curves, x="epoch", y="value", hue="method", hue_order=order, col="layer", kind="line",
                       errorbar=t_interval, height=3.2, aspect=1.0, facet_kws={"sharey": False})
    grid.set_ylabels("Σ p log p (higher = sparser)")
    grid.figure.suptitle("Decoder cross-attention sparsity per layer (mean, 95% t-interval over seeds)")
    grid.figure.subplots_adjust(top=0.82)
    return grid.figure


def positional_attention(inputs: SuiteInputs):
    table = inputs.tables.get("positional_attention")
    if table is None or table.empty:
        return None
    methods = method_order(table)
    seed = table["seed"].min()
    queries = sorted(table["query"].unique())
    fig, axes = plt.subplots(len(methods), len(queries), figsize=(1.6 * len(queries) + 1.0, 1.9 * len(methods) + 0.4),
                             squeeze=False, layout="constrained")
    # one colour scale for every panel, so maps compare across queries and methods
    vmax = float(table.loc[table["seed"] == seed, "value"].max())
    image = None
    for row, method in zip(axes, methods):
        sub = table[(table["method"] == method) & (table["seed"] == seed)]
        for ax, q in zip(row, queries):
            points = sub[sub["query"] == q]
            if points.empty:  # a variant with fewer queries than the others
                ax.set_axis_off()
                continue
            grid = np.zeros((points["y"].max() + 1, points["x"].max() + 1))
            grid[points["y"], points["x"]] = points["value"]
            image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=vmax)
            ax.set_title(f"H={points['entropy'].iloc[0]:.2f}, {int(points['modes'].iloc[0])} mode(s)", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(method)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    fig.suptitle(f"Positional attention of {len(queries)} learned queries against the image PE (seed {seed})")
    return fig


FIGURES = {"convergence": convergence, "matching_instability": matching_instability,
           "cross_attn_sparsity": cross_attn_sparsity, "positional_attention": positional_attention}
CAPTIONS = {
    "convergence": "Validation AP50 per epoch. Line: mean over seeds; band: 95% t-interval over seeds (none for n=1).",
    "matching_instability": "Share of ground truths whose matched query changed since the previous epoch, on the "
                            "fixed probe images. Line: mean over seeds; band: 95% t-interval over seeds.",
    "cross_attn_sparsity": "Negative entropy of the decoder cross-attention (higher = sparser), one panel per decoder "
                           "layer. Line: mean over seeds; band: 95% t-interval over seeds.",
    "positional_attention": "Positional attention of the first 8 learned queries against the image's positional "
                            "encoding, one seed (the lowest). All panels share one colour scale (colour bar); "
                            "panel titles give each map's entropy and number of modes.",
}
