"""``python -m benchmark sensitivity --suite S``: each primary claim's Δ across the values of the knob that may
drive it (the suite's declared ``sweeps``), on the development seeds.

The suite's run at the profile (its cells reused where they exist) is the default; each other value of a knob
reruns only the methods it changes, and the claim is tested with those methods' rows swapped in. The table
(``sensitivity.csv`` beside ``metrics.csv``) feeds a figure, a line per claim in ``summary.md`` and, in REPORT.md,
"depends on <knob>" wherever a swept value decides the claim the other way. Exploratory: each value's test is its
own (unadjusted) and on the seeds the testbed was developed on. With ``--population N``, a suite whose members may
differ in settings (kd) trains each sweep's values × seeds as populations of N (``train_sweep_together``).
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from benchmark.claims import Arm, Tested, evaluate_family
from benchmark.config import resolve as resolve_config
from benchmark.registry import REGISTRY, SuiteSpec, Sweep
from benchmark.results import atomic_write_csv
from benchmark.robustness import COLUMNS
from cvpdl.errors import UserInputError

def default_value(spec: SuiteSpec, knob: str, profile: str):
    sections = dict(spec.config)
    for method in REGISTRY.methods(spec.name):
        sections.update(method.config)
    section, key = knob.split(".", 1)
    return resolve_config(sections, spec.profiles[profile], [])[section][key]


def swept_frame(base: pd.DataFrame, swept: pd.DataFrame, sweep: Sweep, seeds: list[int]) -> pd.DataFrame:
    """The base run with the rows of the swept methods replaced by those of the run at another value."""
    keep = base[~base["method"].isin(sweep.methods) & base["seed"].isin(seeds)]
    return pd.concat([keep, swept[swept["method"].isin(sweep.methods) & swept["seed"].isin(seeds)]],
                     ignore_index=True)


def tested_claim(spec: SuiteSpec, frame: pd.DataFrame, key: str) -> Tested:
    """One claim alone (a family of one: the unadjusted test) on ``frame``."""
    claim = next((c for c in spec.report_sections.family(frame) if c.key == key), None)
    if claim is None:
        raise UserInputError(f"suite {spec.name!r} declares no claim {key!r} for the methods in this run")
    return evaluate_family(frame, [replace(claim, role="secondary")])[key]


def run_sensitivity(options, asked: str | None = None, claims: list[str] | None = None) -> pd.DataFrame:
    """``options``: the ``RunOptions`` of the suite's default run (suite, seeds, profile, results dir, device ...);
    each sweep value is that run with ``--set knob=value`` and only the swept methods. ``asked``
    (``section.key=v1,v2,...``): that knob instead of the declared sweeps, over every method of each primary claim
    (of ``claims`` only, if given)."""
    from benchmark.plan import chosen_population
    from benchmark.runner import run_suite

    spec = REGISTRY.suite(options.suite)
    options = replace(options, population=chosen_population(options.population, spec, options.device))
    if asked is None and not spec.sweeps:
        raise UserInputError(f"suite {spec.name!r} declares no sweeps")
    if claims and asked is None:
        raise UserInputError("--claims goes with --sweep (the declared sweeps name their own claims)")
    sweeps = spec.sweeps if asked is None else asked_sweeps(spec, *parse_sweep(spec, asked, options.profile), claims)
    base_dir = _base_folder(options)
    _check_table(base_dir / "sensitivity.csv", {sweep.knob for sweep in sweeps})
    base = run_suite(replace(options, methods=None))
    if options.population > 1 and spec.member_settings:
        for sweep in sweeps:
            train_sweep_together(options, spec, sweep)
    config_hash = json.loads((base_dir / "run.json").read_text())["config_hash"]
    rows, runs = [], {}
    for sweep in sweeps:
        default = default_value(spec, sweep.knob, options.profile)
        for value in sweep.values:
            if value == default:
                frame = base
            else:
                if (sweep.knob, value, sweep.methods) not in runs:
                    runs[(sweep.knob, value, sweep.methods)] = run_suite(value_options(options, sweep, value))
                frame = swept_frame(base, runs[(sweep.knob, value, sweep.methods)], sweep, options.seeds)
            t = tested_claim(spec, frame[frame["seed"].isin(options.seeds)], sweep.claim)
            rows.append({"claim": sweep.claim, "text": t.claim.text, "knob": sweep.knob, "value": value,
                         "default": value == default, "n": t.n, "diff": t.diff, "ci_low": t.ci_low,
                         "ci_high": t.ci_high, "p": t.p, "direction": t.direction, "config_hash": config_hash})
    table = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_csv(base_dir / "sensitivity.csv", table)
    from benchmark.report import render_suite

    render_suite(spec.name, base_dir, Path(options.results_dir) if base_dir.parent == Path(options.results_dir)
                 else None)
    return table


def parse_sweep(spec: SuiteSpec, asked: str, profile: str) -> tuple[str, tuple]:
    """``section.key=v1,v2,...`` → the knob and its values, read as its default's type, the default among them."""
    from benchmark.config import apply_override

    knob, _, listed = asked.partition("=")
    try:
        default = default_value(spec, knob, profile)
    except (KeyError, ValueError):
        raise UserInputError(f"--sweep {asked}: suite {spec.name!r} has no setting {knob!r}") from None
    section, key = knob.split(".", 1)
    cfg, values = {section: {key: default}}, {default}
    for raw in filter(None, listed.split(",")):
        apply_override(cfg, f"{knob}={raw}")  # read as the default's type, as --set reads it
        values.add(cfg[section][key])
    if len(values) < 2:
        raise UserInputError(f"--sweep {asked}: give values besides the default after '=', separated by commas")
    return knob, tuple(sorted(values))


def asked_sweeps(spec: SuiteSpec, knob: str, values: tuple, claims: list[str] | None) -> tuple[Sweep, ...]:
    """One sweep of ``knob`` per primary claim (of ``claims``), over every method the claim compares."""
    from benchmark.findings import primary_claims

    primary = primary_claims(spec.name)
    if unknown := sorted(set(claims or ()) - {c.key for c in primary}):
        raise UserInputError(f"--claims {unknown[0]}: not a primary claim of suite {spec.name!r}; choose from: "
                             f"{', '.join(c.key for c in primary)}")
    return tuple(Sweep(c.key, knob, values, tuple(dict.fromkeys(arm.method for arm in (c.a, c.b)
                                                                   if isinstance(arm, Arm))))
                 for c in primary if not claims or c.key in claims)


def _check_table(path: Path, knobs: set[str]) -> None:
    """A sweep never overwrites another knob's table (a declared sweep's, or another question's)."""
    if path.is_file() and (held := set(pd.read_csv(path, usecols=["knob"])["knob"])) != knobs:
        raise UserInputError(f"{path} holds the sweep of {', '.join(sorted(held))}: sweep "
                             f"{', '.join(sorted(knobs))} into another --results-dir")


def value_options(options, sweep: Sweep, value):
    """The run of ``sweep``'s methods at one value of its knob."""
    return replace(options, methods=list(sweep.methods), overrides=[*options.overrides, f"{sweep.knob}={value}"])


def train_sweep_together(options, spec: SuiteSpec, sweep: Sweep) -> None:
    """``--population N``: the sweep's other values × the seeds of each swept method, cut into consecutive chunks of N
    (values outer, seeds inner: a function of the options alone), each chunk one population whose members differ in
    the knob (``invocation.member_knob``), inside one MLflow run of its own. Each member is stored as a cell of its
    value's run, keyed as that run keys its cells (by N), and that run then reuses it: a member's numbers depend on
    its population's size, not on its companions or its place (measured bitwise: docs/performance.md). A knob the
    members cannot differ in (e.g. one that shapes the model) is left to the runs, one population per value."""
    from benchmark.config import population_chunks
    from benchmark.invocation import member_knob, open_invocation, train_populations
    from benchmark.plan import apply_plan

    methods = [REGISTRY.method(spec.name, name) for name in sweep.methods]
    if not all(member_knob(spec, method, sweep.knob) for method in methods):
        return
    default = default_value(spec, sweep.knob, options.profile)
    values = [value for value in sweep.values if value != default]
    invocations = [open_invocation(apply_plan(value_options(options, sweep, value))) for value in values]
    members = [(invocation.runner, seed, {sweep.knob: float(value)})
               for invocation, value in zip(invocations, values) for seed in options.seeds]
    train_populations(invocations, [(method, chunk) for method in methods
                                    for chunk in population_chunks(members, options.population)],
                      f"{spec.name}-sweep-{sweep.knob}-{time.strftime('%Y%m%d-%H%M%S')}", {"sweep": sweep.knob},
                      f"{sweep.knob} values × seeds")


def _base_folder(options) -> Path:
    from benchmark.plan import resolve, results_folder, run_config_hash, tuned_configs

    spec, methods, cfg = resolve(options)
    params, _ = tuned_configs(options, methods)
    return results_folder(options, methods, run_config_hash(options, cfg, params))
