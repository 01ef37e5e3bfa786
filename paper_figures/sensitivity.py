"""Each primary claim's Δ across the values of the knob that may drive it (``sensitivity.csv``): mean difference
over the development seeds and its 95% t-interval per value, the default filled, a zero line."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paper_figures.style import MIN_SEEDS_FOR_INTERVAL

CAPTION = ("Each primary claim (one panel per claim and knob) at each swept value of the knob that may drive it, "
           "on the development seeds: mean paired difference Δ and its 95% t-interval over seeds; filled marker: "
           "the default; dashed: zero. Exploratory: each value's test is unadjusted.")


def sensitivity(table: pd.DataFrame) -> plt.Figure | None:
    groups = list(table.groupby(["claim", "knob"], sort=False))
    if not groups:
        return None
    figure, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), squeeze=False)
    for ax, ((_, knob), rows) in zip(axes[0], groups):
        x = np.arange(len(rows))
        ax.axhline(0.0, color="0.3", lw=1, ls="--", zorder=0)
        if rows["n"].min() >= MIN_SEEDS_FOR_INTERVAL:
            ax.errorbar(x, rows["diff"], yerr=[rows["diff"] - rows["ci_low"], rows["ci_high"] - rows["diff"]],
                        fmt="none", ecolor="black", capsize=4, lw=1.4)
        for xi, (_, r) in zip(x, rows.iterrows()):
            ax.plot([xi], [r["diff"]], "o", color="black", mfc="black" if r["default"] else "white", ms=6)
        ax.set_xticks(x, [f"{v:g}" for v in rows["value"]])
        ax.set_xlabel(knob)
        title = rows["text"].iloc[0].replace(" test top-1 (last epoch)", "").replace("`", "")
        ax.set_title(textwrap.fill(title, 46), fontsize=8)  # a panel's width: long claims wrap, not overlap
    axes[0][0].set_ylabel("Δ (a − b), 95% CI")
    return figure
