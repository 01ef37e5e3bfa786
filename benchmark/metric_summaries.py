"""Summaries of a run's final metrics, as every summary quotes them: mean ± sd with its 95% t-interval per (method,
metric, split), epochs-to-event metrics as censored counts, and every method paired by seed against a baseline."""
from __future__ import annotations

import pandas as pd

from cvpdl.evaluation.stats import PairedTest, paired_test, summarize


def fmt_value(x: float, digits: int = 3) -> str:
    return "nan" if pd.isna(x) else f"{x:.{digits}f}"


def fmt_p(x: float) -> str:
    return "nan" if pd.isna(x) else f"{x:.3g}"


def final_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["epoch"].isna()]


def summary_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """mean, std, 95% t-interval and n per (method, metric, split) of the final metrics, in file order."""
    rows = []
    for (method, metric, split), group in final_metrics(frame).groupby(["method", "metric", "split"], sort=False):
        s = summarize(group["value"].tolist())
        rows.append({"method": method, "metric": metric, "split": split, "mean": s.mean, "std": s.std,
                     "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n})
    return pd.DataFrame(rows, columns=["method", "metric", "split", "mean", "std", "ci_low", "ci_high", "n"])


def summary_row(rows: pd.DataFrame, method: str, metric: str, split: str) -> pd.Series | None:
    hit = rows[(rows["method"] == method) & (rows["metric"] == metric) & (rows["split"] == split)]
    return None if hit.empty else hit.iloc[0]


def describe(rows: pd.DataFrame, method: str, metric: str, split: str) -> str:
    """"0.812 ± 0.010 [0.787, 0.837], n=3" — the way every number of a summary is quoted."""
    r = summary_row(rows, method, metric, split)
    if r is None or r["n"] == 0:
        return "not measured"
    if r["n"] == 1:
        return f"{fmt_value(r['mean'])}, n=1"
    return (f"{fmt_value(r['mean'])} ± {fmt_value(r['std'])} [{fmt_value(r['ci_low'])}, {fmt_value(r['ci_high'])}], "
            f"n={r['n']}")


def _horizon(frame: pd.DataFrame, method: str, seed: int) -> int | None:
    """The last epoch this (method, seed) ran: where a never-reached event is censored."""
    epochs = frame[(frame["method"] == method) & (frame["seed"] == seed) & frame["epoch"].notna()]["epoch"]
    return None if epochs.empty else int(epochs.max())


def describe_censored(frame: pd.DataFrame, method: str, metric: str, split: str) -> str:
    """"reached at epochs 3, 5 (2 of 3 seeds); not within 8 epochs on 1 of 3 seeds" for an epochs-to-event metric."""
    values = final_values(final_metrics(frame), method, metric, split)
    if values.empty:
        return "not measured"
    n = len(values)
    reached = values[values["value"].notna()]
    missed = values[values["value"].isna()]
    parts = []
    if len(reached):
        parts.append("reached at epoch " + ", ".join(f"{v:g}" for v in sorted(reached["value"]))
                     + f" ({len(reached)} of {n} seeds)")
    if len(missed):
        horizons = sorted({h for h in (_horizon(frame, method, s) for s in missed["seed"]) if h is not None})
        within = f"within {'/'.join(map(str, horizons))} epochs" if horizons else "within the run"
        parts.append(f">{'/'.join(map(str, horizons)) or '?'} epochs on {len(missed)} of {n} seeds (never {within})")
    return "; ".join(parts)


def final_values(finals: pd.DataFrame, method: str, metric: str, split: str) -> pd.DataFrame:
    return finals[(finals["method"] == method) & (finals["metric"] == metric) & (finals["split"] == split)]


def _paired(a: pd.DataFrame, b: pd.DataFrame) -> PairedTest | None:
    """Paired test of the values of ``a`` against ``b``, matched by seed (None when no seed is shared)."""
    pairs = a[["seed", "value"]].merge(b[["seed", "value"]], on="seed", suffixes=("", "_base"))
    if pairs.empty:
        return None
    return paired_test(pairs["value"].tolist(), pairs["value_base"].tolist())


def paired_rows(frame: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Every final (metric, split) of every method against the same of ``baseline``, paired by seed."""
    finals = final_metrics(frame)
    rows = []
    for (method, metric, split), group in finals.groupby(["method", "metric", "split"], sort=False):
        t = None if method == baseline else _paired(group, final_values(finals, baseline, metric, split))
        if t is not None:
            rows.append({"method": method, "metric": metric, "split": split, "diff": t.mean_diff,
                         "ci_low": t.ci_low, "ci_high": t.ci_high, "p": t.p_value, "n": t.n})
    return pd.DataFrame(rows, columns=["method", "metric", "split", "diff", "ci_low", "ci_high", "p", "n"])
