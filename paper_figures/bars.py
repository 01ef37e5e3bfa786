"""Grouped bars of mean over seeds with 95% t-interval whiskers (the same interval as summary.md, clipped to the
metric's range)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cvpdl.evaluation.stats import summarize
from paper_figures.style import MIN_SEEDS_FOR_INTERVAL


def grouped_bars(ax, frame: pd.DataFrame, group: str, hue: str, order: list[str], hue_order: list[str],
                 bounds: tuple[float, float]) -> None:
    """``frame`` has one row per seed with columns ``group``, ``hue`` and ``value``; whiskers are clipped to the
    metric's ``bounds``."""
    width = 0.8 / max(1, len(hue_order))
    palette = __import__("seaborn").color_palette(n_colors=len(hue_order))
    for k, h in enumerate(hue_order):
        means, lows, highs = [], [], []
        for g in order:
            s = summarize(frame[(frame[group] == g) & (frame[hue] == h)]["value"].tolist())
            means.append(s.mean)
            drawn = s.n >= MIN_SEEDS_FOR_INTERVAL
            lows.append(s.mean - max(s.ci_low, bounds[0]) if drawn else 0.0)
            highs.append(min(s.ci_high, bounds[1]) - s.mean if drawn else 0.0)
        x = np.arange(len(order)) + (k - (len(hue_order) - 1) / 2) * width
        ax.bar(x, means, width, label=h, color=palette[k])
        ax.errorbar(x, means, yerr=[np.nan_to_num(lows), np.nan_to_num(highs)], fmt="none", ecolor="black",
                    capsize=3, lw=1)
    ax.set_xticks(np.arange(len(order)), order)
