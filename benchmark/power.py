"""How many seeds a decision needs: the power of the paired t-test, of the paired TOST and of the sign test, and
the fewest seeds that reach the target power (a claim's "seeds for 80% power", a confirmation plan's n)."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import stats

TARGET_POWER = 0.8


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


def ttest_seeds_needed(diffs: np.ndarray, alpha: float) -> float:
    """Seeds for 80% power of a two-sided paired t-test at level ``alpha`` and the observed Cohen's d of ``diffs``."""
    mean, sd = abs(float(np.mean(diffs))), float(np.std(diffs, ddof=1))
    if mean == 0:
        return math.inf
    if sd == 0:  # identical non-zero differences: any two seeds give p = 0
        return 2.0
    return _smallest_n(lambda nobs: ttest_power(mean / sd, nobs, alpha))


def tost_seeds_needed(diffs: np.ndarray, delta: float, alpha: float) -> float:
    """Seeds for 80% power of the paired TOST within ±``delta`` at level ``alpha``, at the observed mean and sd."""
    mean, sd = abs(float(np.mean(diffs))), float(np.std(diffs, ddof=1))
    if mean >= delta:  # the observed effect is outside the margin: no number of seeds shows equivalence
        return math.inf
    if sd == 0:
        return 2.0
    return _smallest_n(lambda nobs: tost_power(mean, sd, delta, nobs, alpha))


def sign_test_seeds_needed(wins: int, losses: int, n: int, alpha: float) -> float:
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
