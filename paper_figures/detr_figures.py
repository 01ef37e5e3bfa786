"""The ``detr`` figures: convergence, matching instability, cross-attention sparsity, positional attention, and
the per-seed paired differences of each variant against the one it extends."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from paper_figures.paired import paired_differences_figure
from paper_figures.style import SuiteInputs, bounded_t_interval, method_order


def _curves(inputs: SuiteInputs, metric: str) -> pd.DataFrame:
    m = inputs.metrics
    return m[(m["metric"] == metric) & m["epoch"].notna()].astype({"epoch": int})


def _line(inputs: SuiteInputs, metric: str, bounds: tuple[float, float], ylabel: str, title: str):
    """Mean over seeds with its 95% t-interval clipped to the metric's ``bounds``, and every seed's curve faintly."""
    curves = _curves(inputs, metric)
    if curves.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
    order = method_order(curves)
    sns.lineplot(curves, x="epoch", y="value", hue="method", hue_order=order, units="seed", estimator=None,
                 lw=0.6, alpha=0.35, legend=False, ax=ax)
    sns.lineplot(curves, x="epoch", y="value", hue="method", hue_order=order, errorbar=bounded_t_interval(*bounds),
                 marker="o", ax=ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    # outside the data: the bands of every method stay visible
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def convergence(inputs: SuiteInputs):
    return _line(inputs, "AP50", (0.0, 1.0), "val AP50\n(mean, 95% t-interval clipped to [0, 1])",
                 "Convergence (DN-DETR Fig. 5)")


def matching_instability(inputs: SuiteInputs):
    # each ground truth's matched query changing moves two assignments at most: the metric lies in [0, 2]
    return _line(inputs, "matching_instability", (0.0, 2.0),
                 "changed assignments per ground truth\n(mean, 95% t-interval clipped to [0, 2])",
                 "Matching instability between consecutive epochs (DN-DETR §3)")


def cross_attn_sparsity(inputs: SuiteInputs):
    m = inputs.metrics
    curves = m[m["metric"].str.startswith("cross_attn_neg_entropy_l") & m["epoch"].notna()].astype({"epoch": int})
    if curves.empty:
        return None
    curves = curves.assign(layer=curves["metric"].str.replace("cross_attn_neg_entropy_l", "layer ", regex=False))
    order = method_order(curves)
    # Σ p log p ≤ 0: the interval is clipped at 0
    grid = sns.relplot(curves, x="epoch", y="value", hue="method", hue_order=order, col="layer", kind="line",
                       errorbar=bounded_t_interval(-np.inf, 0.0), height=3.2, aspect=1.0, facet_kws={"sharey": False})
    grid.set_ylabels("Σ p log p (higher = sparser)")
    grid.figure.suptitle("Decoder cross-attention sparsity per layer (mean, 95% t-interval over seeds, clipped at 0)")
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


def paired_differences(inputs: SuiteInputs):
    # each variant against the one it extends: DAB-DETR's anchors against DETR, DN's denoising against DAB-DETR
    return paired_differences_figure(inputs.metrics, [("dab_detr", "detr"), ("dn_dab_detr", "dab_detr")],
                                     [("AP50_auc", "val", "val\nAP50-AUC"), ("AP50", "test", "test\nAP50"),
                                      ("AP", "test", "test\nAP")], "Per-seed paired differences (final metrics)")


FIGURES = {"convergence": convergence, "matching_instability": matching_instability,
           "cross_attn_sparsity": cross_attn_sparsity, "positional_attention": positional_attention,
           "paired_differences": paired_differences}
CAPTIONS = {
    "convergence": "Validation AP50 per epoch. Line with dots: mean over seeds; band: 95% t-interval over seeds, "
                   "clipped to AP50's range [0, 1] (none for n=1); faint lines: each seed.",
    "matching_instability": "Changed query-to-ground-truth assignments since the previous epoch per ground truth, on "
                            "the fixed probe images (range 0-2: a ground truth moving to another query changes two "
                            "assignments). Line with dots: mean over seeds; band: 95% t-interval over seeds, clipped "
                            "to [0, 2]; faint lines: each seed.",
    "cross_attn_sparsity": "Negative entropy Σ p log p of the decoder cross-attention (higher = sparser; at most 0), "
                           "one panel per decoder layer. Line: mean over seeds; band: 95% t-interval over seeds, "
                           "clipped at 0.",
    "positional_attention": "Positional attention of the first 8 learned queries against the image's positional "
                            "encoding, one seed (the lowest). All panels share one colour scale (colour bar); "
                            "panel titles give each map's entropy and number of modes.",
    "paired_differences": "Each variant minus the one it extends, on the same seed: DAB-DETR − DETR and DN-DAB-DETR − "
                          "DAB-DETR, for the final metrics. Coloured dots: seeds; black: mean difference and its 95% "
                          "t-interval (the paired t-test's); above each "
                          "column, the seeds above (↑) and below (↓) zero.",
}
