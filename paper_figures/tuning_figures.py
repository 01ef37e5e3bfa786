"""Tuning sensitivity: the validation objective of every completed trial against each tuned parameter."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from paper_figures.style import plt, save


def sensitivity(trials: pd.DataFrame, objective: tuple[str, str], path: Path) -> Path:
    """One panel per ``param:*`` column of ``trials`` (one method's completed trials); the best trial in red."""
    params = [c for c in trials.columns if c.startswith("param:") and trials[c].notna().any()]
    figure, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3.0), squeeze=False, sharey=True)
    best = trials["value"].idxmax()
    for ax, column in zip(axes[0], params):
        values = trials[column]
        numeric = pd.api.types.is_numeric_dtype(values)
        x = values if numeric else values.astype(str)
        ax.scatter(x, trials["value"], s=18, color="0.35", label="trial")
        ax.scatter([x[best]], [trials.loc[best, "value"]], s=40, color="tab:red", label="best")
        if numeric and values.min() > 0 and values.max() / values.min() > 20:
            ax.set_xscale("log")
        ax.set_xlabel(column.removeprefix("param:"))
    axes[0][0].set_ylabel(f"{objective[0]} [{objective[1]}]")
    axes[0][0].legend(loc="best", fontsize="small")
    method = trials["method"].iloc[0]
    figure.suptitle(f"{method}: validation objective per trial ({len(trials)} trials)")
    return save(figure, path.with_suffix(""))
