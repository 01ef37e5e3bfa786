"""The statistics of a suite's claims: summaries of the final metrics, paired comparisons, a Holm-adjusted family.

Suites import from here (and from ``registry`` and ``context``), never from the runner or the report internals.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from benchmark.registry import Section
from cvpdl.evaluation.stats import PairedTest, paired_test, summarize

ALPHA = 0.05  # a claim is significant when its Holm-adjusted p is below this
TARGET_POWER = 0.8
# Final metrics whose NaN means "the event did not happen within the run" (right-censored at the last epoch).
CENSORED_METRICS = frozenset({"epochs_to_target"})


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


@dataclass(frozen=True)
class Arm:
    """One side of a claim: one value per seed of (method, metric, split). ``epoch``: None for the final value;
    "first" / "last" for that seed's first / last per-epoch value; "mean" for its mean over the epochs."""

    method: str
    metric: str
    split: str
    epoch: str | None = None

    def values(self, frame: pd.DataFrame) -> pd.Series:
        rows = frame[(frame["method"] == self.method) & (frame["metric"] == self.metric)
                     & (frame["split"] == self.split)]
        if self.epoch is None:
            rows = rows[rows["epoch"].isna()]
            return rows.groupby("seed")["value"].first()
        rows = rows[rows["epoch"].notna() & rows["value"].notna()].sort_values(["seed", "epoch"])
        picks = {"first": lambda v: v.iloc[0], "last": lambda v: v.iloc[-1], "mean": lambda v: v.mean()}
        return rows.groupby("seed")["value"].agg(picks[self.epoch])


@dataclass(frozen=True)
class Claim:
    """One comparison a suite asserts: ``a`` against ``b``, paired by seed. Censored claims compare epochs to an
    event (NaN = not reached within the run) by a sign test on which side reached it first."""

    key: str
    text: str
    a: Arm
    b: Arm
    censored: bool = False


@dataclass(frozen=True)
class Tested:
    """A claim's test over seeds, with its Holm-adjusted p within the suite's family."""

    claim: Claim
    n: int
    diff: float  # mean of a - b over seeds (censored: wins - losses of a, "earlier" counting as a win)
    ci_low: float
    ci_high: float
    p: float
    p_holm: float
    seeds_needed: float  # seeds for 80% power at the observed effect and level (inf: no effect; nan: n/a)
    level: float = ALPHA  # the Holm step-down level this claim's raw p must beat
    wins: int = 0
    losses: int = 0

    @property
    def significant(self) -> bool:
        return bool(self.p_holm < ALPHA)

    @property
    def direction(self) -> str:
        """"higher" / "lower" (censored: "earlier" / "later") where Holm-adjusted p < 0.05."""
        if self.n < 2 or pd.isna(self.p):
            return "not testable" if self.n else "not measured"
        if not self.significant:
            return "no significant difference"
        if self.claim.censored:
            return "earlier" if self.diff > 0 else "later"
        return "higher" if self.diff > 0 else "lower"

    def underpowered(self) -> bool:
        """Not significant, and more seeds than were run would be needed for 80% power."""
        # n = 1 has no test and no effect size: nothing to say about power
        return self.n >= 2 and not self.significant and not math.isnan(self.seeds_needed) \
            and not (self.seeds_needed <= self.n)

    def power_note(self) -> str:
        if self.significant or self.n < 2:
            return ""
        if math.isinf(self.seeds_needed):
            return "no observed effect, so no number of seeds gives it power"
        if pd.isna(self.seeds_needed):
            return ""
        return (f"80% power at this effect size and its Holm level α={self.level:.2g} needs "
                f"≈{int(self.seeds_needed)} seeds")

    def line(self) -> str:
        """"Δ +0.123 [+0.050, +0.190], p=0.01, Holm p=0.04, n=3: higher" — how every claim is quoted."""
        if self.n == 0:
            return "not measured"
        c = self.claim
        if c.censored:
            ties = self.n - self.wins - self.losses
            text = (f"`{c.a.method}` earlier on {self.wins}, later on {self.losses}, tied on {ties} of {self.n} "
                    f"seeds (sign test)")
            if self.wins + self.losses == 0:
                return text + ": no seed separates them"
        elif self.n == 1:
            return f"Δ {self.diff:+.3f}, n=1 (one seed: no test)"
        else:
            text = f"Δ {self.diff:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"
        note = self.power_note()
        return (f"{text}, p={fmt_p(self.p)}, Holm p={fmt_p(self.p_holm)}, n={self.n}: {self.direction}"
                + (f" ({note})" if note else ""))


def _ttest_seeds_needed(diffs: np.ndarray, alpha: float) -> float:
    """Seeds for 80% power of a two-sided paired t-test at level ``alpha`` and the observed Cohen's d of ``diffs``."""
    mean, sd = abs(float(np.mean(diffs))), float(np.std(diffs, ddof=1))
    if mean == 0:
        return math.inf
    if sd == 0:  # identical non-zero differences: any two seeds give p = 0
        return 2.0
    # TTestPower.solve_power's root finder fails for large effects (answer near n = 2) and tiny ones, so scan n
    # with TTestPower.power instead: the same power function, the smallest n that reaches the target
    nobs = np.arange(2, 10_001)
    power = TTestPower().power(effect_size=mean / sd, nobs=nobs, alpha=alpha, alternative="two-sided")
    reached = np.flatnonzero(power >= TARGET_POWER)
    return float(nobs[reached[0]]) if len(reached) else math.inf


def _sign_test_seeds_needed(wins: int, losses: int, n: int, alpha: float) -> float:
    """Seeds for 80% power of the two-sided sign test at level ``alpha``, at the observed win and tie rates."""
    if wins == losses:
        return math.inf
    q, untied = max(wins, losses) / (wins + losses), (wins + losses) / n
    for m in range(1, 1001):
        k = np.arange(m + 1)  # two-sided exact binomial p at 1/2 (what stats.binomtest gives), vectorised over k
        p = np.minimum(1.0, 2 * np.minimum(stats.binom.cdf(k, m, 0.5), stats.binom.sf(k - 1, m, 0.5)))
        if stats.binom.pmf(k[p < alpha], m, q).sum() >= TARGET_POWER:
            return float(math.ceil(m / untied))
    return math.inf


def _test(frame: pd.DataFrame, claim: Claim) -> dict:
    a, b = claim.a.values(frame), claim.b.values(frame)
    seeds = sorted(set(a.index) & set(b.index))
    if claim.censored:
        def time(v):  # a never-reached event is later than any reached one
            return math.inf if pd.isna(v) else float(v)
        t = [(time(a[s]), time(b[s])) for s in seeds]
        wins, losses = sum(x < y for x, y in t), sum(x > y for x, y in t)
        p = float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
        p = p if len(seeds) >= 2 else math.nan
        needed = (lambda alpha: _sign_test_seeds_needed(wins, losses, len(seeds), alpha)) if seeds else None
        return {"n": len(seeds), "diff": float(wins - losses), "ci_low": math.nan, "ci_high": math.nan, "p": p,
                "wins": wins, "losses": losses}, needed
    pairs = [(a[s], b[s]) for s in seeds if not (pd.isna(a[s]) or pd.isna(b[s]))]
    if not pairs:
        return {"n": 0, "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}, None
    t = paired_test([x for x, _ in pairs], [y for _, y in pairs])
    diffs = np.array([x - y for x, y in pairs])
    needed = (lambda alpha: _ttest_seeds_needed(diffs, alpha)) if len(diffs) >= 2 else None
    return {"n": t.n, "diff": t.mean_diff, "ci_low": t.ci_low, "ci_high": t.ci_high, "p": t.p_value}, needed


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values; NaN entries (untestable claims) stay NaN and are not part of the family."""
    finite = [i for i, p in enumerate(p_values) if not pd.isna(p)]
    adjusted = [math.nan] * len(p_values)
    if finite:
        _, corrected, _, _ = multipletests([p_values[i] for i in finite], alpha=ALPHA, method="holm")
        for i, q in zip(finite, corrected):
            adjusted[i] = float(q)
    return adjusted


def evaluate_family(frame: pd.DataFrame, claims: list[Claim]) -> dict[str, Tested]:
    """Test every claim of a suite's family over seeds and Holm-adjust their p-values together."""
    if len({c.key for c in claims}) != len(claims):
        raise ValueError("claim keys must be unique within a family")
    raw = [_test(frame, c) for c in claims]
    adjusted = holm([r["p"] for r, _ in raw])
    # the level each claim's raw p faces in Holm's step-down (α / (m - rank)): the power target that matters
    finite = sorted((r["p"], i) for i, (r, _) in enumerate(raw) if not pd.isna(r["p"]))
    level = {i: ALPHA / (len(finite) - rank) for rank, (_, i) in enumerate(finite)}
    out = {}
    for i, (c, (r, needed), q) in enumerate(zip(claims, raw, adjusted)):
        seeds = needed(level[i]) if needed is not None and i in level and not q < ALPHA else math.nan
        out[c.key] = Tested(c, p_holm=q, seeds_needed=seeds, level=level.get(i, math.nan), **r)
    return out


@dataclass(frozen=True)
class SuiteReport:
    """A suite's report hook: its declared family of claims (all its p-values are Holm-adjusted together) and the
    sections that quote them. Called like a plain ``report_sections(frame, timings)``."""

    family: Callable[[pd.DataFrame], list[Claim]]
    sections: Callable[[pd.DataFrame, pd.DataFrame | None, dict[str, Tested]], list[Section]]

    def tested(self, frame: pd.DataFrame) -> dict[str, Tested]:
        return evaluate_family(frame, self.family(frame))

    def __call__(self, frame: pd.DataFrame, timings: pd.DataFrame | None) -> list[Section]:
        return self.sections(frame, timings, self.tested(frame))


def claims_table(tested: dict[str, Tested]) -> pd.DataFrame:
    return pd.DataFrame({
        "claim": [t.claim.text for t in tested.values()],
        "Δ (a − b)": [f"{t.wins}–{t.losses} wins" if t.claim.censored else fmt_value(t.diff) for t in tested.values()],
        "95% CI of Δ": ["sign test" if t.claim.censored else f"[{fmt_value(t.ci_low)}, {fmt_value(t.ci_high)}]"
                        for t in tested.values()],
        "p": [fmt_p(t.p) for t in tested.values()], "Holm p": [fmt_p(t.p_holm) for t in tested.values()],
        "n": [t.n for t in tested.values()], "verdict": [t.direction for t in tested.values()],
        "seeds for 80% power": ["" if t.significant or t.n < 2 else
                                ("∞" if math.isinf(t.seeds_needed) else f"{t.seeds_needed:.0f}")
                                for t in tested.values()]})
