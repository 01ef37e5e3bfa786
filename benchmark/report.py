"""Summaries and figures from written results (``metrics.csv`` or tracked MLflow runs), with no training.

``render_suite`` is what ``run`` calls at the end and what ``report`` calls alone: the same inputs give the same
``summary.md`` byte for byte.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from benchmark.registry import REGISTRY, Section, SuiteSpec
from benchmark.results import atomic_write_text, read_metrics
from cvpdl.errors import UserInputError
from cvpdl.evaluation.stats import PairedTest, paired_test, summarize

ALPHA = 0.05  # a claim is significant when its Holm-adjusted p is below this
TARGET_POWER = 0.8
# Final metrics whose NaN means "the event did not happen within the run" (right-censored at the last epoch).
CENSORED_METRICS = frozenset({"epochs_to_target"})


def _fmt(x: float, digits: int = 3) -> str:
    return "nan" if pd.isna(x) else f"{x:.{digits}f}"


def _p(x: float) -> str:
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


def cell(rows: pd.DataFrame, method: str, metric: str, split: str) -> pd.Series | None:
    hit = rows[(rows["method"] == method) & (rows["metric"] == metric) & (rows["split"] == split)]
    return None if hit.empty else hit.iloc[0]


def describe(rows: pd.DataFrame, method: str, metric: str, split: str) -> str:
    """"0.812 ± 0.010 [0.787, 0.837], n=3" — the way every number of a summary is quoted."""
    r = cell(rows, method, metric, split)
    if r is None or r["n"] == 0:
        return "not measured"
    if r["n"] == 1:
        return f"{_fmt(r['mean'])}, n=1"
    return f"{_fmt(r['mean'])} ± {_fmt(r['std'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}], n={r['n']}"


def _horizon(frame: pd.DataFrame, method: str, seed: int) -> int | None:
    """The last epoch this (method, seed) ran: where a never-reached event is censored."""
    epochs = frame[(frame["method"] == method) & (frame["seed"] == seed) & frame["epoch"].notna()]["epoch"]
    return None if epochs.empty else int(epochs.max())


def describe_censored(frame: pd.DataFrame, method: str, metric: str, split: str) -> str:
    """"reached at epochs 3, 5 (2 of 3 seeds); not within 8 epochs on 1 of 3 seeds" for an epochs-to-event metric."""
    values = _final_values(final_metrics(frame), method, metric, split)
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


def _final_values(finals: pd.DataFrame, method: str, metric: str, split: str) -> pd.DataFrame:
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
        t = None if method == baseline else _paired(group, _final_values(finals, baseline, metric, split))
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
        return (f"{text}, p={_p(self.p)}, Holm p={_p(self.p_holm)}, n={self.n}: {self.direction}"
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
        "Δ (a − b)": [f"{t.wins}–{t.losses} wins" if t.claim.censored else _fmt(t.diff) for t in tested.values()],
        "95% CI of Δ": ["sign test" if t.claim.censored else f"[{_fmt(t.ci_low)}, {_fmt(t.ci_high)}]"
                        for t in tested.values()],
        "p": [_p(t.p) for t in tested.values()], "Holm p": [_p(t.p_holm) for t in tested.values()],
        "n": [t.n for t in tested.values()], "verdict": [t.direction for t in tested.values()],
        "seeds for 80% power": ["" if t.significant or t.n < 2 else
                                ("∞" if math.isinf(t.seeds_needed) else f"{t.seeds_needed:.0f}")
                                for t in tested.values()]})


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return header + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def _value_cells(frame: pd.DataFrame, rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The "mean ± std" and "95% CI" cells of the final-metrics table: "n=1" instead of a NaN spread, and
    censored epochs-to-event metrics as what was reached and what was not."""
    shown, intervals = [], []
    for r in rows.itertuples():
        if r.metric in CENSORED_METRICS:
            shown.append(describe_censored(frame, r.method, r.metric, r.split))
            intervals.append("censored: no interval")
        elif r.n == 0:
            shown.append("not measured")
            intervals.append("")
        elif r.n == 1:
            shown.append(f"{_fmt(r.mean)} (n=1)")
            intervals.append("n=1: no interval")
        else:
            shown.append(f"{_fmt(r.mean)} ± {_fmt(r.std)}")
            intervals.append(f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]")
    return shown, intervals


def _tested_family(spec: SuiteSpec, frame: pd.DataFrame) -> dict[str, Tested] | None:
    hook = spec.report_sections
    return hook.tested(frame) if isinstance(hook, SuiteReport) else None


def _config_items(section: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(section.items()) if not isinstance(v, dict))


def limitations(spec: SuiteSpec, frame: pd.DataFrame, run: dict, tested: dict[str, Tested] | None) -> list[str]:
    """What a reader must know before generalising this run, generated from run.json and metrics.csv."""
    cfg = run.get("config", {})
    lines = [f"Data: `{run.get('data', '?')}` ({spec.dataset}); " + "; ".join(
        f"`{name}`: {_config_items(cfg[name])}" for name in ("world", "data") if isinstance(cfg.get(name), dict))
        + " (from run.json)."]
    finals = final_metrics(frame)
    sizes = finals[(finals["metric"] == "params") | finals["metric"].str.endswith("_params")]
    if sizes.empty:
        lines.append("Model sizes: no parameter counts in metrics.csv.")
    else:
        counts = sizes.groupby(["method", "metric", "split"], sort=False)["value"].mean()
        lines.append("Model sizes (parameters, metrics.csv): " + ", ".join(
            f"`{m}` {metric}[{split}] {v:,.0f}" for (m, metric, split), v in counts.items()) + ".")
    seeds = sorted(frame["seed"].unique().tolist())
    lines.append(f"Seeds: {len(seeds)} ({', '.join(map(str, seeds))}); every interval and test is over these seeds "
                 "only.")
    epochs = frame[frame["epoch"].notna()].groupby("method", sort=False)["epoch"].max()
    budget = ", ".join(f"{name}.{k}={v}" for name, section in sorted(cfg.items()) if isinstance(section, dict)
                       for k, v in sorted(section.items()) if k == "epochs")
    if len(epochs) or budget:
        lines.append("Epochs: " + ", ".join(f"`{m}` {int(e)}" for m, e in epochs.items())
                     + (f" (config: {budget})" if budget else "") + ".")
    for method in dict.fromkeys(frame["method"]):
        try:
            deviations = REGISTRY.method(spec.name, method).deviations
        except UserInputError:
            continue
        lines += [f"`{method}` deviates from the official code: {d.line()}" for d in deviations]
    if tested:
        weak = [t for t in tested.values() if t.underpowered()]
        if weak:
            lines.append("Verdicts that rest on fewer seeds than 80% power needs (not significant here; an effect "
                         "of the observed size may still exist): " + "; ".join(
                             f"{t.claim.text} (n={t.n}, needs "
                             + ("∞" if math.isinf(t.seeds_needed) else f"≈{t.seeds_needed:.0f}") + ")"
                             for t in weak) + ".")
    return lines


def _reached(x: float | None) -> str:
    return "not reached" if x is None else _fmt(x)  # None: a censored number (e.g. the target never met)


def tuning_lines(suite_dir: Path, frame: pd.DataFrame, run: dict) -> list[str]:
    """What the equal tuning budget did, from ``tuning/best.json`` (val objective, seed 0 of the study) and whether
    this run used it (run.json ``params``); test numbers of the tuned methods come from this run's metrics."""
    path = suite_dir / "tuning" / "best.json"
    if not path.is_file():
        return ["No tuning study: every method ran with its default values."]
    best = json.loads(path.read_text())
    metric, split = best["objective"]
    used = run.get("params") or {}
    lines = [f"Study: `tuning/` ({best['profile']} profile, objective {metric}[{split}] on the tuning seed, "
             f"{best['trials_per_method']} trials counted per method with a search space, trial 0 = the defaults). "
             + ("This run used the tuned values." if used else "This run did **not** use them (no `--params`).")]
    if best.get("caveat"):  # a known flaw of this study, stated beside its numbers
        lines.append(f"**Caveat:** {best['caveat']}")
    for name, entry in best["methods"].items():
        default = entry.get("default_value")
        moved = (f"{_fmt(default)} → {_fmt(entry['value'])}" if default is not None and entry["params"]
                 else f"{_fmt(entry['value'])} (nothing to tune)")
        values = ", ".join(f"`{k}={v:.4g}`" if isinstance(v, float) else f"`{k}={v}`"
                           for k, v in sorted(entry["params"].items()))
        on_test = [f"{key} {_reached(entry['default_headline'][key])} → {_reached(value)}"
                   for key, value in entry.get("headline", {}).items()
                   if "[test]" in key and key in entry.get("default_headline", {}) and entry["params"]]
        lines.append(f"`{name}`: {metric}[{split}] default → tuned {moved}"
                     + (f" (test, same seed: {', '.join(on_test)})" if on_test else "")
                     + (f"; {values}" if values else "")
                     + ("" if name in used or not entry["params"] else " (not applied in this run)"))
    lines.append("The default configuration was not rerun on the final seeds: default → tuned is measured on the "
                 "study's one seed (test numbers of its trials are recorded, never used to choose).")
    return lines


def summary_markdown(spec: SuiteSpec, frame: pd.DataFrame, timings: pd.DataFrame | None, run: dict,
                     suite_dir: Path | None = None) -> str:
    rows = summary_rows(frame)
    shown, intervals = _value_cells(frame, rows)
    seeds_per_row = final_metrics(frame).groupby(["method", "metric", "split"], sort=False)["seed"].nunique()
    counts = [seeds_per_row[(r.method, r.metric, r.split)] if r.metric in CENSORED_METRICS else r.n
              for r in rows.itertuples()]
    table = pd.DataFrame({"method": rows["method"], "metric": rows["metric"], "split": rows["split"],
                          "mean ± std": shown, "95% CI": intervals, "n": counts})
    seeds = sorted(frame["seed"].unique().tolist())
    parts = [f"# Suite `{spec.name}` — summary\n\n{spec.question}\n\n",
             f"Profile `{run.get('profile', '?')}`, seeds {seeds}, config hash `{run.get('config_hash', '?')}`, "
             f"commit `{run.get('git_commit', '?')[:12]}`{' (dirty)' if run.get('git_dirty') else ''}, "
             f"device `{run.get('device', '?')}`, {run.get('threads', '?')} threads.\n\n"]
    tested = _tested_family(spec, frame)
    if spec.report_sections:
        lines = [f"- {line}\n" for section in spec.report_sections(frame, timings)
                 for line in section.measured + ([f"**Agreement:** {section.verdict}"] if section.verdict else [])]
        parts += ["## What the numbers say\n\n", *lines, "\n"]
    if tested:
        parts += ["## The suite's claims (one family: Holm-adjusted together; significant = Holm p < 0.05)\n\n",
                  "Paired over seeds: t-test on a − b, or for epochs-to-target (censored at the last epoch) a sign "
                  "test on which side reached it first. Seeds for 80% power: the same two-sided test at the observed "
                  "effect size (Cohen's d of the paired differences; the sign test's win rate) and at the level "
                  "Holm's step-down holds that claim's raw p to here, 0.05 / (number of claims not yet rejected "
                  "before it).\n\n", _markdown(claims_table(tested)), "\n"]
    parts += ["## Final metrics (mean ± std over seeds, 95% t-interval)\n\n", _markdown(table), "\n"]
    if suite_dir is not None:
        parts += ["## Tuning (the same budget for every method, on val)\n\n",
                  *[f"- {line}\n" for line in tuning_lines(suite_dir, frame, run)], "\n"]
    if spec.baseline and spec.baseline in set(frame["method"]):
        paired = paired_rows(frame, spec.baseline)
        paired = paired[~paired["metric"].isin(CENSORED_METRICS)].reset_index(drop=True)
        if not paired.empty:
            shown = pd.DataFrame({
                "method": paired["method"], "metric": paired["metric"], "split": paired["split"],
                f"Δ vs {spec.baseline}": [_fmt(d) for d in paired["diff"]],
                "95% CI of Δ": [f"[{_fmt(lo)}, {_fmt(hi)}]" for lo, hi in zip(paired["ci_low"], paired["ci_high"])],
                "paired t-test p": [_p(p) for p in paired["p"]],
                "Holm p (this table)": [_p(q) for q in holm(paired["p"].tolist())], "n": paired["n"]})
            parts += [f"## Paired tests against `{spec.baseline}` (same seeds; exploratory)\n\n"
                      "Not claims: descriptive screening of every final metric (censored epochs-to-target excepted: "
                      "see the claims), Holm-adjusted over this table's rows.\n\n", _markdown(shown), "\n"]
    if timings is not None and not timings.empty:
        t = summary_rows(timings)
        shown = pd.DataFrame({"method": t["method"], "metric": t["metric"],
                              "mean ± std": [f"{m:.4g} (n=1)" if n == 1 else f"{m:.4g} ± {_fmt(s, 4)}"
                                             for m, s, n in zip(t["mean"], t["std"], t["n"])],
                              "n": t["n"]})
        parts += ["## Timings (on the run's device, machine-dependent; seconds_per_image is process CPU time, "
                  "train_seconds wall clock; not part of metrics.csv)\n\n", _markdown(shown), "\n"]
    parts += ["## Limitations\n\n", *[f"- {line}\n" for line in limitations(spec, frame, run, tested)]]
    return "".join(parts)


def headline_table(spec: SuiteSpec, frame: pd.DataFrame) -> str:
    """The short table printed at the end of every run: one row per method, the suite's headline metrics."""
    rows = summary_rows(frame)
    methods = list(dict.fromkeys(frame["method"]))
    columns = [f"{m}[{s}]" for m, s in spec.headline]
    lines = [["method", *columns]]
    for method in methods:
        line = [method]
        for metric, split in spec.headline:
            r = cell(rows, method, metric, split)
            if metric in CENSORED_METRICS and r is not None:
                values = _final_values(final_metrics(frame), method, metric, split)["value"]
                line.append(f"{_fmt(r['mean'])}" + (f" ({values.isna().sum()}/{len(values)} never)"
                                                    if values.isna().any() else ""))
            elif r is None or r["n"] == 0:
                line.append("-")
            else:
                line.append(f"{_fmt(r['mean'])} (n=1)" if r["n"] == 1 else f"{_fmt(r['mean'])}±{_fmt(r['std'])}")
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in lines)


def load_suite(suite_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    frame = read_metrics(suite_dir / "metrics.csv")
    timings = read_metrics(suite_dir / "timings.csv") if (suite_dir / "timings.csv").is_file() else None
    run_path = suite_dir / "run.json"
    run = json.loads(run_path.read_text()) if run_path.is_file() else {}
    return frame, timings, run


def render_suite(suite: str, suite_dir: Path) -> list[Path]:
    """Write ``summary.md`` and every figure of ``suite`` from the files in ``suite_dir``."""
    spec = REGISTRY.suite(suite)
    frame, timings, run = load_suite(suite_dir)
    if frame.empty:
        raise UserInputError(f"{suite_dir / 'metrics.csv'} holds no rows")
    atomic_write_text(suite_dir / "summary.md", summary_markdown(spec, frame, timings, run, suite_dir))
    atomic_write_text(suite_dir.parent / "REPORT.md", report_markdown(suite_dir.parent))
    from paper_figures import render_suite_figures

    return [suite_dir / "summary.md", suite_dir.parent / "REPORT.md", *render_suite_figures(suite, suite_dir)]


def report_markdown(results_dir: Path) -> str:
    """``REPORT.md``: each course question, the literature's answer, what was measured, the figures with their
    captions, and the limitations of every run."""
    from paper_figures import CAPTIONS

    parts = ["# cvpdl-bench — report\n\n",
             "Generated by `python -m benchmark report` from `results/*/metrics.csv` (and each suite's run.json and "
             "timings.csv); every measured number is mean ± std over seeds with the 95% t-interval in brackets, and "
             "comparisons are paired over seeds. Each suite declares its family of claims; their p-values are "
             "Holm-adjusted together and a difference is called significant only when the adjusted p is below "
             "0.05. Paragraphs headed **The literature** state what the papers report and were not measured here. "
             "Each suite's `summary.md` has the full tables.\n\n"]
    limits = []
    for spec in sorted(REGISTRY.suites(), key=lambda s: s.name):
        suite_dir = results_dir / spec.name
        parts.append(f"## Suite `{spec.name}`: {spec.question}\n\n")
        if not (suite_dir / "metrics.csv").is_file() or spec.report_sections is None:
            reason = spec.status if spec.status != "ready" else f"no results yet: run `python -m benchmark run " \
                                                                   f"--suite {spec.name}`"
            parts.append(f"**Not measured yet** — {reason}. Questions waiting for it:\n\n")
            parts += [f"- {q}\n" for q in spec.course_questions]
            parts.append("\n")
            continue
        frame, timings, run = load_suite(suite_dir)
        parts.append(f"Results: `{spec.name}/summary.md` (profile `{run.get('profile', '?')}`, seeds "
                     f"{sorted(frame['seed'].unique().tolist())}, commit `{run.get('git_commit', '?')[:12]}`).\n\n")
        for section in spec.report_sections(frame, timings):
            parts.append(f"### {section.heading}\n\n**The literature (not measured here).** {section.literature}"
                         "\n\n**Measured.**\n\n")
            parts += [f"- {line}\n" for line in section.measured]
            parts.append(f"\n**Agreement with the paper.** {section.verdict}\n\n" if section.verdict else "\n")
            for name in section.figures:
                caption = CAPTIONS.get(spec.name, {}).get(name, "")
                parts.append(f"![{name}]({spec.name}/figures/{name}.png)\n\n*Figure `{name}`.* {caption}\n\n")
        parts += ["### Tuning\n\n", *[f"- {line}\n" for line in tuning_lines(suite_dir, frame, run)], "\n"]
        limits.append(f"### `{spec.name}`\n\n" + "".join(
            f"- {line}\n" for line in limitations(spec, frame, run, _tested_family(spec, frame))) + "\n")
    if limits:
        parts += ["## Limitations\n\n", "Generated from each run's run.json and metrics.csv.\n\n", *limits]
    return "".join(parts)


def metrics_from_mlflow(suite: str, results_dir: Path) -> pd.DataFrame:
    """The long metrics table of the latest invocation of ``suite``, from its cells' tracked ``metrics.csv``."""
    import tempfile

    from benchmark.tracking import Tracker

    tracker = Tracker(results_dir, suite)
    parents = tracker.mlflow.search_runs([tracker.experiment_id], filter_string="tags.role = 'invocation'",
                                         order_by=["start_time DESC"], max_results=1)
    if parents.empty:
        raise UserInputError(f"no tracked `{suite}` runs at {tracker.uri}")
    cells = tracker.mlflow.search_runs(
        [tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parents.iloc[0]['run_id']}'",
        order_by=["start_time ASC"])
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in cells["run_id"]:
            path = tracker.client.download_artifacts(run_id, "metrics.csv", tmp)
            frames.append(read_metrics(Path(path)))
    if not frames:
        raise UserInputError(f"the latest `{suite}` invocation at {tracker.uri} has no finished cells")
    return pd.concat(frames, ignore_index=True)
