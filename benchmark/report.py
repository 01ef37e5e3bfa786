"""Summaries and figures from written results (``metrics.csv`` or tracked MLflow runs), with no training.

``render_suite`` is what ``run`` calls at the end and what ``report`` calls alone: the same inputs give the same
``summary.md`` byte for byte.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from benchmark.registry import REGISTRY, SuiteSpec
from benchmark.results import atomic_write_text, read_metrics
from cvpdl.errors import UserInputError
from cvpdl.evaluation.stats import PairedTest, paired_test, summarize


def _fmt(x: float, digits: int = 3) -> str:
    return "nan" if pd.isna(x) else f"{x:.{digits}f}"


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
    if r is None:
        return "not measured"
    return f"{_fmt(r['mean'])} ± {_fmt(r['std'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}], n={r['n']}"


def _final_values(finals: pd.DataFrame, method: str, metric: str, split: str) -> pd.DataFrame:
    return finals[(finals["method"] == method) & (finals["metric"] == metric) & (finals["split"] == split)]


def _paired(a: pd.DataFrame, b: pd.DataFrame) -> PairedTest | None:
    """Paired test of the values of ``a`` against ``b``, matched by seed (None when no seed is shared)."""
    pairs = a[["seed", "value"]].merge(b[["seed", "value"]], on="seed", suffixes=("", "_base"))
    if pairs.empty:
        return None
    return paired_test(pairs["value"].tolist(), pairs["value_base"].tolist())


def paired_comparison(frame: pd.DataFrame, method: str, baseline: str, metric: str, split: str,
                      baseline_metric: str | None = None) -> PairedTest | None:
    finals = final_metrics(frame)
    return _paired(_final_values(finals, method, metric, split),
                   _final_values(finals, baseline, baseline_metric or metric, split))


def direction(t: PairedTest | None) -> str:
    """"higher" / "lower" where the 95% interval of the paired difference excludes 0."""
    if t is None or t.n < 2:
        return "not measured"
    return "higher" if t.ci_low > 0 else "lower" if t.ci_high < 0 else "no significant difference"


def paired_verdict(frame: pd.DataFrame, method: str, baseline: str, metric: str, split: str,
                   baseline_metric: str | None = None) -> str:
    """"Δ +0.123 [+0.050, +0.190], p=0.01, n=3: higher" from a paired test over seeds."""
    t = paired_comparison(frame, method, baseline, metric, split, baseline_metric)
    if t is None:
        return "not measured"
    if t.n < 2:
        return f"Δ {t.mean_diff:+.3f} (one seed: no interval)"
    return f"Δ {t.mean_diff:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}], p={t.p_value:.3g}, n={t.n}: {direction(t)}"


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


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return header + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def summary_markdown(spec: SuiteSpec, frame: pd.DataFrame, timings: pd.DataFrame | None, run: dict) -> str:
    rows = summary_rows(frame)
    table = pd.DataFrame({
        "method": rows["method"], "metric": rows["metric"], "split": rows["split"],
        "mean ± std": [f"{_fmt(m)} ± {_fmt(s)}" for m, s in zip(rows["mean"], rows["std"])],
        "95% CI": [f"[{_fmt(lo)}, {_fmt(hi)}]" for lo, hi in zip(rows["ci_low"], rows["ci_high"])],
        "n": rows["n"]})
    seeds = sorted(frame["seed"].unique().tolist())
    parts = [f"# Suite `{spec.name}` — summary\n\n{spec.question}\n\n",
             f"Profile `{run.get('profile', '?')}`, seeds {seeds}, config hash `{run.get('config_hash', '?')}`, "
             f"commit `{run.get('git_commit', '?')[:12]}`{' (dirty)' if run.get('git_dirty') else ''}, "
             f"device `{run.get('device', '?')}`, {run.get('threads', '?')} threads.\n\n"]
    if spec.report_sections:
        lines = [f"- {line}\n" for section in spec.report_sections(frame, timings)
                 for line in section.measured + ([f"**Agreement:** {section.verdict}"] if section.verdict else [])]
        parts += ["## What the numbers say\n\n", *lines, "\n"]
    parts += ["## Final metrics (mean ± std over seeds, 95% t-interval)\n\n", _markdown(table), "\n"]
    if spec.baseline and spec.baseline in set(frame["method"]):
        paired = paired_rows(frame, spec.baseline)
        if not paired.empty:
            shown = pd.DataFrame({
                "method": paired["method"], "metric": paired["metric"], "split": paired["split"],
                f"Δ vs {spec.baseline}": [_fmt(d) for d in paired["diff"]],
                "95% CI of Δ": [f"[{_fmt(lo)}, {_fmt(hi)}]" for lo, hi in zip(paired["ci_low"], paired["ci_high"])],
                "paired t-test p": [_fmt(p, 4) for p in paired["p"]], "n": paired["n"]})
            parts += [f"## Paired tests against `{spec.baseline}` (same seeds)\n\n", _markdown(shown), "\n"]
    if timings is not None and not timings.empty:
        t = summary_rows(timings)
        shown = pd.DataFrame({"method": t["method"], "metric": t["metric"],
                              "mean ± std": [f"{m:.4g} ± {_fmt(s, 4)}" for m, s in zip(t["mean"], t["std"])],
                              "n": t["n"]})
        parts += ["## Timings (wall clock on the run's device; not part of metrics.csv)\n\n", _markdown(shown)]
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
            line.append("-" if r is None else f"{_fmt(r['mean'])}±{_fmt(r['std'])}")
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
    atomic_write_text(suite_dir / "summary.md", summary_markdown(spec, frame, timings, run))
    atomic_write_text(suite_dir.parent / "REPORT.md", report_markdown(suite_dir.parent))
    from paper_figures import render_suite_figures

    return [suite_dir / "summary.md", suite_dir.parent / "REPORT.md", *render_suite_figures(suite, suite_dir)]


def report_markdown(results_dir: Path) -> str:
    """``REPORT.md``: each course question, the literature's answer, what was measured and the figures."""
    parts = ["# cvpdl-bench — report\n\n",
             "Generated by `python -m benchmark report` from `results/*/metrics.csv`; every number is mean ± std "
             "over seeds with the 95% t-interval in brackets, and comparisons are paired over seeds. Each suite's "
             "`summary.md` has the full tables.\n\n"]
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
            parts.append(f"### {section.heading}\n\n**The literature.** {section.literature}\n\n**Measured.**\n\n")
            parts += [f"- {line}\n" for line in section.measured]
            parts.append(f"\n**Agreement with the paper.** {section.verdict}\n\n" if section.verdict else "\n")
            parts += [f"![{name}]({spec.name}/figures/{name}.png)\n" for name in section.figures]
            parts.append("\n")
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
