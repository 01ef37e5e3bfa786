"""Tuning sensitivity: the validation objective of every completed trial against each tuned parameter, with the
seed noise of the objective, so that a difference between trials can be read against what a new seed alone moves."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from paper_figures.style import plt, save


def repeated_trial_std(trials: pd.DataFrame) -> float | None:
    """Pooled standard deviation of the objective over trials that share every parameter value (repeats differ only
    by chance), or None when no parameter setting was run twice."""
    params = [c for c in trials.columns if c.startswith("param:")]
    finite = trials[np.isfinite(trials["value"].astype(float))]
    groups = finite.groupby(params, dropna=False)["value"] if params else []
    dof = sum(len(g) - 1 for _, g in groups)
    if not dof:
        return None
    return math.sqrt(sum(((g - g.mean()) ** 2).sum() for _, g in groups) / dof)


def _readable_ticks(ax, values: pd.Series) -> None:
    # at most 4 ticks with 3 significant digits: learning rates such as 0.000517634 no longer run together
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    if ax.get_xscale() == "log":
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 3.0), numticks=4))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    else:
        integral = bool(np.all(np.isclose(values, np.round(values))))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3, integer=integral))


def sensitivity(trials: pd.DataFrame, objective: tuple[str, str], path: Path, seed_noise: float | None = None) -> Path:
    """``sensitivity_figure`` saved as ``path`` (PNG) and PDF."""
    return save(sensitivity_figure(trials, objective, seed_noise), path.with_suffix(""))


def sensitivity_figure(trials: pd.DataFrame, objective: tuple[str, str], seed_noise: float | None = None):
    """One panel per ``param:*`` column of ``trials`` (one method's completed trials; each point is labelled with
    its trial number); the best trial in red. The grey band is the best value ± ``seed_noise``, the standard
    deviation over seeds of the objective at fixed parameters, when the caller has it (e.g. from the suite's
    metrics.csv); otherwise the pooled standard deviation of repeated trials, when some parameters were run twice."""
    method = trials["method"].iloc[0] if len(trials) else "?"
    # a diverged trial scores -inf: counted in the title, not drawn
    diverged = int(np.isneginf(trials["value"].astype(float)).sum())
    trials = trials[np.isfinite(trials["value"].astype(float))]
    params = [c for c in trials.columns if c.startswith("param:") and trials[c].notna().any()]
    figure, axes = plt.subplots(1, max(1, len(params)), figsize=(3.6 * max(1, len(params)), 3.3), squeeze=False,
                                sharey=True, layout="constrained")
    noise, source = seed_noise, "std over seeds at fixed parameters"
    if noise is None or not math.isfinite(noise):
        noise, source = repeated_trial_std(trials), "pooled std of repeated trials"
    if trials.empty or not params:
        axes[0][0].text(0.5, 0.5, "no completed trial with a value", ha="center", va="center",
                        transform=axes[0][0].transAxes)
        axes[0][0].set_axis_off()
    else:
        best = trials["value"].idxmax()
        top = trials.loc[best, "value"]
        for ax, column in zip(axes[0], params):
            values = trials[column]
            numeric = pd.api.types.is_numeric_dtype(values)
            x = values if numeric else values.astype(str)
            if noise is not None:
                ax.axhspan(top - noise, top + noise, color="0.85", zorder=0, label=f"best ± {noise:.3g}\n({source})")
            ax.scatter(x, trials["value"], s=18, color="0.35", label="trial", zorder=2)
            ax.scatter([x[best]], [top], s=40, color="tab:red", label="best", zorder=3)
            for number, xi, yi in zip(trials["trial"], x, trials["value"]):
                if pd.notna(xi):
                    ax.annotate(str(number), (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize=7)
            if numeric and values.min() > 0 and values.max() / values.min() > 20:
                ax.set_xscale("log")
            if numeric:
                _readable_ticks(ax, values.dropna())
            ax.set_xlabel(column.removeprefix("param:"))
        figure.legend(*axes[0][0].get_legend_handles_labels(), loc="outside right upper", fontsize="small",
                      frameon=False)
    axes[0][0].set_ylabel(f"{objective[0]} [{objective[1]}]")
    notes = (f", {diverged} diverged" if diverged else "") + ("" if noise is not None else "; no seed-noise estimate")
    figure.suptitle(f"{method}: validation objective per trial ({len(trials)} trials{notes})")
    return figure
