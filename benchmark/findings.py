"""What a suite's report hook hands the report: its declared claims decided (``benchmark.claims``), REPORT.md's
first-table rows (``Finding``: a paper's claim and the verdict on it) and the claims tables of summary.md."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from benchmark.claims import DIRECTIONS, Claim, Tested, brief_line, evaluate_family
from benchmark.metric_summaries import fmt_p, fmt_value
from benchmark.registry import REGISTRY, SUITE_NAMES, Section


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


def report_family() -> list[str]:
    """``suite:key`` of every primary claim the report decides (its suites with all their methods): the error
    family of the primary claims, declared in each confirmation plan."""
    return [f"{name}:{c.key}" for name in SUITE_NAMES for c in primary_claims(name)]


def primary_claims(suite: str) -> list[Claim]:
    """The primary claims ``suite`` declares with all its methods run (none when it is not registered or declares
    no claims)."""
    hook = next((s.report_sections for s in REGISTRY.suites() if s.name == suite), None)
    if not isinstance(hook, SuiteReport):
        return []
    everything = pd.DataFrame({"method": REGISTRY.method_names(suite), "metric": "chance_top1"})
    return [c for c in hook.family(everything) if c.role == "primary"]


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
