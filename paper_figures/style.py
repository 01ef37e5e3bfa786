"""One seaborn style for every figure, and the inputs figures are drawn from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)
plt.rcParams.update({"savefig.dpi": 130, "figure.dpi": 100, "svg.hashsalt": "cvpdl", "pdf.compression": 6})


@dataclass
class SuiteInputs:
    """What a figure is drawn from, loaded by the caller: a suite's ``metrics.csv`` (long format, ``epoch`` an
    ``Int64`` column, empty for final metrics) and its ``tables/<name>.csv`` by name."""

    metrics: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    smoke: bool = False  # a quick-profile run: every figure says its numbers are not results


MIN_SEEDS_FOR_INTERVAL = 3  # below this a t-interval is too wide and too unstable to draw: means only
SMOKE_NOTE = "SMOKE TEST (quick profile): these numbers are not results"


def mark_smoke(figure: plt.Figure) -> None:
    figure.suptitle(SMOKE_NOTE, color="firebrick", fontsize=11, fontweight="bold", y=1.04)


def method_order(frame: pd.DataFrame) -> list[str]:
    """Methods in the order of their rows: metrics.csv is written in registry order, the only list of methods."""
    return list(dict.fromkeys(frame["method"]))


def final(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    return metrics[metrics["epoch"].isna() & (metrics["metric"] == metric)]


def t_interval(values) -> tuple[float, float]:
    """seaborn ``errorbar=``: the 95% t-interval of the mean over seeds (a zero-width band below
    ``MIN_SEEDS_FOR_INTERVAL`` seeds)."""
    from cvpdl.evaluation.stats import summarize

    s = summarize(list(values))
    return (s.mean, s.mean) if s.n < MIN_SEEDS_FOR_INTERVAL else (s.ci_low, s.ci_high)


def bounded_t_interval(low: float, high: float):
    """seaborn ``errorbar=`` for a metric bounded to ``[low, high]``: the 95% t-interval clipped to the range. With
    few seeds the symmetric t-interval of a bounded metric can leave its range; clipping keeps the summary.md
    interval wherever it is meaningful (captions and axis labels say "clipped")."""

    def interval(values) -> tuple[float, float]:
        return tuple(np.clip(t_interval(values), low, high).tolist())

    return interval


def save(figure: plt.Figure, stem: Path) -> Path:
    """PNG (shown in the README) and PDF, with no timestamps so reruns compare equal in content."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    if figure.get_layout_engine() is None:  # figures with a colour bar bring their own (constrained) layout
        figure.tight_layout()
    png = stem.with_suffix(".png")
    # bbox_inches="tight": the canvas grows to hold every label and a legend placed outside the axes
    figure.savefig(png, metadata={"Software": None}, bbox_inches="tight")
    figure.savefig(stem.with_suffix(".pdf"), metadata={"CreationDate": None, "Producer": None, "Creator": None},
                   bbox_inches="tight")
    plt.close(figure)
    return png
