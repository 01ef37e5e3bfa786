"""Statistics over seeds: mean, std, 95% t-interval, and paired tests against a baseline."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int


def summarize(values, confidence: float = 0.95) -> Summary:
    """Mean, sample std (ddof 1) and the Student-t interval of the mean; NaN spread for n < 2."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Summary(mean, math.nan, math.nan, math.nan, n)
    std = float(x.std(ddof=1))
    if std == 0:
        return Summary(mean, 0.0, mean, mean, n)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return Summary(mean, std, float(low), float(high), n)


@dataclass(frozen=True)
class PairedTest:
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int


def paired_test(method: list[float], baseline: list[float], confidence: float = 0.95) -> PairedTest:
    """Paired t-test of method - baseline over matched seeds, with the t-interval of the mean difference."""
    a, b = np.asarray(method, np.float64), np.asarray(baseline, np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    diff = a[keep] - b[keep]
    s = summarize(diff, confidence)
    if s.n < 2 or s.std == 0:
        p = math.nan if s.n < 2 else (1.0 if s.mean == 0 else 0.0)
    else:
        p = float(stats.ttest_rel(a[keep], b[keep]).pvalue)
    return PairedTest(s.mean, s.ci_low, s.ci_high, p, s.n)
