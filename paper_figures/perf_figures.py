"""Figures of ``python -m benchmark perf``, drawn from its ``perf.csv`` frame (columns section, item, value, unit,
note, and where a row belongs to one: curve, series, x, x_unit, suite, quantity)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from paper_figures.style import plt, sns


def cost_curves(frame: pd.DataFrame) -> plt.Figure | None:
    """One log-log panel per cost curve (rows of section ``curves``), a line per series with its fitted slope (rows
    of section ``slopes``) in the legend, and a dotted slope-1 line (linear growth) through the first point."""
    if "curve" not in frame:
        return None
    points = frame[frame["section"] == "curves"]
    if points.empty:
        return None
    slopes = frame[frame["section"] == "slopes"].set_index(["curve", "series"])["value"]
    curves = list(dict.fromkeys(points["curve"]))
    figure, axes = plt.subplots(1, len(curves), figsize=(4.4 * len(curves), 3.8), squeeze=False)
    for ax, curve in zip(axes[0], curves):
        part = points[points["curve"] == curve]
        labels = {s: f"{s} (slope {slopes.get((curve, s), float('nan')):.2f})" for s in part["series"].unique()}
        sns.lineplot(data=part.assign(series=part["series"].map(labels)), x="x", y="value", hue="series",
                     marker="o", ax=ax)
        _linear_reference(ax, part)
        ax.set(xscale="log", yscale="log", xlabel=part["x_unit"].iloc[0], ylabel=part["unit"].iloc[0], title=curve)
        # plain numbers at the measured sizes and evenly across the axis, not 10^k mantissas (a panel can span
        # less than a decade, where a log axis has no major tick)
        ax.set_xticks(sorted(part["x"].unique()))
        ax.set_yticks(np.geomspace(*ax.get_ylim(), 5)[1:-1])
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FormatStrFormatter("%.3g"))
            axis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize="small", title=None)
    return figure


def _linear_reference(ax, part: pd.DataFrame) -> None:
    first = part.sort_values("x").iloc[0]
    x = np.array([part["x"].min(), part["x"].max()])
    ax.plot(x, first["value"] * x / x[0], ls=":", color="0.5", label="slope 1 (linear)")


def suite_costs(frame: pd.DataFrame) -> plt.Figure | None:
    """One bar panel per per-suite quantity that has a measured value (tune trials per hour, peak memory)."""
    if "quantity" not in frame:
        return None
    rows = frame[frame["quantity"].notna() & frame["value"].notna()]
    if rows.empty:
        return None
    quantities = list(dict.fromkeys(rows["quantity"]))
    figure, axes = plt.subplots(1, len(quantities), figsize=(4.0 * len(quantities), 3.4), squeeze=False)
    for ax, quantity in zip(axes[0], quantities):
        part = rows[rows["quantity"] == quantity]
        sns.barplot(data=part, x="suite", y="value", hue="suite", legend=False, ax=ax)
        ax.set(xlabel="suite", ylabel=part["unit"].iloc[0], title=quantity)
    return figure


# perf's figures by file name (saved as .png and .pdf beside perf.md)
FIGURES = {"cost_curves": cost_curves, "suite_costs": suite_costs}
