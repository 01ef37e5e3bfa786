"""Each suite's ``summary.md`` from its written results (``metrics.csv``, ``timings.csv``, ``run.json``, the tuning
study), with no training: its headline table, claims and controls, power plan, floors, tuning, loss shares, timings
and limitations. The same inputs give the same file byte for byte.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from benchmark.claims import ALPHA, CENSORED_METRICS, MAX_PRIMARY, Tested, holm
from benchmark.findings import SuiteReport, claims_table, failed_controls
from benchmark.metric_summaries import (
    describe, describe_censored, final_metrics, final_values, fmt_p, fmt_value, paired_rows, summary_row,
    summary_rows)
from benchmark.params import TUNED, staleness, tuning_seeds
from benchmark.registry import REGISTRY, SuiteSpec
from benchmark.robustness import read_sensitivity, sensitivity_lines
from benchmark.results import read_metrics
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


def tested_family(spec: SuiteSpec, frame: pd.DataFrame) -> dict[str, Tested] | None:
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


def data_line(spec: SuiteSpec, run: dict) -> str:
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
             f"Data {data_line(spec, run)}.\n\n",
             f"Profile `{run.get('profile', '?')}`, seeds {seeds}, config hash `{run.get('config_hash', '?')}`, "
             f"commit `{run.get('git_commit', '?')[:12]}`{' (dirty)' if run.get('git_dirty') else ''}, "
             f"device `{run.get('device', '?')}`, {run.get('threads', '?')} threads.\n\n"]
    tested = tested_family(spec, frame)
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
