"""Per-seed marks. Every claim of the report is a paired comparison over seeds, so figures show each seed: a dot and
95% t-interval per method with every seed's value (a thin line joins one seed across methods), and per-seed paired
differences against the baseline that isolates a method's idea."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from cvpdl.evaluation.stats import summarize
from paper_figures.style import MIN_SEEDS_FOR_INTERVAL, final

SEED_SPREAD = 0.24  # width over which a category's seeds are spread, so that equal values stay visible


def seed_colors(seeds) -> dict:
    """One colour per seed, the same in every panel of a figure."""
    ordered = sorted(set(seeds))
    return dict(zip(ordered, sns.color_palette("husl", n_colors=max(1, len(ordered)))))


def _offset(seeds: list, seed) -> float:
    # a fixed place per seed: a seed sits at the same offset in every column, so its line reads left to right
    return 0.0 if len(seeds) < 2 else SEED_SPREAD * (seeds.index(seed) / (len(seeds) - 1) - 0.5)


def _interval(values, bounds: tuple[float, float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds, clipped to ``bounds`` (zero width below ``MIN_SEEDS_FOR_INTERVAL``)."""
    s = summarize(values)
    low, high = (s.mean, s.mean) if s.n < MIN_SEEDS_FOR_INTERVAL else (s.ci_low, s.ci_high)
    low, high = np.clip([low, high], *bounds)
    return s.mean, float(low), float(high)


def dot_interval(ax, frame: pd.DataFrame, order: list[str], colors: dict,
                 bounds: tuple[float, float] = (-math.inf, math.inf)) -> None:
    """``frame`` has one row per seed with columns ``method``, ``seed``, ``value``: per category of ``order`` every
    seed's value (joined across categories, one line per seed), and the mean with its 95% t-interval in black."""
    seeds = sorted(colors)
    for seed in seeds:
        rows = frame[frame["seed"] == seed].set_index("method")["value"]
        x = [i + _offset(seeds, seed) for i, m in enumerate(order)]
        y = [rows.get(m, math.nan) for m in order]
        ax.plot(x, y, color=colors[seed], lw=0.8, alpha=0.45, zorder=1)
        ax.scatter(x, y, color=colors[seed], s=14, zorder=2, label=f"seed {seed}")
    for i, method in enumerate(order):
        mean, low, high = _interval(frame.loc[frame["method"] == method, "value"].tolist(), bounds)
        if not math.isnan(mean):
            ax.errorbar([i], [mean], yerr=[[mean - low], [high - mean]], fmt="o", color="black", ms=6, capsize=4,
                        lw=1.6, zorder=3)
    ax.set_xticks(np.arange(len(order)), order)
    ax.set_xlim(-0.5, len(order) - 0.5)


def paired_differences(frame: pd.DataFrame, method: str, baseline: str, keys=("seed",)) -> pd.DataFrame:
    """``method`` − ``baseline`` per seed (and per the other ``keys``), only where both have a value."""
    keys = list(keys)
    a = frame[frame["method"] == method].set_index(keys)["value"]
    b = frame[frame["method"] == baseline].set_index(keys)["value"]
    diff = (a - b).dropna()
    return diff.rename("value").reset_index()


def difference_panel(ax, differences: dict[str, pd.DataFrame], colors: dict,
                     bounds: tuple[float, float] = (-math.inf, math.inf)) -> None:
    """One column per label of ``differences`` (per-seed frames with ``seed`` and ``value``): each seed's paired
    difference, their mean and 95% t-interval (the paired t-test's interval), a zero line, and how many seeds lie
    above zero."""
    labels = list(differences)
    seeds = sorted(colors)
    ax.axhline(0.0, color="0.3", lw=1, ls="--", zorder=0)
    for i, label in enumerate(labels):
        d = differences[label]
        ax.scatter([i + _offset(seeds, s) for s in d["seed"]], d["value"], color=[colors[s] for s in d["seed"]],
                   s=14, zorder=2)
        mean, low, high = _interval(d["value"].tolist(), bounds)
        if not math.isnan(mean):
            ax.errorbar([i], [mean], yerr=[[mean - low], [high - mean]], fmt="D", color="black", ms=5, capsize=4,
                        lw=1.6, zorder=3)
        counts = f"{int((d['value'] > 0).sum())}↑ {int((d['value'] < 0).sum())}↓ of {len(d)}"
        ax.annotate(counts, (i, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)


def paired_differences_figure(metrics: pd.DataFrame, comparisons: list[tuple[str, str]],
                              columns: list[tuple[str, str, str]], title: str):
    """One panel per ``(method, baseline)`` of ``comparisons`` (each on its own scale, so a small effect is not
    flattened by a large one), one column per final ``(metric, split, label)`` of ``columns`` (metrics in [0, 1]):
    per-seed ``method − baseline``. None when nothing pairs."""
    finals = {}
    for metric, split, _ in columns:
        frame = final(metrics, metric)
        finals[metric, split] = frame[frame["split"] == split]
    drawn = []
    for method, baseline in comparisons:
        diffs = {label: paired_differences(finals[metric, split], method, baseline) for metric, split, label in columns}
        diffs = {label: d for label, d in diffs.items() if len(d)}
        if diffs:
            drawn.append((f"{method} − {baseline}", diffs))
    if not drawn:
        return None
    colors = seed_colors(pd.concat([d for _, diffs in drawn for d in diffs.values()])["seed"])
    fig, axes = plt.subplots(len(drawn), 1, figsize=(1.25 * len(columns) + 2.6, 3.0 * len(drawn) + 0.3),
                             squeeze=False, layout="constrained")
    for ax, (name, diffs) in zip(axes[:, 0], drawn):
        difference_panel(ax, diffs, colors, bounds=(-1.0, 1.0))
        ax.set_title(name, pad=14)
        ax.set_ylabel("difference, same seed")
        ax.tick_params(axis="x", labelsize=8)
    fig.legend(handles=legend_handles(colors), loc="outside right center", frameon=False)
    fig.suptitle(title)
    return fig


def legend_handles(colors: dict) -> list:
    """Legend entries for the seeds' colours and the black mean with its interval."""
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=f"seed {s}") for s, c in colors.items()]
    return handles + [plt.Line2D([], [], ls="-", marker="D", color="black", label="mean, 95% t-interval")]
