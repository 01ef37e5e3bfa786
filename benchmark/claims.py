"""The statistics of a suite's claims: summaries of the final metrics, paired comparisons, one decision per claim
under a declared error family.

A claim is one three-way decision (higher / lower, equivalent within ±δ, inconclusive) from two tests whose nulls
are disjoint (Δ = 0 and |Δ| ≥ δ: at most one is true), so a family counts claims, not tests: Shaffer's step-down
over all the family's tests, each step at α / (claims that still have an unrejected test). The primary family is
every primary claim of the report (``report_family``), whether or not its suite is in the frame at hand.

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

from benchmark.registry import REGISTRY, SUITE_NAMES, Section
from cvpdl.errors import UserInputError
from cvpdl.evaluation.stats import PairedTest, paired_test, summarize

ALPHA = 0.05  # a claim is significant when its Holm-adjusted p is below this
TARGET_POWER = 0.8
MAX_PRIMARY = 4  # primary claims per suite: the question's answer
ROLES = ("control", "primary", "secondary")  # each role is its own family
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

    def _rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """This arm's rows; a (seed, epoch) written twice is an error naming them, never a silent pick."""
        rows = frame[(frame["method"] == self.method) & (frame["metric"] == self.metric)
                     & (frame["split"] == self.split)]
        rows = rows[rows["epoch"].isna()] if self.epoch is None else rows[rows["epoch"].notna()]
        twice = rows[rows.duplicated(["seed", "epoch"], keep=False)]
        if not twice.empty:
            where = sorted({(int(s), None if pd.isna(e) else int(e)) for s, e in zip(twice["seed"], twice["epoch"])})
            raise UserInputError(f"metrics.csv holds {self.method} {self.metric}[{self.split}] more than once at "
                                 f"(seed, epoch) {', '.join(map(str, where[:5]))}{' …' if len(where) > 5 else ''}")
        return rows

    def values(self, frame: pd.DataFrame) -> pd.Series:
        rows = self._rows(frame)
        if self.epoch is None:
            return rows.set_index("seed")["value"]
        rows = rows[rows["value"].notna()].sort_values(["seed", "epoch"])
        picks = {"first": lambda v: v.iloc[0], "last": lambda v: v.iloc[-1], "mean": lambda v: v.mean()}
        return rows.groupby("seed")["value"].agg(picks[self.epoch])

    def missing(self, frame: pd.DataFrame) -> int:
        """NaN values this arm leaves out: per-epoch rows (trend arms) or final values (a censored arm's NaN is
        data, "not reached", and not counted)."""
        return int(self._rows(frame)["value"].isna().sum())


@dataclass(frozen=True)
class Claim:
    """One comparison a suite asserts: ``a`` against ``b`` paired by seed, or against a constant ``b`` (a level the
    mean over seeds must clear: a positive control's floor, by a one-sided t-test of the mean against it).

    ``role``: "control" (an effect everyone agrees on: the testbed must show it before its nulls mean anything),
    "primary" (the question's answer, at most ``MAX_PRIMARY`` per suite) or "secondary" (exploratory); each role is
    its own family (the primary one spans the report). ``expected``: the direction the literature reports.
    ``delta``: the smallest effect of interest, in the metric's unit: the margin of the equivalence test (TOST).
    Censored claims compare epochs to an event (NaN = not reached within the run) by a sign test on which side
    reached it first."""

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
    """A claim's tests over seeds, with p-values adjusted within its role's family (``adjust``: one decision per
    claim). A level claim's ``p`` is the one-sided t-test of the mean against the level, ``ci_low`` its one-sided
    95% lower bound."""

    claim: Claim
    n: int
    diff: float  # mean of a - b over seeds (censored: wins - losses of a, "earlier" counting as a win)
    ci_low: float
    ci_high: float
    p: float  # two-sided difference test (a level: one-sided); NaN where there is none (n < 2, a test not used)
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
    min_p: float = 0.0  # the smallest p the test can reach at this n (the sign test: 2 · 0.5^(wins + losses))
    sd: float = math.nan  # standard deviation of a − b over seeds (what a power plan assumes)
    missing: int = 0  # NaN values left out (per-epoch rows of trend arms, final values), both arms together
    family_size: int = 1  # claims in this claim's family (the level a power plan faces is α / family_size)

    @property
    def used(self) -> bool:
        """A test that cannot reach p < 0.05 at this n is not used (its verdict says so)."""
        return self.min_p < ALPHA

    @property
    def significant(self) -> bool:
        return bool(self.p_holm < ALPHA)

    @property
    def direction(self) -> str:
        """The verdict: "higher" / "lower" (censored: "earlier" / "later") where the adjusted difference test
        rejects, "equivalent" where the adjusted TOST does, otherwise "inconclusive"; a level claim is "reached"
        where its adjusted one-sided test rejects "mean ≤ level", else "not shown"."""
        if self.n == 0:
            return "not measured"
        if self.n < 2:
            return "not testable"
        if not self.used:
            return "not used"
        if self.claim.is_level:
            return "reached" if self.significant else "not shown"
        if self.claim.censored and self.significant:
            return "earlier" if self.diff > 0 else "later"
        return str(decide(self.diff, self.p_holm, self.p_tost_holm))

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
            return (f"not used: the sign test's smallest attainable p with {self.wins + self.losses} untied of "
                    f"{self.n} seeds is {fmt_p(self.min_p)} (≥ {ALPHA:g})")
        if d in ("reached", "not shown"):
            return (f"the mean is above {self.claim.b:g}" if d == "reached" else
                    f"not shown above {self.claim.b:g} (one-sided 95% bound {self.ci_low + self.claim.b:.3f})")
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
            return (f"mean {self.diff + c.b:.3f}, one-sided 95% lower bound {self.ci_low + c.b:.3f} against the level "
                    f"{c.b:g}, p={fmt_p(self.p)}, Holm p={fmt_p(self.p_holm)}, n={self.n}{self._missing_text()}: "
                    f"{self.verdict()}")
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
        return (f"{text}, {tests + ', ' if tests else ''}n={self.n}{self._missing_text()}"
                f"{', ' + seeds if seeds else ''}: {self.verdict()}")

    def _missing_text(self) -> str:
        return f" ({self.missing} NaN values left out)" if self.missing else ""


def brief_line(t: Tested) -> str:
    """"Δ +0.440 [+0.270, +0.610], Holm p=0.0139, higher on 5 of 5 seeds: higher" — the first table's evidence."""
    if t.n < 2 or t.claim.is_level or t.claim.censored:
        return t.line()
    tests = f"Holm p={fmt_p(t.p_holm)}"
    if t.direction in ("equivalent", "inconclusive") and not math.isnan(t.p_tost):
        tests += f", TOST ±{t.claim.delta:g} Holm p={fmt_p(t.p_tost_holm)}"
    return (f"Δ {t.diff:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}], {tests}, n={t.n}, {t.seed_directions()}: "
            f"{t.verdict()}")


def ttest_power(effect: float, nobs: np.ndarray, alpha: float) -> np.ndarray:
    """Power of the two-sided paired t-test at Cohen's d ``effect``: P(T > c) + P(T < −c), T noncentral t with
    n − 1 degrees of freedom and noncentrality d √n. Both tails as upper tails (P(T < −c) = P(T' > c) with the
    noncentrality negated): scipy's ``nct.cdf`` far in a tail returns NaN for many n (so does statsmodels'
    ``TTestPower().power``, built on it), ``nct.sf`` does not."""
    df, nc = nobs - 1, abs(effect) * np.sqrt(nobs)
    crit = stats.t.isf(alpha / 2, df)
    return stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc)


def tost_power(mean: float, sd: float, delta: float, nobs: np.ndarray, alpha: float) -> np.ndarray:
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
    return _smallest_n(lambda nobs: ttest_power(mean / sd, nobs, alpha))


def _tost_seeds_needed(diffs: np.ndarray, delta: float, alpha: float) -> float:
    """Seeds for 80% power of the paired TOST within ±``delta`` at level ``alpha``, at the observed mean and sd."""
    mean, sd = abs(float(np.mean(diffs))), float(np.std(diffs, ddof=1))
    if mean >= delta:  # the observed effect is outside the margin: no number of seeds shows equivalence
        return math.inf
    if sd == 0:
        return 2.0
    return _smallest_n(lambda nobs: tost_power(mean, sd, delta, nobs, alpha))


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
        # ties carry no sign: the smallest two-sided p is reached when every untied seed goes one way
        min_p = min(1.0, 2 * 0.5 ** (wins + losses))
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
    out = {"n": t.n, "diff": t.mean_diff, "ci_low": t.ci_low, "ci_high": t.ci_high, "p": t.p_value,
           "sd": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan,
           "higher_seeds": int((diffs > 0).sum()), "lower_seeds": int((diffs < 0).sum())}
    if claim.is_level:  # H0: mean ≤ level, one-sided; its 95% lower bound is the interval a reader checks
        if len(diffs) >= 2:
            out["p"] = _one_sided_p(diffs)
            out["ci_low"] = float(diffs.mean() - stats.t.ppf(1 - ALPHA, len(diffs) - 1)
                                  * diffs.std(ddof=1) / math.sqrt(len(diffs)))
        return out, None, None
    if len(diffs) < 2:
        return out, None, None
    equivalence = None
    if claim.delta is not None:
        out["p_tost"] = tost_paired(x, y, claim.delta)
        equivalence = lambda alpha: _tost_seeds_needed(diffs, claim.delta, alpha)  # noqa: E731
    return out, (lambda alpha: _ttest_seeds_needed(diffs, alpha)), equivalence


def _one_sided_p(diffs: np.ndarray) -> float:
    """p of the one-sided t-test that the mean of ``diffs`` is above 0 (no spread: 0 or 1)."""
    if np.std(diffs) == 0:
        return 0.0 if diffs.mean() > 0 else 1.0
    return float(stats.ttest_1samp(diffs, 0.0, alternative="greater").pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values; NaN entries (untestable claims) stay NaN and are not part of the family."""
    finite = [i for i, p in enumerate(p_values) if not pd.isna(p)]
    adjusted = [math.nan] * len(p_values)
    if finite:
        _, corrected, _, _ = multipletests([p_values[i] for i in finite], alpha=ALPHA, method="holm")
        for i, q in zip(finite, corrected):
            adjusted[i] = float(q)
    return adjusted


def adjust_many(p: np.ndarray, owner: np.ndarray, family_size: int) -> np.ndarray:
    """Shaffer's step-down (1986) for one decision per claim, over many replicates at once: ``p`` (replicates ×
    tests; NaN: no test, never rejected), ``owner`` the claim of each test. The test at step k is held to α / t_k,
    t_k the claims of the family that still have an unrejected test: a claim's tests have disjoint nulls (Δ = 0,
    |Δ| ≥ δ), so at most one of them is true, and a claim whose every test was rejected holds no true null. Returns
    the adjusted p-values (a test rejects where its adjusted p is below α)."""
    p = np.atleast_2d(np.asarray(p, dtype=float))
    owner = np.asarray(owner)
    size = max(family_size, len(np.unique(owner)))
    tests_of = np.bincount(owner)[owner]  # per test: how many tests its claim has
    order = np.argsort(np.where(np.isnan(p), np.inf, p), axis=1, kind="stable")
    seen = np.zeros((p.shape[0], owner.max() + 1), dtype=int)
    closed = np.zeros(p.shape[0], dtype=int)
    running = np.zeros(p.shape[0])
    adjusted = np.full(p.shape, np.nan)
    rows = np.arange(p.shape[0])
    for step in range(p.shape[1]):
        test = order[:, step]
        value = p[rows, test]
        finite = ~np.isnan(value)
        running = np.where(finite, np.maximum(running, np.minimum(1.0, (size - closed) * value)), running)
        adjusted[rows, test] = np.where(finite, running, np.nan)
        claim = owner[test]
        seen[rows, claim] += finite
        closed += finite & (seen[rows, claim] == tests_of[test])
    return adjusted


def adjust(p_by_claim: list[list[float]], family_size: int | None = None) -> list[list[float]]:
    """``adjust_many`` for one family: each claim's p-values (NaN: no test) → their adjusted p-values;
    ``family_size``: the claims of the declared family, at least those given (the others count as never rejected)."""
    owner = np.array([i for i, ps in enumerate(p_by_claim) for _ in ps], dtype=int)
    if owner.size == 0:
        return [[] for _ in p_by_claim]
    flat = adjust_many(np.array([[p for ps in p_by_claim for p in ps]]), owner, family_size or 0)[0].tolist()
    out, start = [], 0
    for ps in p_by_claim:
        out.append([float(x) for x in flat[start:start + len(ps)]])
        start += len(ps)
    return out


def decide(diff, p_difference, p_equivalence):
    """The three-way decision from adjusted p-values (arrays or scalars): "higher" / "lower" where the difference
    test rejects, "equivalent" where the TOST does, else "inconclusive"."""
    diff, p_difference, p_equivalence = np.broadcast_arrays(*map(np.asarray, (diff, p_difference, p_equivalence)))
    return np.where(p_difference < ALPHA, np.where(diff > 0, "higher", "lower"),
                    np.where(p_equivalence < ALPHA, "equivalent", "inconclusive"))


def planned_seeds(diff, sd, delta: float | None, level: float, cap: int) -> np.ndarray:
    """The fewest seeds in [2, ``cap``] at which the difference test or the TOST within ±``delta`` reaches the
    target power at true mean ``diff`` and sd ``sd`` (arrays), at ``level``; inf where ``cap`` seeds do not. Power
    grows with n for both, so a vectorised bisection finds it."""
    diff, sd = np.broadcast_arrays(np.abs(np.asarray(diff, dtype=float)), np.asarray(sd, dtype=float))

    def powered(n: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            ok = np.where(sd > 0, ttest_power(diff / sd, n, level) >= TARGET_POWER, diff > 0)
            if delta is not None:
                ok |= np.where(sd > 0, tost_power(diff, sd, delta, n, level) >= TARGET_POWER, diff < delta)
        return ok

    lo, hi = np.full(diff.shape, 2), np.full(diff.shape, cap)
    reachable = powered(hi.astype(float))
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        ok = powered(mid.astype(float))
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, np.minimum(mid + 1, hi))
    return np.where(reachable, lo, np.inf)


def report_family() -> list[str]:
    """``suite:key`` of every primary claim the report decides (its suites with all their methods): the error
    family of the primary claims, declared in each confirmation plan."""
    keys = []
    for name in SUITE_NAMES:
        hook = next((s.report_sections for s in REGISTRY.suites() if s.name == name), None)
        if isinstance(hook, SuiteReport):
            everything = pd.DataFrame({"method": REGISTRY.method_names(name), "metric": "chance_top1"})
            keys += [f"{name}:{c.key}" for c in hook.family(everything) if c.role == "primary"]
    return keys


def evaluate_family(frame: pd.DataFrame, claims: list[Claim], primary_family: int | None = None) -> dict[str, Tested]:
    """Test every claim of a suite over seeds, one decision per claim (``adjust``) within its role: the controls
    together, the secondary claims together, and the primary claims within a family of ``primary_family`` claims
    (default: this suite's)."""
    if len({c.key for c in claims}) != len(claims):
        raise ValueError("claim keys must be unique within a family")
    if sum(c.role == "primary" for c in claims) > MAX_PRIMARY:
        raise ValueError(f"a suite declares at most {MAX_PRIMARY} primary claims")
    raw = [_test(frame, c) for c in claims]
    out = {}
    for role in ROLES:
        members = [i for i, c in enumerate(claims) if c.role == role]
        size = max(len(members), primary_family or 0) if role == "primary" else len(members)
        p_by_claim = [[raw[i][0].get("p", math.nan)] + ([raw[i][0].get("p_tost", math.nan)]
                                                         if claims[i].delta is not None and not claims[i].is_level
                                                         else []) for i in members]
        adjusted = adjust(p_by_claim, size)
        level = ALPHA / max(size, 1)  # the first step's level: what a plan powers each test for
        for i, p_adjusted in zip(members, adjusted):
            r, needed, equivalence = raw[i]
            missing = claims[i].a.missing(frame) + (0 if claims[i].is_level else claims[i].b.missing(frame))
            if claims[i].censored:
                missing = 0  # NaN is "not reached": data, not a gap
            out[claims[i].key] = Tested(
                claims[i], p_holm=p_adjusted[0], p_tost_holm=p_adjusted[1] if len(p_adjusted) > 1 else math.nan,
                seeds_needed=needed(level) if needed is not None else math.nan,
                seeds_equivalence=equivalence(level) if equivalence is not None else math.nan,
                level=level, missing=missing, family_size=size, **r)
    return {c.key: out[c.key] for c in claims}


@dataclass(frozen=True)
class Finding:
    """One row of REPORT.md's first table: a paper's claim and this testbed's verdict on it."""

    question: str  # the heading of the report section that answers it (the row links there)
    claim: str  # what the paper claims, in a few words
    verdict: str  # reproduced / contradicted / equivalent within ±δ / inconclusive / untestable here (why)
    evidence: str = ""  # the numbers behind the verdict
    tested: Tested | None = None  # the test behind it (the first table quotes its Δ, interval and n)


def paper_verdict(t: Tested | None) -> str:
    """A tested claim against the direction the paper reports."""
    if t is None or t.n == 0:
        return "untestable here: not measured in this run"
    d = t.direction
    if d in ("reached", "not shown"):
        return "reproduced" if d == "reached" else "inconclusive (not shown above the level)"
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
    return Finding(question, claim, paper_verdict(t), evidence + (f"; {extra}" if extra else ""), t)


@dataclass(frozen=True)
class SuiteReport:
    """A suite's report hook: its declared claims (controls, at most ``MAX_PRIMARY`` primary, secondary), the
    sections that quote them and the rows it adds to REPORT.md's first table. Called like a plain
    ``report_sections(frame, timings)``."""

    family: Callable[[pd.DataFrame], list[Claim]]
    sections: Callable[[pd.DataFrame, pd.DataFrame | None, dict[str, Tested]], list[Section]]
    findings: Callable[[pd.DataFrame, dict[str, Tested]], list[Finding]]

    def tested(self, frame: pd.DataFrame) -> dict[str, Tested]:
        """Decided within the report's primary family when this is one of the report's suites."""
        ours = any(s.report_sections is self for s in REGISTRY.suites())
        return evaluate_family(frame, self.family(frame), len(report_family()) if ours else None)

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
                        else f"one-sided lower bound of the mean: {fmt_value(t.ci_low + t.claim.b)}"
                        if t.claim.is_level else f"[{fmt_value(t.ci_low)}, {fmt_value(t.ci_high)}]" for t in rows],
        "p": [f"{fmt_p(t.p)} (one-sided)" if t.claim.is_level else fmt_p(t.p) if t.used
              else f"not used (smallest attainable {fmt_p(t.min_p)})" for t in rows],
        "Holm p": [fmt_p(t.p_holm) for t in rows],
        "δ: TOST Holm p": ["" if math.isnan(t.p_tost) else f"±{t.claim.delta:g}: {fmt_p(t.p_tost_holm)}"
                           for t in rows],
        "n": [t.n for t in rows],
        "seeds a > b": ["" if t.claim.censored or t.n < 2 else f"{t.higher_seeds} of {t.n}" for t in rows],
        "verdict": [t.direction for t in rows],
        "seeds for 80% power (difference / equivalence)": [
            " / ".join(s for s in (_seeds(t.seeds_needed), _seeds(t.seeds_equivalence)) if s) for t in rows]})
