"""The statistics of a suite's claims: one decision per claim under a declared error family (the summaries they
quote are ``benchmark.metric_summaries``, the seeds they need ``benchmark.power``).

A claim is one three-way decision (higher / lower, equivalent within ±δ, inconclusive) from two tests whose nulls
are disjoint (Δ = 0 and |Δ| ≥ δ: at most one is true), so a family counts claims, not tests: Shaffer's step-down
over all the family's tests, each step at α / (claims that still have an unrejected test). The primary family is
every primary claim of the report (``benchmark.findings.report_family``), whether or not its suite is in the frame
at hand.

Suites import from here and ``findings`` (and from ``registry`` and ``context``), never from the runner or the report
internals.
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

from benchmark.metric_summaries import fmt_p
from benchmark.power import sign_test_seeds_needed, tost_seeds_needed, ttest_seeds_needed
from cvpdl.errors import UserInputError
from cvpdl.evaluation.stats import paired_test

ALPHA = 0.05  # a claim is significant when its Holm-adjusted p is below this
MAX_PRIMARY = 4  # primary claims per suite: the question's answer
ROLES = ("control", "primary", "secondary")  # each role is its own family
# Final metrics whose NaN means "the event did not happen within the run" (right-censored at the last epoch).
CENSORED_METRICS = frozenset({"epochs_to_target"})


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
        needed = (lambda alpha: sign_test_seeds_needed(wins, losses, len(seeds), alpha)) if seeds else None
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
        equivalence = lambda alpha: tost_seeds_needed(diffs, claim.delta, alpha)  # noqa: E731
    return out, (lambda alpha: ttest_seeds_needed(diffs, alpha)), equivalence


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
