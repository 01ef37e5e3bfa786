"""How a claim's verdict moves with the knob that may drive it: the table ``benchmark sensitivity`` writes
(``sensitivity.csv``), read back for summaries, figures and REPORT.md's "depends on <knob>"."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

COLUMNS = ["claim", "text", "knob", "value", "default", "n", "diff", "ci_low", "ci_high", "p", "direction",
           "config_hash"]


def read_sensitivity(suite_dir: Path, run: dict) -> pd.DataFrame | None:
    """``sensitivity.csv`` of a run folder, where it was measured on this run's config (else None: stale)."""
    path = Path(suite_dir) / "sensitivity.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    if table.empty or set(table["config_hash"]) != {run.get("config_hash")}:
        return None
    return table


def sensitivity_lines(table: pd.DataFrame | None) -> list[str]:
    """One line per (claim, knob): Δ [95% CI] and the verdict at each value, the default marked."""
    if table is None:
        return []
    lines = []
    for (claim, knob), rows in table.groupby(["claim", "knob"], sort=False):
        cells = [f"{knob}={r.value:g}{' (default)' if r.default else ''}: Δ {r.diff:+.4f} "
                 f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}], p={r.p:.3g}, {r.direction}" for r in rows.itertuples()]
        lines.append(f"{rows['text'].iloc[0]}, n={rows['n'].min()}: " + "; ".join(cells)
                     + (f" — **depends on {knob}**" if knob in depends_on(table, claim) else ""))
    return lines


def depends_on(table: pd.DataFrame | None, claim: str, headline: str | None = None) -> list[str]:
    """The knobs at one of whose other values the claim is decided (higher or lower, its test unadjusted) otherwise
    than at the default: than the ``headline`` direction the report gives it, or the default value's own."""
    if table is None:
        return []
    knobs = []
    for knob, rows in table[table["claim"] == claim].groupby("knob", sort=False):
        reference = headline or next(iter(rows.loc[rows["default"], "direction"]), None)
        swept = {d for d in rows.loc[~rows["default"], "direction"] if d in ("higher", "lower")}
        if swept - {reference}:
            knobs.append(knob)
    return knobs
