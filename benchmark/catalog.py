"""What the command line can check before it imports torch: suite, method, profile and config-key names, cached per
code version as plain data, and the pre-flight check of a command's arguments against them.

Building the catalog imports every suite (torch, open_clip: seconds); it is written once per code version to the
cache dir and read back without those imports, so a typo is refused in a fraction of a second.
"""
from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

from benchmark import config as config_lib
from benchmark.config import check_seeds
from benchmark.registry import SUITE_NAMES
from benchmark.sizing import AUTO, population_size
from cvpdl.errors import UserInputError

CATALOG_VERSION = 6  # bump when the catalog's shape changes


def suite_catalog() -> list[dict]:
    """Suites, datasets, methods, papers, deviations, profiles and every config key's default, as plain data."""
    from benchmark.paths import REPO_ROOT, default_cache_dir, source_digest

    digest = source_digest(REPO_ROOT / "benchmark", REPO_ROOT / "cvpdl")
    path = default_cache_dir() / "catalog" / f"{digest}-v{CATALOG_VERSION}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    from benchmark.registry import REGISTRY
    from benchmark.suites import SUITES

    catalog = []
    for suite in REGISTRY.suites():
        if suite.name not in SUITES:
            continue
        sections = dict(suite.config)
        for method in REGISTRY.methods(suite.name):
            sections.update(method.config)
        defaults = config_lib.defaults(sections)
        catalog.append({
            "name": suite.name, "question": suite.question, "dataset": suite.dataset, "datasets": list(suite.datasets),
            "profiles": list(suite.profiles), "profile_values": suite.profiles, "defaults": defaults,
            "choices": config_lib.choices(sections), "population": suite.run_population is not None,
            "methods": [{"name": m.name, "paper": m.paper, "deviations": [d.line() for d in m.deviations],
                         "population": bool(getattr(REGISTRY.build(m, defaults), "population", False)),
                         "checks": [f"{check.__module__}:{check.__qualname__}" for check in m.checks]}
                        for m in REGISTRY.methods(suite.name)]})
    try:
        from benchmark.results import atomic_write_text

        atomic_write_text(path, json.dumps(catalog, indent=1))
    except OSError:  # an unwritable cache only costs speed
        pass
    return catalog


def preflight(args) -> None:
    """Refuse unknown names, bad seeds and unknown or unreadable ``--set`` keys before anything heavy is imported
    or anything written (the full validation of values still runs when the plan is resolved)."""
    from benchmark.registry import REGISTRY

    suite_name = getattr(args, "suite", None)
    device = getattr(args, "device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise UserInputError(f"unknown device {device!r}; choose from: auto, cpu, cuda")
    data = getattr(args, "data", "digits")
    if data not in ("digits", "coco", "imagefolder"):
        raise UserInputError(f"unknown --data {data!r}; choose from: digits, coco, imagefolder")
    check_seeds(getattr(args, "seeds", None))
    if suite_name is None or suite_name in {s.name for s in REGISTRY.suites()}:
        return  # a suite registered in this process (a test's own) is validated by the registry
    if suite_name not in SUITE_NAMES:
        raise UserInputError(f"unknown suite {suite_name!r}; choose from: {', '.join(SUITE_NAMES)}")
    suite = next((s for s in suite_catalog() if s["name"] == suite_name), None)
    if suite is None:  # a suite this code version does not register
        raise UserInputError(f"unknown suite {suite_name!r}; choose from: "
                             f"{', '.join(s['name'] for s in suite_catalog())}")
    known = [m["name"] for m in suite["methods"]]
    methods = getattr(args, "methods", None) or []
    for name in methods:
        if name not in known:
            raise UserInputError(f"unknown method {name!r} for suite {suite_name!r}; choose from: {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise UserInputError(f"--methods lists a method twice: {' '.join(methods)}")
    population = getattr(args, "population", 1)  # "auto" is chosen per device type (``sizing``)
    if population != AUTO and population < 1:
        raise UserInputError(f"--population must be at least 1, got {population}")
    if population != AUTO and population > 1 and not suite["population"]:
        able = ", ".join(s["name"] for s in suite_catalog() if s["population"])
        raise UserInputError(f"suite {suite_name!r} trains every seed alone: --population > 1 needs a suite with "
                             f"population training ({able})")
    profile = getattr(args, "profile", None)
    if profile is not None and profile not in suite["profiles"]:
        raise UserInputError(f"unknown profile {profile!r}; choose from: {', '.join(suite['profiles'])}")
    cfg = copy.deepcopy(suite["defaults"])
    config_lib.apply_profile(cfg, suite["profile_values"].get(profile or "default", {}))
    config_file = getattr(args, "config_file", None)
    if config_file is not None:
        config_lib.apply_file(cfg, config_lib.read_config_file(Path(config_file)), "--config")
    for assignment in getattr(args, "overrides", None) or []:
        config_lib.apply_override(cfg, assignment)
        section, key = assignment.split("=", 1)[0].split(".", 1)
        allowed = suite["choices"].get(section, {}).get(key)
        if allowed is not None and cfg[section][key] not in allowed:
            raise UserInputError(f"{section}.{key} must be one of {', '.join(map(str, allowed))}, got "
                                 f"{cfg[section][key]!r}")
    for method in suite["methods"]:  # cross-section constraints, from torch-free modules (``MethodSpec.checks``)
        if not methods or method["name"] in methods:
            for check in method["checks"]:
                module, name = check.split(":")
                getattr(importlib.import_module(module), name)(cfg)


def dry_run(args) -> str:
    """What ``run`` would do, from the catalog and the committed run alone (no torch, nothing written): its cells,
    seeds and a wall time scaled from the suite's committed run of the same profile (cell-seconds per cell × cells /
    jobs), which this machine may not match."""
    suite = next(s for s in suite_catalog() if s["name"] == args.suite)
    seeds = list(args.seeds)
    if args.plan is not None:
        seeds = json.loads(Path(args.plan).read_text())["seeds"]
    methods = args.methods or [m["name"] for m in suite["methods"]]
    together = [m["name"] for m in suite["methods"] if m["population"] and m["name"] in methods]
    size, why = population_size(args.population, args.suite, bool(together), "cuda" if args.device == "cuda" else "cpu")
    chunks = config_lib.population_chunks(seeds, size)
    trained = ("each trained alone" if size == 1 or not together else
               f"populations of {', '.join(together)}: {' | '.join(' '.join(map(str, c)) for c in chunks)}"
               + ("; the others' seeds alone" if len(together) < len(methods) else ""))
    lines = [f"{args.suite}, profile {args.profile}: {len(methods) * len(seeds)} cells = {len(methods)} methods × "
             f"{len(seeds)} seeds, {trained} (--jobs {args.jobs})",
             f"  methods: {' '.join(methods)}", f"  seeds: {' '.join(map(str, seeds))}"]
    if args.population == AUTO:
        lines.append(f"  population: auto → {size} ({why}" + ("; --device auto: as on a CPU, a GPU chooses its own)"
                                                             if args.device == "auto" else ")"))
    committed = Path(args.results_dir) / args.suite / "run.json"
    run = json.loads(committed.read_text()) if committed.is_file() else {}
    if run.get("profile") != args.profile or not run.get("wall_seconds"):
        return "\n".join([*lines, f"  time: no recorded run of this profile in {committed.parent}: no estimate"])
    cells = len(run["methods"]) * len(run["seeds"])
    per_cell = (run["wall_seconds"] - run.get("prepare_seconds", 0.0)) * run.get("jobs", 1) / cells
    estimate = per_cell * len(methods) * len(seeds) / args.jobs + run.get("prepare_seconds", 0.0)
    return "\n".join([*lines, f"  time: ≈{estimate / 60:.1f} min (the committed run: {run['wall_seconds']:.0f} s for "
                               f"{cells} cells at --jobs {run.get('jobs', 1)}, {run.get('threads')} thread(s) each, "
                               f"shared set-up {run.get('prepare_seconds', 0.0):.0f} s; finished cells are reused and "
                               "cost nothing" + ("; a population member is counted at a cell's cost alone, as on a "
                                                 "CPU: a GPU's is measured by perf --population"
                                                 if size > 1 else "") + ")"])
