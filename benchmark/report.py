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
from cvpdl.evaluation.stats import paired_test, summarize


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


def paired_rows(frame: pd.DataFrame, baseline: str) -> pd.DataFrame:
    finals = final_metrics(frame)
    rows = []
    base = finals[finals["method"] == baseline]
    for (method, metric, split), group in finals.groupby(["method", "metric", "split"], sort=False):
        if method == baseline:
            continue
        ref = base[(base["metric"] == metric) & (base["split"] == split)]
        pairs = group.merge(ref, on="seed", suffixes=("", "_base"))
        if pairs.empty:
            continue
        t = paired_test(pairs["value"].tolist(), pairs["value_base"].tolist())
        rows.append({"method": method, "metric": metric, "split": split, "diff": t.mean_diff, "ci_low": t.ci_low,
                     "ci_high": t.ci_high, "p": t.p_value, "n": t.n})
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
    if spec.answers:
        parts += ["## What the numbers say\n\n", "".join(f"- {line}\n" for line in spec.answers(frame)), "\n"]
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
    from paper_figures import render_suite_figures

    return [suite_dir / "summary.md", *render_suite_figures(suite, suite_dir)]


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
