"""What a run is, decided before anything runs: the validated options, the resolved config (and each tuned
method's), the device, the config hash, the results folder and the ``run.json`` that describes it."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from benchmark import config as config_lib
from benchmark import distributed, reproducibility
from benchmark.config import check_seeds
from benchmark.confirmation import CONFIRMATION, check_seed_roles, load_plan
from benchmark.params import TUNED, TunedValues, from_stored, load_params, stored, study_profile
from benchmark.registry import REGISTRY, MethodSpec, SuiteSpec
from benchmark.sizing import AUTO, population_size
from cvpdl.errors import UserInputError


@dataclass
class RunOptions:
    suite: str
    methods: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    profile: str = "default"
    overrides: list[str] = field(default_factory=list)
    results_dir: Path = Path("results")
    device: str = "auto"
    data: str = "digits"
    data_root: Path | None = None
    clip: str | None = None
    clip_weights: Path | None = None
    cache_dir: Path | None = None
    threads: int | None = None
    force: bool = False
    resume: bool = False  # continue interrupted cells from their last per-epoch checkpoint
    jobs: int = 1  # worker processes that train cells side by side (each with cores / jobs threads)
    # seeds of a method trained together as one batched model (consecutive chunks of the seed list; suites with
    # ``run_population``), or "auto": chosen per device type from the committed perf measurement (``sizing``)
    population: int | str = 1
    executor: str = "local"  # "submitit": each cell a job (SLURM, or submitit's local executor without it)
    slurm_partition: str | None = None
    slurm_time: int = 240  # minutes per cell's job
    gpus_per_cell: int = 0
    submitit_folder: Path | None = None  # the jobs' pickles and logs (None: DIR/submitit)
    # where submitit runs the jobs: auto = SLURM where `srun` is on PATH, else processes on this machine (local)
    submitit_cluster: str = "auto"
    # torch threads of the shared set-up (None: the run's). Cached artefacts are keyed by the thread count, so
    # --jobs workers get their parent's, with which it prepared them, and load them instead of training them again
    prepare_threads: int | None = None
    config_file: Path | None = None  # YAML/JSON {section: {key: value}} over the profile; overrides still win
    # best.json of `benchmark tune`: each method's tuned values (--set still wins). "tuned": the suite's own study,
    # DIR/<suite>/tuning/best.json; None or "none": the defaults (the papers' settings: one of the two regimes)
    params: Path | None = None
    tuned_values: TunedValues | None = None  # the same as values (a run.json's "params" read back), without a file
    allow_stale: bool = False  # use a best.json tuned on other code (refused otherwise)
    plan: Path | None = None  # a pre-registered confirmation plan.json: its seeds, methods and profile, run once
    # the (commit, dirty) the invocation started at, handed to its --jobs workers and submitit jobs: a commit made
    # while they run must not give their cells another key than the parent looks them up by
    code_state: tuple[str, bool] | None = None

    def data_options(self) -> dict:
        """The data and CLIP choices that shape results beside the config: hashed with it, written to run.json."""
        return {"data": self.data, "data_root": str(self.data_root) if self.data_root else None,
                "clip": self.clip, "clip_weights": str(self.clip_weights) if self.clip_weights else None}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda: no CUDA device is visible to torch")
    if name not in ("cpu", "cuda"):
        raise UserInputError(f"unknown device {name!r}; choose from: auto, cpu, cuda")
    return torch.device(name)


def chosen_population(population: int | str, spec: SuiteSpec, device: str) -> int:
    """``--population`` as a size: ``auto`` chosen for the device ``device`` names (``sizing``)."""
    return population_size(population, spec.name, spec.run_population is not None, pick_device(device).type,
                           distributed.world_size())[0]


def apply_plan(options: RunOptions) -> RunOptions:
    """``run --plan``: the plan's seeds, methods and profile into ``DIR/confirmation/<suite>/`` (DIR the folder
    holding ``confirmation/``), its seeds checked against every other use; any other choice of those is refused.
    Without a plan: the seeds checked against the suite's committed plan, which reserves them."""
    if options.plan is None:
        check_seed_roles(Path(options.results_dir), options.suite, options.seeds, "development")
        return options
    plan = load_plan(options.plan, options.suite)
    path = Path(options.plan).resolve()
    if path.parent.name != options.suite or path.parent.parent.name != CONFIRMATION:
        raise UserInputError(f"--plan {options.plan}: a plan lives at DIR/{CONFIRMATION}/{options.suite}/plan.json "
                             f"(the tuned regime's at DIR/{TUNED}/{CONFIRMATION}/{options.suite}/plan.json)")
    if options.overrides or options.config_file or options.params not in (None, Path("none")) or options.methods:
        raise UserInputError("--plan fixes the config, methods and seeds: drop --set, --config, --params and --methods")
    root = path.parent.parent.parent
    root = root.parent if root.name == TUNED else root  # seeds are checked against both regimes' results
    check_seed_roles(root, options.suite, plan["seeds"], "confirmation", plan_folder=path.parent)
    # the tuned regime's values as the plan fixed them (not whatever best.json holds by the time it runs)
    return replace(options, seeds=list(plan["seeds"]), methods=list(plan["methods"]), profile=plan["profile"],
                   results_dir=path.parent.parent, params=Path("none"),
                   tuned_values=from_stored(plan["params"]) if plan.get("params") else None)


def resolve(options: RunOptions) -> tuple[SuiteSpec, list[MethodSpec], dict]:
    """Validate every user choice before anything is written."""
    spec = REGISTRY.suite(options.suite)
    if options.data not in ("digits", "coco", "imagefolder"):
        raise UserInputError(f"unknown --data {options.data!r}; choose from: digits, coco, imagefolder")
    if options.data not in spec.datasets:
        raise UserInputError(f"suite {spec.name!r} cannot use --data {options.data}; it supports: "
                             f"{', '.join(spec.datasets)}")
    if options.profile not in spec.profiles:
        raise UserInputError(f"unknown profile {options.profile!r}; choose from: {', '.join(spec.profiles)}")
    names = options.methods or [m.name for m in REGISTRY.methods(spec.name)]
    methods = [REGISTRY.method(spec.name, name) for name in names]
    if len(set(names)) != len(names):
        raise UserInputError(f"--methods lists a method twice: {' '.join(names)}")
    check_seeds(options.seeds)
    if options.jobs < 1 or (options.jobs > 1 and distributed.world_size() > 1):
        raise UserInputError(f"--jobs must be at least 1 (and 1 under torchrun), got {options.jobs}")
    explicit = options.population != AUTO
    if explicit and (options.population < 1 or (options.population > 1 and distributed.world_size() > 1)):
        raise UserInputError(f"--population must be at least 1 (and 1 under torchrun), got {options.population}")
    if explicit and options.population > 1 and spec.run_population is None:
        able = ", ".join(suite.name for suite in REGISTRY.suites() if suite.run_population)
        raise UserInputError(f"suite {spec.name!r} trains every seed alone: --population > 1 needs a suite with "
                             f"population training ({able})")
    if options.executor not in ("local", "submitit"):
        raise UserInputError(f"unknown --executor {options.executor!r}; choose from: local, submitit")
    if options.executor == "submitit" and (options.jobs > 1 or distributed.world_size() > 1):
        raise UserInputError("--executor submitit runs each cell as its own job: not with --jobs or under torchrun")
    if options.slurm_time < 1 or options.gpus_per_cell < 0:
        raise UserInputError(f"--slurm-time must be at least 1 minute and --gpus-per-cell at least 0, got "
                             f"{options.slurm_time} and {options.gpus_per_cell}")
    cfg = suite_config(options, spec)
    for method in methods:
        REGISTRY.build(method, cfg)  # constructors validate their config values: fail now, before anything is written
    if options.data != "digits" and (options.data_root is None or not Path(options.data_root).is_dir()):
        raise UserInputError(f"--data {options.data} needs --data-root pointing at an existing folder "
                             f"(got {options.data_root})")
    if (options.clip is None) != (options.clip_weights is None):
        raise UserInputError("--clip and --clip-weights go together: an open_clip architecture and its local file")
    if options.clip_weights is not None and not Path(options.clip_weights).is_file():
        raise UserInputError(f"CLIP checkpoint not found: {options.clip_weights}")
    return spec, methods, cfg


def suite_config(options: RunOptions, spec: SuiteSpec, tuned: dict[str, Any] | None = None) -> dict:
    """The suite's config (every method's sections) under the options' profile, config file and ``--set``, with one
    method's ``tuned`` values under the ``--set`` ones."""
    sections = dict(spec.config)
    for method in REGISTRY.methods(spec.name):
        sections.update(method.config)
    file_values = config_lib.read_config_file(options.config_file) if options.config_file else None
    return config_lib.resolve(sections, spec.profiles[options.profile], options.overrides, file_values, tuned=tuned)


def tuned_configs(options: RunOptions, methods: list[MethodSpec]) -> tuple[TunedValues, dict[str, dict]]:
    """``--params best.json``: per method, its tuned values and the config it runs with (the tuned values over the
    profile and config file; ``--set`` still wins), validated by building the method. Methods absent from the file
    run as is."""
    path = own_study(options) if str(options.params) == TUNED else options.params
    if str(path) == "none":
        path = None
    if path is None and not options.tuned_values:
        return {}, {}
    tuned = (load_params(path, options.suite, options.allow_stale, tuple(options.seeds)) if path
             else options.tuned_values)
    tuned = {m.name: tuned[m.name] for m in methods if tuned.get(m.name)}
    spec, method_cfgs = REGISTRY.suite(options.suite), {}
    for method in methods:
        if method.name in tuned:
            method_cfgs[method.name] = suite_config(options, spec, tuned[method.name])
            REGISTRY.build(method, method_cfgs[method.name])  # its constructor validates the tuned values
    return tuned, method_cfgs


@dataclass(frozen=True)
class Execution:
    """Where this process computes: the same for every cell of an invocation."""

    device: torch.device
    threads: int
    rank: int  # torchrun rank; only rank 0 tracks and writes
    world: int  # number of torchrun ranks (1 without torchrun)


def run_config_hash(options: RunOptions, cfg: dict, tuned: TunedValues) -> str:
    """What decides a run's numbers besides code and seeds: the config, the data and CLIP options, tuned values (in
    their stored form, which the committed hashes were made from)."""
    return config_lib.config_hash({"cfg": cfg, **options.data_options(),
                                   **({"params": stored(tuned)} if tuned else {})})


def own_study(options: RunOptions) -> Path:
    """The suite's own tuning study, which ``--params tuned`` names."""
    path = Path(options.results_dir) / options.suite / "tuning" / "best.json"
    if not path.is_file():
        raise UserInputError(f"--params tuned: no study at {path}; run `python -m benchmark tune --suite "
                             f"{options.suite}` first")
    return path


def results_folder(options: RunOptions, methods: list[MethodSpec], cfg_hash: str) -> Path:
    """The two regimes' folders: ``DIR/<suite>/`` for the suite's default run (digits, default profile, the papers'
    settings however spelled) and ``DIR/tuned/<suite>/`` for the same run with the suite's own study's values;
    ``DIR/<suite>/<data>-<profile>-<hash>/`` for any other, so no run overwrites the committed ones."""
    if options.plan is not None:  # a planned confirmation: beside its plan, whatever its profile
        return Path(options.plan).resolve().parent
    suite_dir = Path(options.results_dir) / options.suite
    profiles = REGISTRY.suite(options.suite).profiles
    default = replace(options, data="digits", data_root=None, clip=None, clip_weights=None, overrides=[],
                      config_file=None, params=None, tuned_values=None, allow_stale=True,  # compared, never run
                      profile="default" if "default" in profiles else next(iter(profiles)))
    _, _, default_cfg = resolve(default)
    if cfg_hash == run_config_hash(default, default_cfg, {}):
        return suite_dir
    study = suite_dir / "tuning" / "best.json"
    if study_profile(study) == default.profile:  # only compared: the run's seeds are checked where it loads them
        tuned = load_params(study, options.suite, allow_stale=True)
        if cfg_hash == run_config_hash(default, default_cfg, {m.name: tuned[m.name] for m in methods
                                                              if tuned.get(m.name)}):
            return Path(options.results_dir) / TUNED / options.suite
    return suite_dir / f"{options.data}-{options.profile}-{cfg_hash[:8]}"


@dataclass(frozen=True)
class ResolvedRun:
    """Everything an invocation decides before anything trains, built once by the invocation (``resolve_run``):
    its ``--jobs`` workers and submitit jobs receive it and never resolve the config again."""

    options: RunOptions  # with the plan applied and the code state the invocation started at
    cfg: dict  # the resolved config (every method's, before its tuned values)
    methods: tuple[str, ...]
    tuned: TunedValues  # per tuned method, its values as applied
    method_cfgs: dict[str, dict]  # per tuned method, the config it trains with
    run_info: dict  # run.json
    suite_dir: Path  # where the run writes
    cell_keys: dict[str, str]  # per method, the key of its cells
    population: dict[str, int]  # per method, how many of its seeds train together (1: each alone)

    @property
    def spec(self) -> SuiteSpec:
        return REGISTRY.suite(self.options.suite)

    def method_specs(self) -> list[MethodSpec]:
        return [REGISTRY.method(self.options.suite, name) for name in self.methods]


def resolve_run(options: RunOptions, ex: Execution) -> ResolvedRun:
    """Resolve and validate everything once: the config, the plan it must match, tuned values, run.json, the
    results folder and the cells' keys."""
    from benchmark.cells import cell_keys

    spec, methods, cfg = resolve(options)
    tuned, method_cfgs = tuned_configs(options, methods)
    if options.plan is not None:
        plan = load_plan(options.plan, spec.name)
        cfg_hash = run_config_hash(options, cfg, tuned)
        if cfg_hash != plan["config_hash"]:
            raise UserInputError(f"--plan {options.plan}: this code resolves the plan's profile to config hash "
                                 f"{cfg_hash[:8]}, not the plan's {plan['config_hash'][:8]} (the config changed since "
                                 "the pilot: plan again from a new pilot)")
    size, why = population_size(options.population, spec.name, spec.run_population is not None, ex.device.type,
                                ex.world)
    options = replace(options, population=size)
    run_info = describe_run(options, spec, methods, cfg, tuned, ex)
    run_info["population_choice"] = why  # the size's source: --population, or auto's measurement
    options = replace(options, code_state=(run_info["git_commit"], run_info["git_dirty"]))
    suite_dir = results_folder(options, methods, run_info["config_hash"])
    # a method trains in populations where its built form says it can (``population``: e.g. not DN-DETR's noise)
    population = {m.name: options.population if getattr(REGISTRY.build(m, method_cfgs.get(m.name, cfg)),
                                                         "population", False) else 1 for m in methods}
    run_info["population"] = population
    keys = cell_keys(methods, run_info["config_hash"], method_cfgs, options.data_options(), run_info["git_commit"],
                     ex.world, population)
    return ResolvedRun(options, cfg, tuple(m.name for m in methods), tuned, method_cfgs, run_info, suite_dir, keys,
                       population)


def run_tags(resolved: ResolvedRun, ex: Execution) -> dict[str, str]:
    """The MLflow tags of every run this process opens for the invocation (its own host, pid, device, threads)."""
    info, options = resolved.run_info, resolved.options
    return {"config_hash": info["config_hash"], "git_commit": info["git_commit"], "git_dirty": str(info["git_dirty"]),
            "device": str(ex.device), "torch": torch.__version__, "threads": str(ex.threads),
            "profile": options.profile, "host": socket.gethostname(), "pid": str(os.getpid()),  # stale RUNNING runs
            # what the run read: data, its root, CLIP weights (run.json holds their hashes too)
            **{k: str(v) for k, v in options.data_options().items() if v is not None}}


def describe_run(options: RunOptions, spec: SuiteSpec, methods: list[MethodSpec], cfg: dict,
                 tuned: TunedValues, ex: Execution) -> dict:
    """``run.json``: config, its hash, code, machine: what a rerun elsewhere compares against."""
    data_options = options.data_options()
    cfg_hash = run_config_hash(options, cfg, tuned)
    commit, dirty = options.code_state or reproducibility.git_state()
    run_info = {"suite": spec.name, "profile": options.profile, "methods": [m.name for m in methods],
                "seeds": options.seeds, "plan": str(options.plan) if options.plan else None, "config": cfg,
                "config_hash": cfg_hash, "params": stored(tuned), **data_options,
                "git_commit": commit, "git_dirty": dirty, "device": str(ex.device), "threads": ex.threads,
                "world_size": ex.world, "jobs": options.jobs, "executor": options.executor,
                # versions, date, command, CPU/ISA, OS, torch build, evaluator, data hashes; the signature decides
                # whether `verify` expects identical numbers or numbers within tolerances
                **reproducibility.record(ex.threads, options.data, options.data_root, options.clip_weights)}
    return run_info
