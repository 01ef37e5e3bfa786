"""Summaries and figures from written results (``metrics.csv``, ``timings.csv``, ``tables/``, ``run.json``), with
no training.

``render_suite`` is what ``run`` calls at the end and what ``report`` calls alone: the same inputs give the same
``summary.md`` byte for byte.
"""
from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.claims import (
    report_family,
    ALPHA,
    Arm,
    CENSORED_METRICS,
    MAX_PRIMARY,
    brief_line,
    Finding,
    SuiteReport,
    Tested,
    claims_table,
    failed_controls,
    describe_censored,
    final_metrics,
    final_values,
    fmt_p,
    fmt_value,
    holm,
    paired_rows,
    describe,
    summary_row,
    summary_rows,
)
from benchmark.confirmation import CONFIRMATION, plan_mismatch
from benchmark.params import TUNED, staleness, tuning_seeds
from benchmark.registry import REGISTRY, SuiteSpec
from benchmark.robustness import depends_on, read_sensitivity, sensitivity_lines
from benchmark.results import atomic_write_text, read_metrics, read_tables
from cvpdl.errors import UserInputError

INSENSITIVE = ("testbed insensitive: a positive control is not shown, so the verdicts below cannot be read as the "
               "methods' effects")


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return header + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def _value_texts(frame: pd.DataFrame, rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The "mean ± std" and "95% CI" entries of the final-metrics table: "n=1" instead of a NaN spread, and
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
            shown.append(f"{fmt_value(r.mean)} (n=1)")
            intervals.append("n=1: no interval")
        else:
            shown.append(f"{fmt_value(r.mean)} ± {fmt_value(r.std)}")
            intervals.append(f"[{fmt_value(r.ci_low)}, {fmt_value(r.ci_high)}]")
    return shown, intervals


SMOKE = "SMOKE TEST (quick profile): these numbers are not results, only a check that every step runs"


def is_smoke(run: dict) -> bool:
    return run.get("profile") == "quick"


def _tested_family(spec: SuiteSpec, frame: pd.DataFrame) -> dict[str, Tested] | None:
    hook = spec.report_sections
    return hook.tested(frame) if isinstance(hook, SuiteReport) else None


def _config_items(section: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(section.items()) if not isinstance(v, dict))


def floor_lines(spec: SuiteSpec, frame: pd.DataFrame) -> list[str]:
    """Every method not clearly above a floor its suite declares: a 95% interval over seeds that reaches down to
    the chance level, or a censored metric never reached on any seed (metrics.csv only)."""
    finals = final_metrics(frame)
    lines = []
    for floor in spec.floors:
        rows = finals[(finals["metric"] == floor.metric) & (finals["split"] == floor.split)]
        for method, group in rows.groupby("method", sort=False):
            shown = f"{floor.metric}[{floor.split}]"
            if floor.level is None:
                if group["value"].isna().all():
                    lines.append(f"**`{method}` never reaches its target**: {shown} is censored on all {len(group)} "
                                 "seeds (not reached within the run); comparisons with it are with a method that has "
                                 "not converged.")
                continue
            table = summary_rows(finals[finals["method"] == method])
            level = summary_row(table, method, *floor.level)
            mine = summary_row(table, method, floor.metric, floor.split)
            if level is not None and not mine["ci_low"] > level["mean"]:  # NaN-safe: n=1 is not "clearly above"
                lines.append(f"**`{method}` is not clearly above chance**: {shown} "
                             f"{describe(table, method, floor.metric, floor.split)} against {floor.level[0]} "
                             f"{fmt_value(level['mean'])}; comparisons with it say little about what it stands for.")
    return lines


def _data_line(spec: SuiteSpec, run: dict) -> str:
    """Which data a run read: the built-in digits world, or a user's folder (with its hash, from run.json)."""
    data = run.get("data", "?")
    if data == "digits":
        return f"`digits` (the built-in digits world: {spec.dataset.split(', or')[0].split(' or ')[0]})"
    return f"`{data}` at `{run.get('data_root', '?')}`"


def limitations(spec: SuiteSpec, frame: pd.DataFrame, run: dict, tested: dict[str, Tested] | None) -> list[str]:
    """What a reader must know before generalising this run, generated from run.json and metrics.csv."""
    cfg = run.get("config", {})
    lines = [*floor_lines(spec, frame), f"Data: `{run.get('data', '?')}` ({spec.dataset}); " + "; ".join(
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
            lines.append("Inconclusive verdicts that rest on fewer seeds than 80% power needs (an effect of the "
                         "observed size may still exist, or an equivalence be shown): " + "; ".join(
                             f"{t.claim.text} (n={t.n}, needs "
                             + ("∞" if math.isinf(t.seeds_for_decision) else f"≈{t.seeds_for_decision:.0f}") + ")"
                             for t in weak) + ".")
    return lines


def _reached(x: float | None) -> str:
    return "not reached" if x is None else fmt_value(x)  # None: a censored number (e.g. the target never met)


def tuning_lines(suite_dir: Path, frame: pd.DataFrame, run: dict) -> list[str]:
    """What the equal tuning budget did, from the suite's ``tuning/best.json`` (val objective, mean over the study's
    tuning seeds) and whether this run used it (run.json ``params``)."""
    path = study_path(suite_dir)
    if not path.is_file():
        return ["No tuning study: every method ran with its default values."]
    best = json.loads(path.read_text())
    metric, split = best["objective"]
    used = run.get("params") or {}
    lines = [f"Study: `tuning/` ({best['profile']} profile, objective {metric}[{split}] on the tuning seeds, "
             f"{best['trials_per_method']} trials counted per method with a search space, trial 0 = the defaults). "
             + ("This run used the tuned values." if used else "This run did **not** use them (no `--params`).")]
    provenance, stale = best.get("provenance"), staleness(best)
    if provenance:
        lines.append(f"Study provenance: commit `{str(provenance['commit'])[:12]}`"
                     f"{' (dirty tree)' if provenance.get('dirty') else ''}, tuning seeds "
                     f"{' '.join(map(str, tuning_seeds(best)))}, "
                     f"{provenance['threads']} threads on {provenance['host']}, "
                     f"{provenance['study_seconds'] / 3600:.2f} h of trial time, written {provenance['written']}.")
    if stale:
        lines.append(f"**The tuned values predate the current training code**: {stale}.")
    for name, entry in best["methods"].items():
        default = entry.get("default_value")
        moved = (f"{fmt_value(default)} → {fmt_value(entry['value'])}" if default is not None and entry["params"]
                 else f"{fmt_value(entry['value'])} (nothing to tune)")
        values = ", ".join(f"`{k}={v:.4g}`" if isinstance(v, float) else f"`{k}={v}`"
                           for k, v in sorted(entry["params"].items()))
        on_test = [f"{key} {_reached(entry['default_headline'][key])} → {_reached(value)}"
                   for key, value in entry.get("headline", {}).items()
                   if "[test]" in key and key in entry.get("default_headline", {}) and entry["params"]]
        lines.append(f"`{name}`: {metric}[{split}] default → tuned {moved}"
                     + (f" (test, same seed: {', '.join(on_test)})" if on_test else "")
                     + (f"; {values}" if values else "")
                     + ("" if name in used or not entry["params"] else " (not applied in this run)"))
    lines.append("Default → tuned above is measured on the study's tuning seeds (test numbers of its trials are "
                 "recorded, never used to choose); both regimes run on the development seeds: the papers' settings "
                 f"in `{suite_dir.name}/`, the tuned values in `{TUNED}/{suite_dir.name}/`.")
    return lines


def study_path(suite_dir: Path) -> Path:
    """The suite's tuning study, seen from either regime's folder (``DIR/<suite>`` or ``DIR/tuned/<suite>``)."""
    root = suite_dir.parent.parent if suite_dir.parent.name == TUNED else suite_dir.parent
    return root / suite_dir.name / "tuning" / "best.json"


def top_knob(suite_dir: Path, methods: set[str]) -> str | None:
    """The knob that mattered most in the tuning studies of ``methods`` (largest fANOVA importance in best.json)."""
    path = study_path(suite_dir)
    if not path.is_file():
        return None
    entries = json.loads(path.read_text())["methods"]
    weights = [(share, knob) for name in methods for knob, share in entries.get(name, {}).get("importance",
                                                                                              {}).items()]
    return max(weights)[1] if weights else None


CONTROLS_NOTE = ("A comparison holds when its paired t-test over seeds rejects in the expected direction; a level "
                 "holds when its one-sided t-test rejects \"mean ≤ level\" (the one-sided 95% lower bound clears it); "
                 "the controls are one family (Shaffer's step-down over claims). If one is not shown, the report "
                 "opens with \"" + INSENSITIVE + "\".\n\n")
VERDICTS_NOTE = (f"Verdicts: higher / lower where the two-sided paired t-test rejects; equivalent within ±δ where the "
                 f"paired TOST against the declared smallest effect of interest δ rejects (statsmodels "
                 f"`ttost_paired`); otherwise inconclusive. The two tests of a claim have disjoint nulls, so a claim "
                 f"is one decision and the family counts claims: every primary claim of the report, held to α = "
                 f"{ALPHA:g} by Shaffer's step-down (each test at α / the claims still open; \"Holm p\" is that "
                 f"adjusted p). \"seeds a > b\" counts the seeds on which the first arm is higher, "
                 f"significant or not. A test whose smallest attainable p at the run's n is ≥ {ALPHA:g} (a two-sided "
                 f"sign test on 5 seeds: 0.0625) is not used at that n.\n\n")
POWER_NOTE = ("Seeds planned by power (80%, at the observed effect and the first step's level of the family, "
              "α / its claims, as `plan` uses; the difference test's power from the noncentral t, "
              "the TOST's from the lower bound P(T₊ > t) + P(T₋ < −t) − 1):\n\n")


def power_plan(tested: dict[str, Tested]) -> list[str]:
    """Per primary claim: the observed effect, and the seeds each test needs for 80% power at its Holm level."""
    lines = []
    for t in (t for t in tested.values() if t.claim.role == "primary"):
        if t.n < 2:
            lines.append(f"{t.claim.text}: n={t.n}, no effect size to plan from.")
            continue
        effect = f"Δ {t.diff:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}], n={t.n}"
        needs = [f"difference test at α={t.level:.2g}: {_seeds_text(t.seeds_needed)}"]
        if not math.isnan(t.seeds_equivalence):
            needs.append(f"equivalence within ±{t.claim.delta:g}: {_seeds_text(t.seeds_equivalence)}")
        lines.append(f"{t.claim.text}: {effect}; " + "; ".join(needs) + ".")
    planned = [t for t in tested.values() if t.claim.role == "primary" and t.n >= 2]
    if planned:
        n, needed = max(t.n for t in planned), max(t.seeds_for_decision for t in planned)
        lines.append(f"The seed plan: every primary claim decided with 80% power at these effects needs "
                     f"{_seeds_text(needed)} (the fewer of each claim's two tests; this run: {n}); "
                     + ("this run has them." if needed <= n else
                        "where that is more than the profile's seeds, the claim stays inconclusive here."))
    return lines


def _seeds_text(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return "never (the observed effect gives it no power)" if math.isinf(x) else f"{x:.0f} seeds"


def loss_share_lines(frame: pd.DataFrame) -> list[str]:
    """Per method: each weighted loss term's share of the total at the first and the last epoch, mean over seeds
    (``loss_share_<term>`` rows): which term drives training, the first thing a reversal's diagnosis asks."""
    shares = frame[frame["epoch"].notna() & frame["metric"].str.startswith("loss_share_")]
    lines = []
    for method, rows in shares.groupby("method", sort=False):
        first, last = rows["epoch"].min(), rows["epoch"].max()
        means = rows[rows["epoch"].isin([first, last])].groupby(["metric", "epoch"])["value"].mean()
        terms = dict.fromkeys(rows["metric"])
        lines.append(f"`{method}` ({rows['seed'].nunique()} seeds): " + ", ".join(
            f"{term.removeprefix('loss_share_')} {means[(term, first)]:.0%} → {means[(term, last)]:.0%}"
            for term in terms) + f" (epoch {first} → {last})")
    return lines


def summary_markdown(spec: SuiteSpec, frame: pd.DataFrame, timings: pd.DataFrame | None, run: dict,
                     suite_dir: Path | None = None) -> str:
    rows = summary_rows(frame)
    shown, intervals = _value_texts(frame, rows)
    seeds_per_row = final_metrics(frame).groupby(["method", "metric", "split"], sort=False)["seed"].nunique()
    counts = [seeds_per_row[(r.method, r.metric, r.split)] if r.metric in CENSORED_METRICS else r.n
              for r in rows.itertuples()]
    table = pd.DataFrame({"method": rows["method"], "metric": rows["metric"], "split": rows["split"],
                          "mean ± std": shown, "95% CI": intervals, "n": counts})
    seeds = sorted(frame["seed"].unique().tolist())
    parts = [f"# Suite `{spec.name}` — summary\n\n" + (f"**{SMOKE}.**\n\n" if is_smoke(run) else "")
             + f"{spec.question}\n\n",
             f"Data {_data_line(spec, run)}.\n\n",
             f"Profile `{run.get('profile', '?')}`, seeds {seeds}, config hash `{run.get('config_hash', '?')}`, "
             f"commit `{run.get('git_commit', '?')[:12]}`{' (dirty)' if run.get('git_dirty') else ''}, "
             f"device `{run.get('device', '?')}`, {run.get('threads', '?')} threads.\n\n"]
    tested = _tested_family(spec, frame)
    if tested:
        if failed_controls(tested):
            parts.insert(1, f"**{INSENSITIVE[0].upper() + INSENSITIVE[1:]}** (failed: "
                            f"{'; '.join(t.claim.text for t in failed_controls(tested))}).\n\n")
        parts += ["## Positive controls (effects every paper agrees on: the testbed must show them first)\n\n",
                  CONTROLS_NOTE, _markdown(claims_table(tested, "control")), "\n",
                  f"## Primary claims (the question's answer; at most {MAX_PRIMARY}, one Holm family)\n\n",
                  VERDICTS_NOTE, _markdown(claims_table(tested, "primary")), "\n", POWER_NOTE,
                  *[f"- {line}\n" for line in power_plan(tested)], "\n"]
    if spec.report_sections:
        lines = [f"- {line}\n" for section in spec.report_sections(frame, timings)
                 for line in section.measured + ([f"**Agreement:** {section.verdict}"] if section.verdict else [])]
        parts += ["## What the numbers say\n\n", *lines, "\n"]
    if tested:
        parts += ["## Secondary claims (exploratory: their own Holm family, never in the headline)\n\n",
                  _markdown(claims_table(tested, "secondary")), "\n"]
    shares = loss_share_lines(frame)
    if shares:
        parts += ["## Loss terms (each weighted term's share of the total training loss, first → last epoch, mean "
                  "over seeds; `loss_share_<term>` in metrics.csv)\n\n", *[f"- {line}\n" for line in shares], "\n"]
    swept = sensitivity_lines(read_sensitivity(suite_dir, run)) if suite_dir is not None else []
    if swept:
        parts += ["## Sensitivity (exploratory: each primary claim across the knob that may drive it, same seeds, "
                  "each value's test unadjusted; `sensitivity.csv`)\n\n", *[f"- {line}\n" for line in swept], "\n"]
    parts += ["## Final metrics (mean ± std over seeds, 95% t-interval)\n\n", _markdown(table), "\n"]
    if suite_dir is not None:
        parts += ["## Tuning (the same budget for every method, on val)\n\n",
                  *[f"- {line}\n" for line in tuning_lines(suite_dir, frame, run)], "\n"]
    if spec.baseline and spec.baseline in set(frame["method"]):
        paired = paired_rows(frame, spec.baseline)
        levels = {f.level[0] for f in spec.floors if f.level}  # chance levels: constants, not results
        paired = paired[~paired["metric"].isin(CENSORED_METRICS | levels)].reset_index(drop=True)
        if not paired.empty:
            shown = pd.DataFrame({
                "method": paired["method"], "metric": paired["metric"], "split": paired["split"],
                f"Δ vs {spec.baseline}": [fmt_value(d) for d in paired["diff"]],
                "95% CI of Δ": [f"[{fmt_value(lo)}, {fmt_value(hi)}]"
                                for lo, hi in zip(paired["ci_low"], paired["ci_high"])],
                "paired t-test p": [fmt_p(p) for p in paired["p"]],
                "Holm p (this table)": [fmt_p(q) for q in holm(paired["p"].tolist())], "n": paired["n"]})
            parts += [f"## Paired tests against `{spec.baseline}` (same seeds; exploratory)\n\n"
                      "Not claims: descriptive screening of every final metric (censored epochs-to-target excepted: "
                      "see the claims), Holm-adjusted over this table's rows.\n\n", _markdown(shown), "\n"]
    if timings is not None and not timings.empty:
        t = summary_rows(per_cell_timings(timings))
        shown = pd.DataFrame({"method": t["method"], "metric": t["metric"],
                              "mean ± std": [f"{m:.4g} (n=1)" if n == 1 else f"{m:.4g} ± {fmt_value(s, 4)}"
                                             for m, s, n in zip(t["mean"], t["std"], t["n"])],
                              "n": t["n"]})
        parts += ["## Timings (on the run's device, machine-dependent; seconds_per_image is process CPU time, "
                  "train_seconds, eval_seconds and teacher_seconds wall clock (kd's teacher is trained by its "
                  "seed's first cell, waited for or loaded by the others); not part of metrics.csv)\n\n",
                  _markdown(shown), "\n"]
    parts += ["## Limitations\n\n", *[f"- {line}\n" for line in limitations(spec, frame, run, tested)]]
    return "".join(parts)


def per_cell_timings(timings: pd.DataFrame) -> pd.DataFrame:
    """One value per cell and timing: per-epoch seconds summed over the cell's epochs ("…, all epochs"), per-epoch
    rates averaged ("…, mean over epochs"); timings already per cell pass unchanged."""
    per_epoch = timings[timings["epoch"].notna()]
    if per_epoch.empty:
        return timings
    keys = ["suite", "method", "seed", "split", "metric"]
    sums = per_epoch.groupby(keys, sort=False)["value"].agg(["sum", "mean"]).reset_index()
    sums["value"] = sums["sum"].where(sums["metric"].str.endswith("_seconds"), sums["mean"])
    sums["metric"] = [m + (", all epochs" if m.endswith("_seconds") else ", mean over epochs") for m in sums["metric"]]
    sums["epoch"] = float("nan")
    return pd.concat([timings[timings["epoch"].isna()], sums[timings.columns]], ignore_index=True)


def headline_table(spec: SuiteSpec, frame: pd.DataFrame) -> str:
    """The short table printed at the end of every run: one row per method, the suite's headline metrics."""
    rows = summary_rows(frame)
    methods = list(dict.fromkeys(frame["method"]))
    columns = [f"{m}[{s}]" for m, s in spec.headline]
    lines = [["method", *columns]]
    for method in methods:
        line = [method]
        for metric, split in spec.headline:
            r = summary_row(rows, method, metric, split)
            if metric in CENSORED_METRICS and r is not None:
                values = final_values(final_metrics(frame), method, metric, split)["value"]
                line.append(f"{fmt_value(r['mean'])}" + (f" ({values.isna().sum()}/{len(values)} never)"
                                                    if values.isna().any() else ""))
            elif r is None or r["n"] == 0:
                line.append("-")
            else:
                line.append(f"{fmt_value(r['mean'])} (n=1)" if r["n"] == 1
                            else f"{fmt_value(r['mean'])}±{fmt_value(r['std'])}")
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in lines)


def load_suite(suite_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    frame = read_metrics(suite_dir / "metrics.csv")
    timings = read_metrics(suite_dir / "timings.csv") if (suite_dir / "timings.csv").is_file() else None
    run_path = suite_dir / "run.json"
    run = json.loads(run_path.read_text()) if run_path.is_file() else {}
    return frame, timings, run


def render_suite(suite: str, suite_dir: Path, report_dir: Path | None = None) -> list[Path]:
    """Write ``summary.md`` and every figure of ``suite`` from the files in ``suite_dir``, and ``REPORT.md`` (over
    every suite's default results) into ``report_dir`` when given."""
    spec = REGISTRY.suite(suite)
    frame, timings, run = load_suite(suite_dir)
    if frame.empty:
        raise UserInputError(f"{suite_dir / 'metrics.csv'} holds no rows")
    atomic_write_text(suite_dir / "summary.md", summary_markdown(spec, frame, timings, run, suite_dir))
    written = [suite_dir / "summary.md"]
    if report_dir is not None:
        atomic_write_text(report_dir / "REPORT.md", report_markdown(report_dir))
        written.append(report_dir / "REPORT.md")
    from paper_figures import render_suite_figures
    from paper_figures.style import SuiteInputs

    tables = read_tables(suite_dir / "tables")
    swept = read_sensitivity(suite_dir, run)
    if swept is not None:
        tables["sensitivity"] = swept
    inputs = SuiteInputs(frame, tables, smoke=is_smoke(run))
    figures = render_suite_figures(suite, inputs, suite_dir / "figures")
    return [*written, *figures]


def anchor(heading: str) -> str:
    """The link GitHub gives a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    kept = "".join(ch for ch in heading.lower() if ch.isalnum() or ch in " -_")
    return "#" + kept.replace(" ", "-")


def short_id(suite: str, question: str) -> str:
    """A question's short anchor in REPORT.md: ``kd-b2`` for "B2. ...", ``kd-controls`` for a suite's controls."""
    label = question.split(". ")[0] if ". " in question else "controls"
    return f"{suite}-{label.lower()}"


STAGED = Path("exploratory") / "staged-confirmation"  # the reruns grown look by look before plans existed
SOURCES = {"confirmation": "confirmation", "staged": "staged†", "development": "development"}


@dataclass(frozen=True)
class Evidence:
    """The rows one source gives REPORT.md: (suite, claim) → (finding, testbed sensitive), or why none."""

    rows: dict[tuple[str, str], tuple[Finding, bool]]
    notes: dict[str, str]  # suite → one line: a plan not run yet, or a confirmation that is not its plan's
    seeds: set[int]  # every seed of the runs that gave rows


def source_findings(root: Path, plans: Path | None = None) -> Evidence:
    """The findings of every suite's run under ``root`` (``root/<suite>/metrics.csv``). ``plans``: where the
    suites' plan.json files are; a run is then used only where it is exactly its plan (seeds, methods, config)."""
    rows, notes, seeds = {}, {}, set()
    for spec in REGISTRY.suites():
        folder = root / spec.name
        plan_file = (plans or root) / spec.name / "plan.json"
        if plans is not None and not plan_file.is_file():
            continue
        if not (folder / "metrics.csv").is_file() or spec.report_sections is None:
            if plans is not None:
                plan = json.loads(plan_file.read_text())
                notes[spec.name] = f"planned ({plan['n']} seeds, {plan['seeds'][0]}-{plan['seeds'][-1]}), not run yet"
            continue
        frame, _, run = load_suite(folder)
        if plans is not None:
            mismatch = plan_mismatch(json.loads(plan_file.read_text()), frame, run)
            if mismatch is not None:
                notes[spec.name] = f"not decided from: it is not its plan ({mismatch})"
                continue
        rows.update({(spec.name, f.claim): (f, sensitive) for _, f, sensitive in suite_findings(spec, frame)[0]})
        seeds |= set(frame["seed"].astype(int))
    return Evidence(rows, notes, seeds)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bar inside a cell would end it


@dataclass(frozen=True)
class Regimes:
    """One claim in both regimes, at the strongest source both have (the planned confirmations, else the
    development seeds), and the knob the claim's tuning studies found most important."""

    papers: Finding
    tuned: Finding
    source: str
    knob: str | None
    tuned_sensitive: bool  # the tuned regime's positive controls hold

    @property
    def decided(self) -> bool:
        """Both regimes decided the claim (an inconclusive verdict, e.g. of 5 development seeds, says nothing)."""
        return "inconclusive" not in (self.papers.verdict, self.tuned.verdict)

    @property
    def robust(self) -> bool:
        return self.decided and self.papers.verdict == self.tuned.verdict

    @property
    def conflict(self) -> bool:
        return self.decided and self.papers.verdict != self.tuned.verdict

    def tuned_text(self) -> str:
        """The tuned regime's verdict, marked where its testbed cannot support a null (its controls fail)."""
        null = self.tuned.verdict == "inconclusive" or self.tuned.verdict.startswith("equivalent")
        return _short(self.tuned.verdict) + ("‡" if null and not self.tuned_sensitive else "")


def _short(verdict: str) -> str:
    return verdict.replace("equivalent within ", "equivalent ")  # the first screen's width; the margin stays


def regime_pairs(results_dir: Path, rows: list[tuple[str, Finding, bool]], sources: dict[str, Evidence],
                 tuned: dict[str, Evidence]) -> dict[tuple[str, str], Regimes]:
    """(suite, claim) → its two regimes, for every claim the tuned regime decided."""
    pairs = {}
    for suite, dev, _ in rows:
        key = (suite, dev.claim)
        papers = {"confirmation": sources["confirmation"].rows.get(key, (None,))[0], "development": dev}
        source = next((name for name in ("confirmation", "development")
                       if papers[name] is not None and key in tuned[name].rows), None)
        if source is None or dev.tested is None:
            continue
        claim = dev.tested.claim
        methods = {arm.method for arm in (claim.a, claim.b) if isinstance(arm, Arm)}
        finding, sensitive = tuned[source].rows[key]
        pairs[key] = Regimes(papers[source], finding, source, top_knob(results_dir / suite, methods), sensitive)
    return pairs


def headline(suite: str, dev: Finding, dev_sensitive: bool, sources: dict[str, Evidence]
             ) -> tuple[str, Finding, bool]:
    """A claim's headline at the papers' settings: the strongest source that decided it (the planned confirmation,
    else the staged reruns, else the development pilot), its finding and whether its testbed is sensitive."""
    return next(((name, *evidence.rows[(suite, dev.claim)]) for name, evidence in sources.items()
                 if (suite, dev.claim) in evidence.rows), ("development", dev, dev_sensitive))


def diagnosis_lines(frame: pd.DataFrame, f: Finding, pair: Regimes | None) -> list[str]:
    """Under a claim the papers' settings contradict: the experiment that tells "the method is worse here" from "a
    setting carried over from the paper hurts here" (every method tuned at equal budget, on the same seeds), and
    which loss term drives each of its methods."""
    claim = f.tested.claim
    methods = [arm.method for arm in (claim.a, claim.b) if isinstance(arm, Arm)]
    if pair is None:
        reading = ("not measured yet: tune every method at equal budget (`benchmark tune`) and run "
                   "`--params tuned`; until then the reversal may be a carried-over setting's")
    else:
        papers, tuned = pair.papers.tested, pair.tuned.tested
        moved = (f"Δ {tuned.diff:+.3f} [{tuned.ci_low:+.3f}, {tuned.ci_high:+.3f}] tuned against "
                 f"{papers.diff:+.3f} [{papers.ci_low:+.3f}, {papers.ci_high:+.3f}] at the papers' settings, "
                 f"{pair.source} seeds (n={tuned.n})")
        knob = f"the knob that mattered most in the tuning studies: `{pair.knob or 'not recorded'}`"
        if pair.robust:
            reading = (f"tuned at equal budget, still **{pair.tuned.verdict}** ({moved}): tuning does not undo it, "
                       "so it is this testbed's finding about the method, not a carried-over setting's")
        elif pair.conflict:
            reading = (f"tuned at equal budget: **{pair.tuned.verdict}** ({moved}): a setting carried over from the "
                       f"paper drives the reversal; {knob}")
        else:
            reading = (f"tuned at equal budget: **{pair.tuned.verdict}**{'' if pair.tuned_sensitive else '‡'} "
                       f"({moved}); which of the two it is needs more seeds of both regimes (the tuned regime's "
                       f"plan: `plan --tuned`); {knob}")
    shares = [line for line in loss_share_lines(frame[frame["method"].isin(methods)])]
    return [f"diagnosis of *{f.claim}* (contradicted at the papers' settings): {reading}.",
            *(f"loss terms: {line}" for line in shares)]


def first_table(findings: list[tuple[str, Finding, bool]], sources: dict[str, Evidence],
                sweeps: dict[str, pd.DataFrame | None] | None = None,
                tuned: dict[tuple[str, str], Regimes] | None = None) -> str:
    """REPORT.md's first screen: one row per claim (controls first), the verdict of the strongest source that
    decided it (the planned confirmation, else the staged reruns, else the development pilot), Δ [95% CI], n.
    ``sweeps``: each suite's sensitivity table; a decided verdict that a swept value of a knob reverses becomes
    "depends on <knob>" (the decided verdict beside it). ``tuned``: (suite, claim) → both regimes' findings at the
    strongest source both have: the verdict is "robust to tuning" where both decide it the same way, and depends on
    the knob the claim's tuning studies found most important where both decide it, differently."""
    lines = ["| Q | claim | verdict | Δ [95% CI] | n | from |", "|---|---|---|---|---|---|"]
    for suite, dev, dev_sensitive in findings:
        source, f, sensitive = headline(suite, dev, dev_sensitive, sources)
        t = f.tested
        knobs = depends_on((sweeps or {}).get(suite), t.claim.key, t.direction) if t is not None else []
        label = f.question.split(". ")[0] if ". " in f.question else "controls"
        pair = (tuned or {}).get((suite, dev.claim))
        if pair is not None and pair.conflict and label != "controls":
            knobs = list(dict.fromkeys([*knobs, pair.knob or "hyperparameters"]))
        tuned_text = f"; tuned {pair.tuned_text()}" if pair is not None else ""
        if knobs:
            verdict = f"**depends on {', '.join(knobs)}**: {_short(f.verdict)}{tuned_text}"
        elif pair is not None and pair.robust and label != "controls":
            verdict = f"**{f.verdict}**, robust to tuning"
        else:
            verdict = f"**{f.verdict}**{tuned_text}"
        verdict += "" if sensitive or f.verdict.startswith("untestable") else f" ({INSENSITIVE.split(':')[0]})"
        interval = (f"{t.diff:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}]" if t is not None and t.n >= 2
                    and not t.claim.censored and not t.claim.is_level and label != "controls" else "")
        n = str(t.n) if t is not None else ""
        untested = f.verdict.startswith("untestable")
        lines.append(f"| [{label}](#{short_id(suite, f.question)}) | {_cell(f.claim)} | {_cell(verdict)} | "
                     f"{interval} | {n} | {'' if untested else SOURCES[source]} |")
    return "\n".join(lines) + "\n"


def _control_rows(suite: str, tested: dict[str, Tested]) -> list[tuple[str, Finding, bool]]:
    controls = [t for t in tested.values() if t.claim.role == "control"]
    if not controls:
        return []
    failed = failed_controls(tested)
    heading = f"Suite `{suite}`: positive controls"
    verdict = "hold" if not failed else f"{len(failed)} of {len(controls)} not shown"
    return [(suite, Finding(heading, f"`{suite}` positive controls", verdict,
                            "; ".join(f"{t.claim.text}: {brief_line(t)}" for t in (failed or controls)),
                            min(controls, key=lambda t: t.n)), True)]


def suite_findings(spec: SuiteSpec, frame: pd.DataFrame) -> tuple[list[tuple[str, Finding, bool]],
                                                                    dict[str, Tested] | None, bool]:
    """The first-table rows of one suite's run (its controls' row first), its tested claims and whether its
    controls hold."""
    tested = _tested_family(spec, frame)
    if not tested:
        return [], tested, True
    sensitive = not failed_controls(tested)
    return (_control_rows(spec.name, tested)
            + [(spec.name, f, sensitive) for f in spec.report_sections.findings(frame, tested)], tested, sensitive)


def report_markdown(results_dir: Path) -> str:
    """``REPORT.md``: a first screen with one row per claim and its headline verdict (the planned confirmation's
    where it ran, else the staged reruns', else the development pilot's), then per suite its positive controls,
    each course question with the literature's answer, what was measured, every source's verdict, the figures
    with their captions, and the limitations of every run."""
    from paper_figures import CAPTIONS

    sources = {"confirmation": source_findings(results_dir / CONFIRMATION, plans=results_dir / CONFIRMATION),
               "staged": source_findings(results_dir / STAGED)}
    tuned = {"confirmation": source_findings(results_dir / TUNED / CONFIRMATION,
                                             plans=results_dir / TUNED / CONFIRMATION),
             "development": source_findings(results_dir / TUNED)}
    rows, body, limits, sweeps = [], [], [], {}
    for spec in sorted(REGISTRY.suites(), key=lambda s: s.name):
        suite_dir = results_dir / spec.name
        body.append(f"## Suite `{spec.name}`: {spec.question}\n\n")
        if not (suite_dir / "metrics.csv").is_file() or spec.report_sections is None:
            body.append(f"**Not measured yet** — no results yet: run `python -m benchmark run --suite {spec.name}`."
                        "\n\n")
            continue
        frame, timings, run = load_suite(suite_dir)
        findings, tested, sensitive = suite_findings(spec, frame)
        rows += findings
        sweeps[spec.name] = read_sensitivity(suite_dir, run)
        if not sensitive:
            body.append(f"**{INSENSITIVE[0].upper() + INSENSITIVE[1:]}** (not shown: "
                        f"{'; '.join(t.claim.text for t in failed_controls(tested))}).\n\n")
        body.append(f"Development pilot: `{spec.name}/summary.md` (data {_data_line(spec, run)}, profile "
                    f"`{run.get('profile', '?')}`, seeds "
                    f"{sorted(frame['seed'].unique().tolist())}, commit `{run.get('git_commit', '?')[:12]}`).")
        if (results_dir / TUNED / spec.name / "metrics.csv").is_file():
            tuned_plan = tuned["confirmation"].notes.get(spec.name)
            body.append(f" Tuned regime (the suite's tuning study's values, same seeds): "
                        f"`{TUNED}/{spec.name}/summary.md`"
                        + (f"; its planned confirmation (`{TUNED}/{CONFIRMATION}/{spec.name}/plan.json`): "
                           f"{tuned_plan}." if tuned_plan else "."))
        notes = sources["confirmation"].notes.get(spec.name)
        body.append(f" Planned confirmation (`{CONFIRMATION}/{spec.name}/plan.json`): {notes}.\n\n" if notes
                    else "\n\n")
        if tested:
            controls = [t for t in tested.values() if t.claim.role == "control"]
            if controls:
                body.append(f'<a id="{spec.name}-controls"></a>\n\n### Suite `{spec.name}`: positive controls\n\n')
                body += [f"- {t.claim.text}: {t.line()} — **{'holds' if t.holds else 'not shown'}**.\n"
                         for t in controls]
                body.append("\n")
        for section in spec.report_sections(frame, timings):
            body.append(f'<a id="{short_id(spec.name, section.heading)}"></a>\n\n### {section.heading}\n\n'
                        f"**The literature (not measured here).** {section.literature}\n\n**Measured.**\n\n")
            body += [f"- {line}\n" for line in section.measured]
            body.append(f"\n**Agreement with the paper.** {section.verdict}\n\n" if section.verdict else "\n")
            body += _verdicts_by_source(spec.name, section.heading, findings, sources, tuned)
            for suite, dev, sensitive in findings:
                _, f, _ = headline(suite, dev, sensitive, sources)
                if dev.question == section.heading and f.verdict == "contradicted" and f.tested is not None:
                    pair = regime_pairs(results_dir, [(suite, dev, sensitive)], sources, tuned).get((suite, dev.claim))
                    body += [f"- {line}\n" for line in diagnosis_lines(frame, f, pair)]
            body += [f"- sensitivity (development seeds): {line}\n" for line in sensitivity_lines(sweeps[spec.name])
                     if any(f.question == section.heading and f.tested is not None and line.startswith(
                         f.tested.claim.text) for _, f, _ in findings)]
            for name in section.figures:
                caption = CAPTIONS.get(spec.name, {}).get(name, "")
                body.append(f"![{name}]({spec.name}/figures/{name}.png)\n\n*Figure `{name}`.* {caption}\n\n")
        shares = loss_share_lines(frame)
        if shares:
            body += ["### Loss terms (diagnosis: which term drives each method's training)\n\n",
                     *[f"- {line}\n" for line in shares], "\n"]
        if sweeps[spec.name] is not None:
            body.append(f"### Sensitivity\n\n![sensitivity]({spec.name}/figures/sensitivity.png)\n\n*Figure "
                        f"`sensitivity`.* {CAPTIONS.get(spec.name, {}).get('sensitivity', '')}\n\n")
        body += ["### Tuning\n\n", *[f"- {line}\n" for line in tuning_lines(suite_dir, frame, run)], "\n"]
        limits.append(f"### `{spec.name}`\n\n" + "".join(
            f"- {line}\n" for line in limitations(spec, frame, run, tested)) + "\n")
    parts = ["# cvpdl-bench — report\n\n"]
    if rows:
        staged = sources["staged"].seeds
        regimes = regime_pairs(results_dir, rows, sources, tuned)
        parts += [INTRO.format(family=len(report_family()), alpha=ALPHA), first_table(rows, sources, sweeps, regimes),
                  "\n",
                  _wrapped(STAGED_NOTE.format(seeds=f"{min(staged)}-{max(staged)}")) if staged else "",
                  _wrapped(INSENSITIVE_TUNED) if any(not r.tuned_sensitive for r in regimes.values()) else ""]
    parts += [_wrapped(GENERATED), *body]
    if limits:
        parts += ["## Limitations\n\n", "Generated from each run's run.json and metrics.csv.\n\n", *limits]
    return "".join(parts)


def _wrapped(paragraph: str) -> str:
    """A paragraph in lines of at most 120 characters (markdown joins them)."""
    return textwrap.fill(paragraph.strip(), 120, break_on_hyphens=False, break_long_words=False) + "\n\n"


def _verdicts_by_source(suite: str, heading: str, findings: list[tuple[str, Finding, bool]],
                        sources: dict[str, Evidence], tuned: dict[str, Evidence]) -> list[str]:
    """Under each question: every claim's verdict from each source that has one, with its evidence, and the tuned
    regime's on the development seeds."""
    lines = []
    for _, dev, _ in (row for row in findings if row[1].question == heading and row[1].tested is not None):
        lines.append(f"*{dev.claim}*\n\n")
        for name, evidence in sources.items():
            if (suite, dev.claim) in evidence.rows:
                f, _ = evidence.rows[(suite, dev.claim)]
                lines.append(f"- {SOURCES[name]}: **{f.verdict}** — {f.evidence}\n")
        lines.append(f"- development (seeds 0-4): **{dev.verdict}** — {dev.evidence}\n")
        for name, evidence in tuned.items():
            if (suite, dev.claim) in evidence.rows:
                f, _ = evidence.rows[(suite, dev.claim)]
                where = f"{TUNED}/{CONFIRMATION}/{suite}/" if name == "confirmation" else f"{TUNED}/{suite}/, seeds 0-4"
                lines.append(f"- tuned values, {name} (`{where}`): **{f.verdict}** — {f.evidence}\n")
        lines.append("\n")
    return lines


INTRO = ("Each claim of the course questions, decided once: reproduced, contradicted, equivalent (±δ), inconclusive, "
         "untestable here, or depends on <knob> (a swept setting, or every method tuned at equal budget, decides it "
         "otherwise; robust to tuning: both decide it the same way; compared on the development seeds unless both "
         "regimes ran a confirmation).\n"
         "*from*: the planned confirmation where it ran, else the staged reruns†, else the development pilot.\n"
         "Primary claims form one error family ({family} claims, α = {alpha:g}, Shaffer's step-down over claims); "
         "each row links to its evidence.\n\n")
INSENSITIVE_TUNED = ("‡ The tuned regime's positive controls are not shown (its controls row), so its inconclusive or "
                     "equivalent verdicts cannot be read as the absence of an effect.\n\n")
STAGED_NOTE = ("† Staged reruns (`exploratory/staged-confirmation/`): fresh seeds {seeds}, grown look by look to sizes "
               "computed from earlier looks, so their error rate is not controlled (not measured here: a reader's "
               "simulation of that schedule, in this round's review, put it at 1.7-3.4 × α); exploratory evidence, "
               "not a confirmation. The planned confirmations (`confirmation/<suite>/plan.json`) replace them once "
               "run.\n\n")
GENERATED = ("Generated by `python -m benchmark report` from `results/*/metrics.csv` (and each suite's run.json and "
             "timings.csv); every measured number is mean ± std over seeds with the 95% t-interval in brackets, and "
             "comparisons are paired over seeds. Each suite declares positive controls (tested: a level by its "
             f"one-sided lower bound, a comparison by its test), at most {MAX_PRIMARY} primary claims and secondary "
             "claims. A claim is one decision (difference test or TOST); controls, the report's primary claims and "
             "each suite's secondary claims are three families, each held to α by Shaffer's step-down over its "
             f"claims, and a verdict is significant only when its adjusted p is below {ALPHA:g}. Paragraphs headed "
             "**The literature** state what the papers report and were not measured here. Each suite's "
             "`summary.md` has the full tables and the seeds each primary claim needs.\n\n")
