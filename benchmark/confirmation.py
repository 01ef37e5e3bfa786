"""The pre-registered confirmation: a plan written from the development pilot alone, run once, and checked before
the report decides anything from it.

``plan --suite S`` reads the pilot (seeds 0-4 of ``results/S``) and writes ``results/confirmation/S/plan.json``: the
primary claims with their metric, direction and margin, α, the error family (every primary claim of the report), the
power target, the seeds each claim needs and one seed count for the suite, a list of seeds never used before, one
look and its boundary, the commit. ``run --plan`` runs exactly that; ``report`` decides from a confirmation only
when its seeds, methods, profile and config are the plan's.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from benchmark import reproducibility
from benchmark.params import TUNED, tuning_seeds
from benchmark.claims import ALPHA, Tested, adjust_many, decide
from benchmark.findings import SuiteReport, report_family
from benchmark.power import TARGET_POWER, planned_seeds, tost_power, ttest_power
from benchmark.registry import REGISTRY
from benchmark.results import read_metrics, write_json
from cvpdl.errors import UserInputError

CONFIRMATION = "confirmation"  # results_dir/confirmation/<suite>/: the planned confirmation and its plan.json
PILOT_SEEDS = (0, 1, 2, 3, 4)  # the development pilot: what a plan may be computed from
SEED_CAP = 64  # the most seeds a plan asks of one suite; a claim that needs more is planned underpowered, and says so
FIRST_NEW_SEED = 200  # confirmation seeds start here (the staged reruns used 100-164, tuning uses 1000+)
PROCEDURE = ("one look at the planned n; each claim one decision (difference test, or TOST within ±δ), Shaffer's "
             "step-down over the family's claims at α")


def plan_path(results_dir: Path, suite: str, tuned: bool = False) -> Path:
    """``DIR/confirmation/<suite>/plan.json``; the tuned regime's: ``DIR/tuned/confirmation/<suite>/plan.json``
    (``DIR/tuned/`` mirrors ``DIR/`` for the tuned values)."""
    return Path(results_dir) / (TUNED if tuned else "") / CONFIRMATION / suite / "plan.json"


def plans(results_dir: Path, suite: str) -> dict[Path, list[int]]:
    """Every plan of ``suite`` under ``results_dir`` (both regimes) → the seeds it reserves."""
    return {path: json.loads(path.read_text())["seeds"] for path in sorted(Path(results_dir).rglob("plan.json"))
            if path.parent.name == suite and path.parent.parent.name == CONFIRMATION}


def used_seeds(results_dir: Path, suite: str, besides: Path | None = None) -> set[int]:
    """Every seed of ``suite`` anywhere under ``results_dir`` (development, tuning, staged reruns, and the seeds
    other plans reserve; ``besides``: a folder left out): no confirmation may reuse one."""
    seeds: set[int] = set()
    for path in Path(results_dir).rglob("metrics.csv"):
        if besides is not None and Path(besides) in path.parents:  # its metrics.csv and its cells' own
            continue
        if {"mlartifacts", "mlruns"} & set(path.parts):  # MLflow's copies of results files, wherever they came from
            continue
        frame = pd.read_csv(path, usecols=["suite", "seed"])
        seeds |= set(frame.loc[frame["suite"] == suite, "seed"].astype(int))
    for path in Path(results_dir).rglob("best.json"):  # tuning studies' seeds
        if path.parent.parent.name == suite:
            seeds |= set(tuning_seeds(json.loads(path.read_text())))
    for path, reserved in plans(results_dir, suite).items():
        if besides is None or Path(besides) not in (path.parent, *path.parents):
            seeds |= set(reserved)
    return seeds


def _power(t: Tested, n: int) -> float:
    """Power of the claim's decision at ``n`` seeds, at the pilot's effect and the plan's first-step level α / m:
    the difference test's (two-sided paired t) or, where the pilot's effect sits inside ±δ, the TOST's lower
    bound."""
    level, nobs = ALPHA / t.family_size, np.array([n])
    difference = float(ttest_power(abs(t.diff) / t.sd, nobs, level)[0]) if t.sd > 0 else 1.0
    if t.claim.delta is None or abs(t.diff) >= t.claim.delta:
        return difference
    return max(difference, float(tost_power(abs(t.diff), t.sd, t.claim.delta, nobs, level)[0]))


def build_plan(suite: str, results_dir: Path, tuned: bool = False, seed_cap: int = SEED_CAP) -> dict:
    """The plan of ``suite``'s confirmation from its development pilot (``results_dir/<suite>``, or
    ``results_dir/tuned/<suite>`` for the tuned regime, whose values the plan then fixes; seeds 0-4 only).
    ``seed_cap`` is a budget: a claim needing more seeds is planned underpowered, and says so."""
    if not len(PILOT_SEEDS) <= seed_cap <= SEED_CAP:
        raise UserInputError(f"--seed-cap {seed_cap}: must lie in [{len(PILOT_SEEDS)}, {SEED_CAP}]")
    spec = REGISTRY.suite(suite)
    if not isinstance(spec.report_sections, SuiteReport):
        raise UserInputError(f"suite {suite!r} declares no claims: nothing to plan")
    pilot_dir = Path(results_dir) / (TUNED if tuned else "") / suite
    if not (pilot_dir / "metrics.csv").is_file():
        raise UserInputError(f"{pilot_dir}: no development pilot to plan from (run the suite on seeds 0-4"
                             + (" with --params tuned" if tuned else "") + " first)")
    frame = read_metrics(pilot_dir / "metrics.csv")
    run = json.loads((pilot_dir / "run.json").read_text())
    pilot = frame[frame["seed"].isin(PILOT_SEEDS)]
    if sorted(pilot["seed"].unique()) != list(PILOT_SEEDS):
        raise UserInputError(f"{pilot_dir}: the development pilot needs seeds {list(PILOT_SEEDS)}, found "
                             f"{sorted(pilot['seed'].unique().tolist())}")
    family = report_family()
    tested = spec.report_sections.tested(pilot)
    claims = []
    primaries = [t for t in tested.values() if t.claim.role == "primary"]
    level = ALPHA / len(family)
    for t in primaries:
        needs = float(planned_seeds(t.diff, t.sd, t.claim.delta, level, seed_cap))
        claims.append({
            "key": t.claim.key, "text": t.claim.text, "a": t.claim.a.__dict__, "b": t.claim.b.__dict__,
            "expected": t.claim.expected, "delta": t.claim.delta,
            "pilot": {"n": t.n, "diff": t.diff, "sd": t.sd, "ci": [t.ci_low, t.ci_high]},
            "level": level, "seeds_needed": _finite(needs)})
    n = suite_seeds([c["seeds_needed"] for c in claims], seed_cap)
    for c, t in zip(claims, primaries):
        c["power_at_n"] = round(_power(t, n), 3) if t.n >= 2 else None
        c["underpowered"] = c["seeds_needed"] is None or c["seeds_needed"] > n
    taken = used_seeds(results_dir, suite, besides=plan_path(results_dir, suite, tuned).parent)
    seeds = []
    candidate = FIRST_NEW_SEED
    while len(seeds) < n:
        if candidate not in taken:
            seeds.append(candidate)
        candidate += 1
    commit, dirty = reproducibility.git_state()
    return {
        "suite": suite, "written": datetime.date.today().isoformat(), "commit": commit, "dirty": dirty,
        "pilot": {"folder": str(pilot_dir), "seeds": list(PILOT_SEEDS), "config_hash": run["config_hash"],
                  "metrics_sha256": hashlib.sha256((pilot_dir / "metrics.csv").read_bytes()).hexdigest()},
        "profile": run["profile"], "methods": run["methods"], "config_hash": run["config_hash"],
        "regime": TUNED if tuned else "papers", "params": run.get("params") or {},
        "alpha": ALPHA, "power_target": TARGET_POWER, "family": family, "family_size": len(family),
        "procedure": PROCEDURE, "seed_cap": seed_cap,
        "looks": [{"n": n, "boundary": f"adjusted p < {ALPHA:g} (one look: the whole α)"}],
        "claims": claims, "controls": [t.claim.key for t in tested.values() if t.claim.role == "control"],
        "n": n, "seeds": seeds,
    }


def suite_seeds(needed: list[float | None], cap: int = SEED_CAP) -> int:
    """A suite's one seed count: the most its claims need, within [pilot size, ``cap``]."""
    n = cap if None in needed else int(max(needed, default=len(PILOT_SEEDS)))
    return min(cap, max(n, len(PILOT_SEEDS)))


def _finite(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else float(x)


def write_plan(suite: str, results_dir: Path, force: bool = False, tuned: bool = False,
               seed_cap: int | None = None) -> Path:
    """Write the plan once: a plan is never rewritten after its confirmation started (``force`` to replace an
    unrun plan)."""
    path = plan_path(results_dir, suite, tuned)
    if path.exists() and not force:
        raise UserInputError(f"{path} exists: a plan is written once (--force replaces it, only before its run)")
    if (path.parent / "metrics.csv").exists():
        raise UserInputError(f"{path.parent} holds a confirmation already: its plan cannot change")
    plan = build_plan(suite, results_dir, tuned, SEED_CAP if seed_cap is None else seed_cap)
    write_json(path, plan)
    return path


def load_plan(path: Path, suite: str) -> dict:
    try:
        plan = json.loads(Path(path).read_text())
    except OSError as err:
        raise UserInputError(f"plan {path}: {err.strerror or err}") from None
    except ValueError:
        raise UserInputError(f"plan {path}: not valid JSON") from None
    if plan.get("suite") != suite:
        raise UserInputError(f"plan {path} is for suite {plan.get('suite')!r}, not {suite!r}")
    return plan


def plan_mismatch(plan: dict, frame: pd.DataFrame, run: dict) -> str | None:
    """Why a confirmation cannot be decided from (one line), or None where it is exactly its plan's."""
    seeds = {m: set(frame.loc[frame["method"] == m, "seed"].astype(int)) for m in plan["methods"]}
    wanted = set(plan["seeds"])
    for method, got in seeds.items():
        if got != wanted:
            extra, lacking = sorted(got - wanted), sorted(wanted - got)
            return (f"`{method}` has {len(got)} of the plan's {len(wanted)} seeds"
                    + (f", {len(lacking)} missing (first {lacking[0]})" if lacking else "")
                    + (f", {len(extra)} not planned (first {extra[0]})" if extra else ""))
    if run.get("config_hash") != plan["config_hash"]:
        return f"config hash {str(run.get('config_hash'))[:8]} is not the plan's {plan['config_hash'][:8]}"
    if run.get("profile") != plan["profile"]:
        return f"profile {run.get('profile')!r} is not the plan's {plan['profile']!r}"
    return None


def check_seed_roles(results_dir: Path, suite: str, seeds: list[int], role: str,
                     plan_folder: Path | None = None) -> None:
    """A seed is development, tuning or confirmation, never two: refuse ``seeds`` of ``role`` that another role
    holds (the plans' seeds for development and tuning runs; every used or otherwise reserved seed for the run of
    the plan in ``plan_folder``)."""
    if role == "confirmation":
        clash = sorted(set(seeds) & used_seeds(Path(results_dir), suite, besides=plan_folder))
        where = "development or tuning runs or another plan"
    else:
        reserved = plans(results_dir, suite)
        clash = sorted(set(seeds) & {s for planned in reserved.values() for s in planned})
        where = "the confirmation plan " + ", ".join(str(path) for path, planned in reserved.items()
                                                     if set(clash) & set(planned))
    if clash:
        raise UserInputError(f"seed {clash[0]}{f' (and {len(clash) - 1} more)' if len(clash) > 1 else ''} is "
                             f"reserved by {where}: development, tuning and confirmation seeds never overlap")


def simulate(claims: list[dict], truth: np.ndarray, reps: int, seed: int,
             n: dict[str, int] | None = None) -> np.ndarray:
    """The whole procedure on simulated seeds: per replicate, a pilot of ``len(PILOT_SEEDS)`` seeds plans each
    suite's n (``planned_seeds`` at α / m, ``suite_seeds``), then one look at that n decides every claim (paired
    t-test and TOST, Shaffer over the family, ``decide``). ``claims``: the family, each ``{"suite", "sd", "delta"}``
    (the pilot's sd); ``truth``: each claim's true mean difference; ``n``: fixed seed counts per suite instead of
    planning. Per-seed differences are normal with the claim's sd. Returns the decisions, replicates × claims."""
    rng = np.random.default_rng(seed)
    m = len(claims)
    sd = np.array([c["sd"] for c in claims], dtype=float)
    delta = [c["delta"] for c in claims]
    suites = sorted({c["suite"] for c in claims})
    if n is None:  # plan: each suite's n from its pilot's estimates
        pilot = rng.normal(truth, sd, size=(reps, len(PILOT_SEEDS), m))
        mean, spread = pilot.mean(axis=1), pilot.std(axis=1, ddof=1)
        needs = np.stack([planned_seeds(mean[:, i], spread[:, i], delta[i], ALPHA / m, SEED_CAP)
                          for i in range(m)], axis=1)
        sizes = {s: np.minimum(SEED_CAP, np.maximum(len(PILOT_SEEDS), np.max(
            needs[:, [i for i, c in enumerate(claims) if c["suite"] == s]], axis=1))).astype(int) for s in suites}
    else:
        sizes = {s: np.full(reps, n[s]) for s in suites}
    p_difference, p_equivalence, diffs = np.full((reps, m), np.nan), np.full((reps, m), np.nan), np.zeros((reps, m))
    for i, claim in enumerate(claims):
        count = sizes[claim["suite"]]
        for size in np.unique(count):  # one vectorised block per planned n
            rows = np.flatnonzero(count == size)
            x = rng.normal(truth[i], sd[i], size=(len(rows), size))
            diffs[rows, i] = x.mean(axis=1)
            p_difference[rows, i] = stats.ttest_1samp(x, 0.0, axis=1).pvalue
            if delta[i] is not None:
                p_equivalence[rows, i] = np.maximum(
                    stats.ttest_1samp(x, -delta[i], axis=1, alternative="greater").pvalue,
                    stats.ttest_1samp(x, delta[i], axis=1, alternative="less").pvalue)
    owner = np.concatenate([np.arange(m), np.arange(m)])
    adjusted = adjust_many(np.concatenate([p_difference, p_equivalence], axis=1), owner, m)
    return decide(diffs, adjusted[:, :m], adjusted[:, m:])
