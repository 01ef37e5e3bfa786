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
from statsmodels.stats.weightstats import ttost_paired

from benchmark.registry import Section
from cvpdl.evaluation.stats import PairedTest, paired_test, summarize

ALPHA = 0.05  # a claim is significant when its Holm-adjusted p is below this
TARGET_POWER = 0.8
MAX_PRIMARY = 4  # primary claims per suite: the question's answer
ROLES = ("control", "primary", "secondary")  # each role is its own Holm family
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
    """One comparison a suite asserts: ``a`` against ``b`` paired by seed, or against a constant ``b`` (a level the
    mean over seeds must reach: a positive control's floor, decided by the mean, not by a test).

    ``role``: "control" (an effect everyone agrees on: the testbed must show it before its nulls mean anything),
    "primary" (the question's answer, at most ``MAX_PRIMARY``) or "secondary" (exploratory); each role is its own
    Holm family. ``expected``: the direction the literature reports. ``delta``: the smallest effect of interest, in
    the metric's unit: the margin of the equivalence test (TOST). Censored claims compare epochs to an event
    (NaN = not reached within the run) by a sign test on which side reached it first."""

    key: str
    text: str
    a: Arm
    b: Arm | float
    censored: bool = False
    role: str = "secondary"
    expected: str | None = None
    delta: float | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"claim {self.key!r}: role must be one of {ROLES}")
        if self.expected not in (None, "higher", "lower", "earlier", "later"):
            raise ValueError(f"claim {self.key!r}: expected must be higher, lower, earlier or later")

    @property
    def is_level(self) -> bool:
        return not isinstance(self.b, Arm)


DIRECTIONS = ("higher", "lower", "earlier", "later")


@dataclass(frozen=True)
class Tested:
    """A claim's tests over seeds, with Holm-adjusted p-values within its role's family (difference and
    equivalence tests adjusted together)."""

    claim: Claim
    n: int
    diff: float  # mean of a - b over seeds (censored: wins - losses of a, "earlier" counting as a win)
    ci_low: float
    ci_high: float
    p: float  # two-sided difference test; NaN where there is none (n < 2, a level, a test not used at this n)
    p_holm: float
    seeds_needed: float  # the difference test's seeds for 80% power at the observed effect and its Holm level
    level: float = ALPHA  # the Holm step-down level this claim's raw p must beat
    wins: int = 0
    losses: int = 0
    higher_seeds: int = 0  # seeds on which a > b (censored: a earlier)
    lower_seeds: int = 0
    p_tost: float = math.nan  # paired TOST against ±delta (NaN: no delta declared)
    p_tost_holm: float = math.nan
    seeds_equivalence: float = math.nan  # the TOST's seeds for 80% power at the observed effect and its Holm level
    min_p: float = 0.0  # the smallest p the test can reach at this n (the sign test: 2 · 0.5^n)

    @property
    def used(self) -> bool:
        """A test that cannot reach p < 0.05 at this n is not used (its verdict says so)."""
        return self.min_p < ALPHA

    @property
    def significant(self) -> bool:
        return bool(self.p_holm < ALPHA)

    @property
    def direction(self) -> str:
        """The verdict: "higher" / "lower" (censored: "earlier" / "later") where the Holm-adjusted difference test
        rejects, "equivalent" where the Holm-adjusted TOST does, otherwise "inconclusive"; a level claim is
        "reached" / "not reached" by its mean."""
        if self.n == 0:
            return "not measured"
        if self.claim.is_level:
            return "reached" if self.diff >= 0 else "not reached"
        if self.n < 2:
            return "not testable"
        if not self.used:
            return "not used"
        if self.significant:
            if self.claim.censored:
                return "earlier" if self.diff > 0 else "later"
            return "higher" if self.diff > 0 else "lower"
        if self.p_tost_holm < ALPHA:
            return "equivalent"
        return "inconclusive"

    @property
    def holds(self) -> bool:
        """A control holds: its level reached, or its difference significant in the expected direction."""
        return self.direction == ("reached" if self.claim.is_level else self.claim.expected)

    @property
    def seeds_for_decision(self) -> float:
        """The fewer of the seeds the difference test and the equivalence test need for 80% power (NaN: n/a)."""
        options = [s for s in (self.seeds_needed, self.seeds_equivalence) if not math.isnan(s)]
        return min(options) if options else math.nan

    def underpowered(self) -> bool:
        """Inconclusive, and more seeds than were run would be needed for 80% power."""
        return self.direction == "inconclusive" and not self.seeds_for_decision <= self.n

    def seed_directions(self) -> str:
        """"`a` higher on 4 of 5 seeds" — the direction seed by seed, significant or not."""
        if self.n < 2 or self.claim.censored:
            return ""
        if self.higher_seeds >= self.lower_seeds:
            return f"higher on {self.higher_seeds} of {self.n} seeds"
        return f"lower on {self.lower_seeds} of {self.n} seeds"

    def verdict(self) -> str:
        """The direction with what a reader needs to weigh it: the margin of an equivalence, the seeds a decision
        needs, why a test was not used."""
        d = self.direction
        if d == "equivalent":
            return f"equivalent within ±{self.claim.delta:g}"
        if d == "not used":
            return (f"not used: the sign test's smallest attainable p at n={self.n} is {fmt_p(self.min_p)} "
                    f"(≥ {ALPHA:g})")
        if d in ("reached", "not reached"):
            return f"the mean {'reaches' if d == 'reached' else 'stays below'} {self.claim.b:g}"
        if d != "inconclusive":
            return d
        seeds = self.seeds_for_decision
        if math.isinf(seeds) or math.isnan(seeds):
            return "inconclusive (no observed effect, and no equivalence margin it could meet)" \
                if math.isinf(seeds) else "inconclusive"
        which = "difference" if seeds == self.seeds_needed else f"equivalence within ±{self.claim.delta:g}"
        return f"inconclusive (a decision needs ≈{seeds:.0f} seeds: 80% power of the {which} test)"

    def line(self) -> str:
        """"Δ +0.123 [+0.050, +0.190], p=0.01, Holm p=0.04, n=3, higher on 3 of 3 seeds: higher" — how every claim
        is quoted."""
        if self.n == 0:
            return "not measured"
        c = self.claim
        if c.is_level:
            return (f"mean {self.diff + c.b:.3f} [{self.ci_low + c.b:.3f}, {self.ci_high + c.b:.3f}] against the level "
                    f"{c.b:g}, n={self.n}: {self.verdict()}")
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
        tests = f"p={fmt_p(self.p)}, Holm p={fmt_p(self.p_holm)}" if self.used else ""
        if not math.isnan(self.p_tost) and self.direction in ("equivalent", "inconclusive"):
            tests += f", equivalence ±{c.delta:g}: TOST Holm p={fmt_p(self.p_tost_holm)}"
        seeds = self.seed_directions()
        return (f"{text}, {tests + ', ' if tests else ''}n={self.n}{', ' + seeds if seeds else ''}: {self.verdict()}")


def brief_line(t: Tested) -> str:
    """"Δ +0.440 [+0.270, +0.610], Holm p=0.0139, higher on 5 of 5 seeds: higher" — the first table's evidence."""
    if t.n < 2 or t.claim.is_level or t.claim.censored:
        return t.line()
    tests = f"Holm p={fmt_p(t.p_holm)}"
    if t.direction in ("equivalent", "inconclusive") and not math.isnan(t.p_tost):
        tests += f", TOST ±{t.claim.delta:g} Holm p={fmt_p(t.p_tost_holm)}"
    return (f"Δ {t.diff:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}], {tests}, n={t.n}, {t.seed_directions()}: "
            f"{t.verdict()}")


def _ttest_power(effect: float, nobs: np.ndarray, alpha: float) -> np.ndarray:
    """Power of the two-sided paired t-test at Cohen's d ``effect``: P(T > c) + P(T < −c), T noncentral t with
    n − 1 degrees of freedom and noncentrality d √n. Both tails as upper tails (P(T < −c) = P(T' > c) with the
    noncentrality negated): scipy's ``nct.cdf`` far in a tail returns NaN for many n (so does statsmodels'
    ``TTestPower().power``, built on it), ``nct.sf`` does not."""
    df, nc = nobs - 1, abs(effect) * np.sqrt(nobs)
    crit = stats.t.isf(alpha / 2, df)
    return stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc)


def _tost_power(mean: float, sd: float, delta: float, nobs: np.ndarray, alpha: float) -> np.ndarray:
    """A lower bound of the paired TOST's power at true mean ``mean`` and sd ``sd``: each one-sided test at
    ``alpha`` rejects with P(T₊ > c) and P(T₋ < −c), and both do with at least their sum − 1."""
    df, se = nobs - 1, sd / np.sqrt(nobs)
    crit = stats.t.isf(alpha, df)
    both = stats.nct.sf(crit, df, (mean + delta) / se) + stats.nct.sf(crit, df, (delta - mean) / se) - 1
    return np.maximum(both, 0.0)


MAX_SEEDS = 10_000  # the largest number of seeds a power search considers


def _smallest_n(power: Callable[[np.ndarray], np.ndarray]) -> float:
    """The smallest n in [2, MAX_SEEDS] whose power reaches the target (inf: none), by bisection: both power
    functions grow with n."""
    lo, hi = 2, MAX_SEEDS
    if power(np.array([hi]))[0] < TARGET_POWER:
        return math.inf
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power(np.array([mid]))[0] >= TARGET_POWER else (mid + 1, hi)
    return float(lo)


def _ttest_seeds_needed(diffs: np.ndarray, alpha: float) -> float:
    """Seeds for 80% power of a two-sided paired t-test at level ``alpha`` and the observed Cohen's d of ``diffs``."""
    mean, sd = abs(float(np.mean(diffs))), float(np.std(diffs, ddof=1))
    if mean == 0:
        return math.inf
    if sd == 0:  # identical non-zero differences: any two seeds give p = 0
        return 2.0
    return _smallest_n(lambda nobs: _ttest_power(mean / sd, nobs, alpha))


def _tost_seeds_needed(diffs: np.ndarray, delta: float, alpha: float) -> float:
    """Seeds for 80% power of the paired TOST within ±``delta`` at level ``alpha``, at the observed mean and sd."""
    mean, sd = abs(float(np.mean(diffs))), float(np.std(diffs, ddof=1))
    if mean >= delta:  # the observed effect is outside the margin: no number of seeds shows equivalence
        return math.inf
    if sd == 0:
        return 2.0
    return _smallest_n(lambda nobs: _tost_power(mean, sd, delta, nobs, alpha))


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


def tost_paired(a: np.ndarray, b: np.ndarray, delta: float) -> float:
    """p of the paired two one-sided tests that the mean of a − b lies within ±``delta`` (statsmodels)."""
    diffs = a - b
    if np.std(diffs) == 0:  # no spread: t is ±inf, statsmodels divides by zero
        return 0.0 if abs(float(np.mean(diffs))) < delta else 1.0
    return float(ttost_paired(a, b, -delta, delta)[0])


def _test(frame: pd.DataFrame, claim: Claim) -> tuple[dict, Callable | None, Callable | None]:
    """The raw tests of one claim: its numbers, and the seeds-for-power functions of its difference and
    equivalence tests (of the Holm level they will face)."""
    a = claim.a.values(frame)
    b = pd.Series(claim.b, index=a.index) if claim.is_level else claim.b.values(frame)
    seeds = sorted(set(a.index) & set(b.index))
    if claim.censored:
        def time(v):  # a never-reached event is later than any reached one
            return math.inf if pd.isna(v) else float(v)
        t = [(time(a[s]), time(b[s])) for s in seeds]
        wins, losses = sum(x < y for x, y in t), sum(x > y for x, y in t)
        min_p = 2 * 0.5 ** len(seeds) if seeds else 1.0  # every seed won: the sign test's smallest two-sided p
        p = float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
        p = p if len(seeds) >= 2 and min_p < ALPHA else math.nan
        needed = (lambda alpha: _sign_test_seeds_needed(wins, losses, len(seeds), alpha)) if seeds else None
        return {"n": len(seeds), "diff": float(wins - losses), "ci_low": math.nan, "ci_high": math.nan, "p": p,
                "wins": wins, "losses": losses, "higher_seeds": wins, "lower_seeds": losses, "min_p": min_p}, \
            needed, None
    pairs = [(a[s], b[s]) for s in seeds if not (pd.isna(a[s]) or pd.isna(b[s]))]
    if not pairs:
        return {"n": 0, "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}, None, None
    x, y = np.array([v for v, _ in pairs], dtype=float), np.array([v for _, v in pairs], dtype=float)
    t = paired_test(x.tolist(), y.tolist())
    diffs = x - y
    out = {"n": t.n, "diff": t.mean_diff, "ci_low": t.ci_low, "ci_high": t.ci_high,
           "p": math.nan if claim.is_level else t.p_value,
           "higher_seeds": int((diffs > 0).sum()), "lower_seeds": int((diffs < 0).sum())}
    if claim.is_level or len(diffs) < 2:
        return out, None, None
    equivalence = None
    if claim.delta is not None:
        out["p_tost"] = tost_paired(x, y, claim.delta)
        equivalence = lambda alpha: _tost_seeds_needed(diffs, claim.delta, alpha)  # noqa: E731
    return out, (lambda alpha: _ttest_seeds_needed(diffs, alpha)), equivalence


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values; NaN entries (untestable claims) stay NaN and are not part of the family."""
    finite = [i for i, p in enumerate(p_values) if not pd.isna(p)]
    adjusted = [math.nan] * len(p_values)
    if finite:
        _, corrected, _, _ = multipletests([p_values[i] for i in finite], alpha=ALPHA, method="holm")
        for i, q in zip(finite, corrected):
            adjusted[i] = float(q)
    return adjusted


def holm_levels(p_values: list[float]) -> list[float]:
    """The level each raw p faces in Holm's step-down, α / (hypotheses not yet rejected before it): the power target
    that matters. A NaN p (no test at this n) faces the family's strictest level, α / (its size + 1)."""
    finite = sorted((p, i) for i, p in enumerate(p_values) if not pd.isna(p))
    levels = [ALPHA / (len(finite) + 1)] * len(p_values)
    for rank, (_, i) in enumerate(finite):
        levels[i] = ALPHA / (len(finite) - rank)
    return levels


def evaluate_family(frame: pd.DataFrame, claims: list[Claim]) -> dict[str, Tested]:
    """Test every claim of a suite over seeds. Each role (controls, primary, secondary) is one Holm family: the
    difference tests and the equivalence tests of its claims adjusted together."""
    if len({c.key for c in claims}) != len(claims):
        raise ValueError("claim keys must be unique within a family")
    if sum(c.role == "primary" for c in claims) > MAX_PRIMARY:
        raise ValueError(f"a suite declares at most {MAX_PRIMARY} primary claims")
    raw = [_test(frame, c) for c in claims]
    out = {}
    for role in ROLES:
        members = [i for i, c in enumerate(claims) if c.role == role]
        # hypotheses of the family: (claim index, "p" or "p_tost")
        hypotheses = [(i, key) for key in ("p", "p_tost") for i in members
                      if key == "p" or claims[i].delta is not None]
        p_values = [raw[i][0].get(key, math.nan) for i, key in hypotheses]
        adjusted = dict(zip(hypotheses, holm(p_values)))
        levels = dict(zip(hypotheses, holm_levels(p_values)))
        for i in members:
            r, needed, equivalence = raw[i]
            level, tost_level = levels[(i, "p")], levels.get((i, "p_tost"), math.nan)
            out[claims[i].key] = Tested(
                claims[i], p_holm=adjusted[(i, "p")], p_tost_holm=adjusted.get((i, "p_tost"), math.nan),
                seeds_needed=needed(level) if needed is not None else math.nan,
                seeds_equivalence=equivalence(tost_level) if equivalence is not None else math.nan,
                level=level, **r)
    return {c.key: out[c.key] for c in claims}


@dataclass(frozen=True)
class Finding:
    """One row of REPORT.md's first table: a paper's claim and this testbed's verdict on it."""

    question: str  # the heading of the report section that answers it (the row links there)
    claim: str  # what the paper claims, in a few words
    verdict: str  # reproduced / contradicted / equivalent within ±δ / inconclusive / untestable here (why)
    evidence: str = ""  # the numbers behind the verdict


def paper_verdict(t: Tested | None) -> str:
    """A tested claim against the direction the paper reports."""
    if t is None or t.n == 0:
        return "untestable here: not measured in this run"
    d = t.direction
    if d in ("reached", "not reached"):
        return "reproduced" if d == "reached" else "contradicted"
    if d == t.claim.expected:
        return "reproduced"
    if d in DIRECTIONS:
        return "contradicted"
    if d == "equivalent":
        return f"equivalent within ±{t.claim.delta:g}"
    return "inconclusive" + (f" ({d})" if d != "inconclusive" else "")


def finding(question: str, claim: str, t: Tested | None, extra: str = "") -> Finding:
    """A row of the first table from one tested claim: its verdict against the paper and its numbers."""
    evidence = "" if t is None else f"{t.claim.text}: {brief_line(t)}"
    return Finding(question, claim, paper_verdict(t), evidence + (f"; {extra}" if extra else ""))


@dataclass(frozen=True)
class SuiteReport:
    """A suite's report hook: its declared claims (controls, at most ``MAX_PRIMARY`` primary, secondary), the
    sections that quote them and the rows it adds to REPORT.md's first table. Called like a plain
    ``report_sections(frame, timings)``."""

    family: Callable[[pd.DataFrame], list[Claim]]
    sections: Callable[[pd.DataFrame, pd.DataFrame | None, dict[str, Tested]], list[Section]]
    findings: Callable[[pd.DataFrame, dict[str, Tested]], list[Finding]]

    def tested(self, frame: pd.DataFrame) -> dict[str, Tested]:
        return evaluate_family(frame, self.family(frame))

    def __call__(self, frame: pd.DataFrame, timings: pd.DataFrame | None) -> list[Section]:
        return self.sections(frame, timings, self.tested(frame))


def failed_controls(tested: dict[str, Tested]) -> list[Tested]:
    return [t for t in tested.values() if t.claim.role == "control" and not t.holds]


def _seeds(x: float) -> str:
    return "" if math.isnan(x) else ("∞" if math.isinf(x) else f"{x:.0f}")


def claims_table(tested: dict[str, Tested], role: str) -> pd.DataFrame:
    """The claims of one role: numbers, both tests, the seed-by-seed direction, the verdict and the power plan."""
    rows = [t for t in tested.values() if t.claim.role == role]
    return pd.DataFrame({
        "claim": [t.claim.text for t in rows],
        "Δ (a − b)": [f"{t.wins}–{t.losses} wins" if t.claim.censored
                      else f"mean {fmt_value(t.diff + t.claim.b)} vs {t.claim.b:g}" if t.claim.is_level
                      else fmt_value(t.diff) for t in rows],
        "95% CI of Δ": ["sign test" if t.claim.censored
                        else f"of the mean: [{fmt_value(t.ci_low + t.claim.b)}, {fmt_value(t.ci_high + t.claim.b)}]"
                        if t.claim.is_level else f"[{fmt_value(t.ci_low)}, {fmt_value(t.ci_high)}]" for t in rows],
        "p": ["a level: no test" if t.claim.is_level else fmt_p(t.p) if t.used
              else f"not used (smallest attainable {fmt_p(t.min_p)})" for t in rows],
        "Holm p": ["" if t.claim.is_level else fmt_p(t.p_holm) for t in rows],
        "δ: TOST Holm p": ["" if math.isnan(t.p_tost) else f"±{t.claim.delta:g}: {fmt_p(t.p_tost_holm)}"
                           for t in rows],
        "n": [t.n for t in rows],
        "seeds a > b": ["" if t.claim.censored or t.n < 2 else f"{t.higher_seeds} of {t.n}" for t in rows],
        "verdict": [t.direction for t in rows],
        "seeds for 80% power (difference / equivalence)": [
            " / ".join(s for s in (_seeds(t.seeds_needed), _seeds(t.seeds_equivalence)) if s) for t in rows]})
