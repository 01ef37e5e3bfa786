"""``REPORT.md`` and each suite's rendering from written results, with no training.

``render_suite`` is what ``run`` calls at the end and what ``report`` calls alone: ``summary.md``
(``benchmark.summary``) and the figures of one suite, and ``REPORT.md`` over every suite's results: the first
screen of verdicts in both regimes and every source, then the course questions one by one. The same inputs give the
same files byte for byte.
"""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.claims import ALPHA, MAX_PRIMARY, Arm, Tested, brief_line
from benchmark.findings import Finding, failed_controls, report_family
from benchmark.confirmation import CONFIRMATION, plan_mismatch
from benchmark.params import TUNED
from benchmark.registry import REGISTRY, SuiteSpec
from benchmark.robustness import depends_on, read_sensitivity, sensitivity_lines
from benchmark.results import atomic_write_text, read_tables
from benchmark.summary import (INSENSITIVE, data_line, is_smoke, limitations, load_suite, loss_share_lines,
                               summary_markdown, tested_family, top_knob, tuning_lines)
from cvpdl.errors import UserInputError




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


def exploratory_sweeps(results_dir: Path, suite: str) -> list[tuple[str, pd.DataFrame]]:
    """Sweeps of one's own (``sensitivity --sweep`` into ``DIR/exploratory/<name>/``): quoted under their claims,
    never deciding a verdict, each on the development seeds of its own base run."""
    found = []
    for path in sorted((results_dir / "exploratory").glob(f"*/{suite}/sensitivity.csv")):
        run = path.parent / "run.json"
        table = read_sensitivity(path.parent, json.loads(run.read_text())) if run.is_file() else None
        if table is not None:
            where = path.parent.relative_to(results_dir)
            found.append((f"exploratory, development seeds of its own base run: `{where}/`", table))
    return found


def diagnosis_lines(frame: pd.DataFrame, f: Finding, pair: Regimes | None) -> list[str]:
    """Under a claim the papers' settings contradict: the experiment that tells "the method is worse here" from "a
    setting carried over from the paper hurts here" (every method tuned at equal budget; both regimes on the same
    development seeds, or each on its own confirmation), and which loss term drives each of its methods."""
    claim = f.tested.claim
    methods = [arm.method for arm in (claim.a, claim.b) if isinstance(arm, Arm)]
    if pair is None:
        reading = ("not measured yet: tune every method at equal budget (`benchmark tune`) and run "
                   "`--params tuned`; until then the reversal may be a carried-over setting's")
    else:
        papers, tuned = pair.papers.tested, pair.tuned.tested
        seeds = ("the same development seeds" if pair.source == "development" else
                 f"each regime on the seeds of its own {pair.source}")
        moved = (f"Δ {tuned.diff:+.3f} [{tuned.ci_low:+.3f}, {tuned.ci_high:+.3f}] tuned (n={tuned.n}) against "
                 f"{papers.diff:+.3f} [{papers.ci_low:+.3f}, {papers.ci_high:+.3f}] at the papers' settings "
                 f"(n={papers.n}), {seeds}")
        knob = f"the knob that mattered most in the tuning studies: `{pair.knob or 'not recorded'}`"
        if pair.robust:
            reading = (f"tuned at equal budget, still **{pair.tuned.verdict}** ({moved}): tuning does not undo it, "
                       "so it is this testbed's finding about the method, not a carried-over setting's")
        elif pair.conflict:
            reading = (f"tuned at equal budget: **{pair.tuned.verdict}** ({moved}): a default setting (the paper's, "
                       f"or this testbed's declared deviation from it) drives the reversal, not the method; {knob}")
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
    the knob the claim's tuning studies found most important where both decide it, differently (unless a swept knob
    already reverses it: the diagnosis line under the claim names the studies' knob)."""
    lines = ["| Q | claim | verdict | Δ [95% CI] | n | from |", "|---|---|---|---|---|---|"]
    for suite, dev, dev_sensitive in findings:
        source, f, sensitive = headline(suite, dev, dev_sensitive, sources)
        t = f.tested
        knobs = depends_on((sweeps or {}).get(suite), t.claim.key, t.direction) if t is not None else []
        label = f.question.split(". ")[0] if ". " in f.question else "controls"
        pair = (tuned or {}).get((suite, dev.claim))
        if pair is not None and pair.conflict and label != "controls" and not knobs:  # a swept knob says it first
            knobs = [pair.knob or "hyperparameters"]
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
    tested = tested_family(spec, frame)
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
        explored = exploratory_sweeps(results_dir, spec.name)
        if not sensitive:  # the pilot's own controls; a confirmation's are tested on its own seeds (first table)
            confirmed = any(suite == spec.name for suite, _ in sources["confirmation"].rows)
            body.append(f"**{'In the development pilot, ' if confirmed else ''}"
                        f"{INSENSITIVE if confirmed else INSENSITIVE[0].upper() + INSENSITIVE[1:]}** (not shown: "
                        f"{'; '.join(t.claim.text for t in failed_controls(tested))})"
                        + (". The planned confirmation tests its controls on its own seeds: its row in the first "
                           "table." if confirmed else ".") + "\n\n")
        body.append(f"Development pilot: `{spec.name}/summary.md` (data {data_line(spec, run)}, profile "
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
            ours = [f.tested.claim.text for _, f, _ in findings if f.question == section.heading and f.tested]
            body += [f"- sensitivity ({where}): {line}\n"
                     for where, table in [("development seeds", sweeps[spec.name]), *explored]
                     for line in sensitivity_lines(table) if line.startswith(tuple(ours))]
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
