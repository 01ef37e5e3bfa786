"""``python -m benchmark verify``: a run (made now with ``--run``, else read from a results folder) against the
results committed at ``HEAD``, value by value. Whether the numbers must be identical or within ``TOLERANCES`` is
decided by the hardware signature ``benchmark.reproducibility`` records in run.json.
"""
from __future__ import annotations

import json
import math
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.params import from_stored
from benchmark.paths import REPO_ROOT
from benchmark.results import read_metrics
from cvpdl.errors import UserInputError

EXIT_MISS = 3

# Absolute tolerances on final metrics, used when the hardware signature differs from the committed run's. About
# the seed-to-seed spread of the committed default-profile runs: a rerun on another CPU is a perturbed trajectory,
# so it is expected to land within one seed's spread, not on the same digits. Parameter counts must match exactly.
TOLERANCES: dict[str, float] = {
    "top1_last": 0.10, "top1_best": 0.10, "teacher_top1": 0.02,  # kd (student spread across seeds: 0.16)
    "zs_top1": 0.10, "zs_top1_image": 0.10, "clip_zs_top1_image": 0.10,  # ovd
    "AP": 0.05, "AP50": 0.05, "AP75": 0.05, "AP50_auc": 0.05, "score_iou_spearman": 0.05,
    "intrinsic_dim": 1.5, "intrinsic_dim_mle": 1.0, "pos_attn_entropy": 0.3, "pos_attn_modes": 1.0,
    "epochs_to_target": 2.0, "student_params": 0.0, "extra_params": 0.0, "params": 0.0,
}
DEFAULT_RELATIVE_TOLERANCE = 0.10  # a metric not listed above: 10% of the committed value


def tolerance(metric: str, committed: float) -> float:
    if metric in TOLERANCES:
        return TOLERANCES[metric]
    return DEFAULT_RELATIVE_TOLERANCE * abs(committed) if math.isfinite(committed) else 0.0


KEYS = ["method", "seed", "epoch", "split", "metric"]


def committed_file(relative: str, repo: Path = REPO_ROOT) -> str:
    """A file as committed at ``HEAD`` (not the working tree, which a run may just have rewritten)."""
    try:
        return subprocess.run(["git", "show", f"HEAD:{relative}"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        raise UserInputError(f"no committed {relative} at HEAD of {repo} ({detail.strip().splitlines()[0]})"
                             ) from None


def committed_run(suite: str, repo: Path = REPO_ROOT) -> tuple[pd.DataFrame, dict]:
    """``results/<suite>/metrics.csv`` and ``run.json`` as committed at ``HEAD``."""
    text = committed_file(f"results/{suite}/metrics.csv", repo)
    with tempfile.TemporaryDirectory() as tmp:  # read_metrics validates a file
        path = Path(tmp) / "metrics.csv"
        path.write_text(text)
        frame = read_metrics(path)
    return frame, json.loads(committed_file(f"results/{suite}/run.json", repo))


@dataclass
class Comparison:
    exact: bool
    case: str  # which comparison this is, and why
    rows: pd.DataFrame  # KEYS + committed, ours, diff, tolerance, ok
    notes: list[str]

    @property
    def misses(self) -> pd.DataFrame:
        return self.rows[~self.rows["ok"]]

    def table(self) -> str:
        """One line per (split, metric): values compared, how many reproduced, the largest difference."""
        groups = []
        for (split, metric), g in self.rows.groupby(["split", "metric"], sort=False):
            diff = g["diff"].abs().max()
            groups.append([split, metric, str(len(g)), str(int(g["ok"].sum())),
                           "—" if pd.isna(diff) else f"{diff:.4g}",
                           "exact" if self.exact else f"{g['tolerance'].max():.4g}",
                           "yes" if g["ok"].all() else "NO"])
        lines = [["split", "metric", "values", "reproduced", "max |diff|", "tolerance", "ok"], *groups]
        widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in lines)

    def report(self) -> str:
        ok = len(self.rows) - len(self.misses)
        verdict = ("reproduced" if self.misses.empty
                   else f"NOT reproduced: {len(self.misses)} of {len(self.rows)} values differ")
        parts = [self.case, *self.notes, self.table(), f"{ok} of {len(self.rows)} values reproduced: {verdict}"]
        if not self.misses.empty:
            shown = self.misses.head(10)
            parts.append("first misses:\n" + "\n".join(
                f"  {r.method} seed {r.seed} epoch {'-' if pd.isna(r.epoch) else r.epoch} {r.split}/{r.metric}: "
                f"committed {r.committed:.6g}, here {r.ours:.6g}" for r in shown.itertuples()))
        return "\n".join(parts)


def _equal(a: float, b: float, tol: float) -> bool:
    if pd.isna(a) or pd.isna(b):
        return bool(pd.isna(a) and pd.isna(b))
    return abs(a - b) <= tol


def compare(ours: pd.DataFrame, committed: pd.DataFrame, exact: bool) -> pd.DataFrame:
    """Value by value over the cells (method, seed) present in ``ours``: every row and equal values when
    ``exact``; otherwise final metrics only (per-epoch curves diverge on another CPU), within ``TOLERANCES``.
    A row on one side only is a miss."""
    cells = set(zip(ours["method"], ours["seed"]))
    committed = committed[[c in cells for c in zip(committed["method"], committed["seed"])]]
    if not exact:
        ours, committed = ours[ours["epoch"].isna()], committed[committed["epoch"].isna()]
    merged = pd.merge(committed[KEYS + ["value"]].rename(columns={"value": "committed"}),
                      ours[KEYS + ["value"]].rename(columns={"value": "ours"}), on=KEYS, how="outer", indicator=True)
    merged["diff"] = merged["ours"] - merged["committed"]
    merged["tolerance"] = [0.0 if exact else tolerance(m, c) for m, c in zip(merged["metric"], merged["committed"])]
    merged["ok"] = [side == "both" and _equal(o, c, t)
                    for side, o, c, t in zip(merged["_merge"], merged["ours"], merged["committed"],
                                             merged["tolerance"])]
    return merged.drop(columns="_merge").reset_index(drop=True)


def compare_with_committed(suite: str, results_dir: Path, repo: Path = REPO_ROOT, methods: list[str] | None = None,
                           seeds: list[int] | None = None) -> Comparison:
    """The run in ``results_dir/<suite>`` (its cells of ``methods`` and ``seeds``, default all) against
    ``results/<suite>`` at ``HEAD`` of ``repo``."""
    ours = read_metrics(Path(results_dir) / suite / "metrics.csv")
    ours = ours[ours["method"].isin(methods or ours["method"]) & ours["seed"].isin(seeds or ours["seed"])]
    run_json = Path(results_dir) / suite / "run.json"
    ours_run = json.loads(run_json.read_text()) if run_json.is_file() else {}
    committed, committed_info = committed_run(suite, repo)
    if not set(zip(ours["method"], ours["seed"])) & set(zip(committed["method"], committed["seed"])):
        raise UserInputError(f"{results_dir}/{suite} shares no (method, seed) cell with the committed results")
    if ours_run.get("profile", committed_info.get("profile")) != committed_info.get("profile"):
        raise UserInputError(f"{results_dir}/{suite} is a {ours_run['profile']!r}-profile run; the committed one is "
                             f"{committed_info.get('profile')!r}: nothing to compare")
    mine, theirs = ours_run.get("hardware_signature"), committed_info.get("hardware_signature")
    exact = mine is not None and mine == theirs
    within = "final metrics compared within tolerances (README, 'Reproducing the committed numbers')"
    if exact:
        case = (f"same hardware signature as the committed run ({mine}: {_describe(ours_run['hardware'])}): "
                "every value must be identical")
    elif theirs is None or mine is None:
        case = f"{'the committed run' if theirs is None else 'this run'} records no hardware signature: {within}"
    else:
        case = (f"hardware differs from the committed run "
                f"({_difference(committed_info['hardware'], ours_run['hardware'])}): {within}")
    notes = []
    if ours_run.get("config_hash") not in (None, committed_info.get("config_hash")):
        notes.append(f"note: the resolved config differs from the committed run's ({committed_info.get('config_hash')}"
                     f" → {ours_run['config_hash']}): the committed results are from other settings")
    return Comparison(exact, case, compare(ours, committed, exact), notes)


def _describe(hw: dict) -> str:
    return f"{hw['cpu_model']}, torch {hw['torch']}, {hw['threads']} threads"


def _difference(committed: dict, ours: dict) -> str:
    out = []
    for key in ("cpu_model", "torch", "threads"):
        if committed.get(key) != ours.get(key):
            out.append(f"{key} {committed.get(key)} → {ours.get(key)}")
    theirs, mine = set(committed.get("isa_flags", ())), set(ours.get("isa_flags", ()))
    if theirs != mine:
        out.append("ISA flags " + " ".join([f"-{f}" for f in sorted(theirs - mine)]
                                           + [f"+{f}" for f in sorted(mine - theirs)]))
    return "; ".join(out)


def verify(suite: str, results_dir: Path | None = None, run: bool = False, methods: list[str] | None = None,
           seeds: list[int] | None = None, cache_dir: Path | None = None, threads: int | None = None,
           repo: Path = REPO_ROOT) -> int:
    """``python -m benchmark verify``: compare a run (made now with ``run``, else read from ``results_dir``) with
    the committed results; print the comparison; 0 when everything reproduced, ``EXIT_MISS`` otherwise."""
    import benchmark.suites  # noqa: F401  (registers every suite; verify is also called as a library function)
    from benchmark.registry import REGISTRY

    spec = REGISTRY.suite(suite)  # an unknown name is a one-line user error
    if run:
        from benchmark.runner import RunOptions, run_suite

        _, info = committed_run(spec.name, repo)
        # never into the committed results/ unless asked: a rerun there would compare the tree with itself
        results_dir = Path(results_dir or tempfile.mkdtemp(prefix=f"cvpdl-verify-{spec.name}-"))
        device = "cuda" if str(info.get("device", "cpu")).startswith("cuda") else "cpu"
        run_suite(RunOptions(spec.name, methods=methods or info["methods"], seeds=seeds or info["seeds"],
                             profile=info["profile"], results_dir=results_dir, device=device,
                             data=info.get("data", "digits"), data_root=info.get("data_root"),
                             clip=info.get("clip"), clip_weights=info.get("clip_weights"), cache_dir=cache_dir,
                             threads=threads or info.get("threads"),
                             # the tuned values the committed run used
                             tuned_values=from_stored(info["params"]) if info.get("params") else None))
        print(f"\nverify: ran {spec.name} into {results_dir}")
    comparison = compare_with_committed(spec.name, Path(results_dir or "results"), repo, methods, seeds)
    print(comparison.report())
    return 0 if comparison.misses.empty else EXIT_MISS
