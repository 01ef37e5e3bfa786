"""``python -m benchmark tune``: the same tuning budget for every method, on the validation split only.

Each method gets ``trials`` Optuna trials (seeded TPE) over the search space declared on its method spec; a trial
is ordinary cells (``run_suite`` on one method and the tuning seeds, the trial's values as ``--set`` overrides),
so it is cached, resumable and tracked in MLflow like any other cell. The objective is the suite's declared
``tuning_objective`` (a val metric; its last epoch when it is per-epoch), averaged over the tuning seeds. The
suite's headline numbers (test among them) of each trial are recorded beside it, so the report can say what tuning
did on test; they never take part in choosing.

The studies live in ``DIR/<suite>/tuning/optuna.db`` (SQLite): a killed ``tune`` resumes where it stopped and
several workers on this machine may share it. ``--storage`` names another Optuna storage (a journal file on a shared
file system, or a database URL), so ``tune`` processes on several machines work on the same studies; the budget
stays the same in total. Outputs beside it: ``trials.csv`` (every trial), ``best.json`` (per method, the
best values as ``section.key`` → value; ``run --params`` reads it) and ``figures/sensitivity_<method>.png``.

``--population N`` trains a trial's seeds as one batched model; in a suite whose members may differ in settings
(kd, detr, ovd), it asks N // seeds trials at a time and trains the whole batch (trials × seeds) as one population
(``train_trials_together``), each trial then scored from its own cells.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from benchmark.params import TUNING_SEEDS, assignment, study_provenance
from benchmark.confirmation import check_seed_roles
from benchmark.registry import REGISTRY, MethodSpec, SearchParam, SuiteSpec
from benchmark.results import atomic_write_csv, atomic_write_text, locked
from cvpdl.errors import UserInputError


@dataclass
class TuneOptions:
    suite: str
    methods: list[str] | None = None
    trials: int = 20
    profile: str = "default"
    # every trial's cells (its objective is their mean; the first seeds the sampler): seeds no final run evaluates
    seeds: list[int] = field(default_factory=lambda: list(TUNING_SEEDS))
    overrides: list[str] = field(default_factory=list)
    results_dir: Path = Path("results")
    cache_dir: Path | None = None
    device: str = "auto"
    threads: int | None = None
    population: int | str = 1  # a trial's seeds trained as one batched model (``run --population``; or "auto")
    timeout: float | None = None  # seconds per method's study (a wall budget; the trial in flight finishes)
    storage: str | None = None  # an Optuna storage shared by several workers: a journal file path or an RDB URL


def final_value(metrics: pd.DataFrame, method: str, seed: int, metric: str, split: str) -> float:
    """One cell's number from ``run_suite``'s table (which holds other methods' cells of the same config too): the
    final row, or the last epoch of a per-epoch metric. NaN where the metric is censored (e.g. target never met)."""
    rows = metrics[(metrics["method"] == method) & (metrics["seed"] == seed) & (metrics["metric"] == metric)
                   & (metrics["split"] == split)]
    if rows.empty:
        raise UserInputError(f"{metric}[{split}] is missing from the trial's metrics")
    final = rows[rows["epoch"].isna()]
    if final.empty:
        final = rows[rows["epoch"] == rows["epoch"].max()]
    return float(final["value"].mean())


def objective_value(metrics: pd.DataFrame, method: str, seeds: list[int], metric: str, split: str) -> float:
    """The trial's objective, the mean over its own cells' rows; a non-finite value scores as the worst."""
    value = sum(final_value(metrics, method, seed, metric, split) for seed in seeds) / len(seeds)
    return value if math.isfinite(value) else float("-inf")


def headline_values(spec: SuiteSpec, metrics: pd.DataFrame, method: str, seeds: list[int]) -> dict[str, float]:
    """The suite's headline numbers of one trial (mean over its cells), as ``metric[split]`` → value (reported,
    never optimised)."""
    values = {}
    for metric, split in spec.headline:
        try:
            value = sum(final_value(metrics, method, seed, metric, split) for seed in seeds) / len(seeds)
        except UserInputError:  # a headline this method does not produce
            continue
        values[f"{metric}[{split}]"] = value if math.isfinite(value) else None  # censored: not reached
    return values


def _suggest(trial, param: SearchParam):
    if param.choices:
        return trial.suggest_categorical(param.key, list(param.choices))
    if param.integer:
        return trial.suggest_int(param.key, int(param.low), int(param.high), log=param.log)
    return trial.suggest_float(param.key, param.low, param.high, log=param.log)


def default_values(options: TuneOptions, method: MethodSpec) -> dict:
    """The method's untuned values of its search space, as ``run`` resolves them for this profile."""
    from benchmark.plan import RunOptions, resolve

    cfg = resolve(RunOptions(suite=options.suite, methods=[method.name], profile=options.profile,
                             overrides=list(options.overrides)))[2]
    return {p.key: cfg[p.key.split(".", 1)[0]][p.key.split(".", 1)[1]] for p in method.search_space}


def study_name(suite: str, method: str, profile: str) -> str:
    return f"{suite}-{method}-{profile}"


def _resolve(options: TuneOptions) -> tuple[SuiteSpec, list[MethodSpec]]:
    spec = REGISTRY.suite(options.suite)
    if spec.tuning_objective is None:
        raise UserInputError(f"suite {spec.name!r} declares no validation objective to tune on")
    names = options.methods or [m.name for m in REGISTRY.methods(spec.name)]
    methods = [REGISTRY.method(spec.name, name) for name in names]
    if options.trials < 1:
        raise UserInputError(f"--trials must be at least 1, got {options.trials}")
    if options.profile not in spec.profiles:
        raise UserInputError(f"unknown profile {options.profile!r}; choose from: {', '.join(spec.profiles)}")
    check_seed_roles(Path(options.results_dir), spec.name, list(options.seeds), "tuning")
    return spec, methods


def open_storage(storage: str | None, tuning_dir: Path):
    """The Optuna storage of the suite's studies and the lock file its workers take turns on when they create the
    schema and the studies' first trial (None: a database server, which serialises its writers itself; the journal's
    own ``.lock`` is Optuna's).

    ``tuning_dir/optuna.db`` by default; else ``storage``, a database URL (``scheme://…``: RDB, e.g. PostgreSQL or
    MySQL for many machines) or a journal file path (append-only, with locks that work on NFS: Optuna's choice for a
    shared file system). An unusable storage is a one-line error."""
    import optuna
    import sqlalchemy.exc

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: stable enough
    url = storage or f"sqlite:///{tuning_dir / 'optuna.db'}"
    try:
        if "://" not in url:
            from optuna.storages.journal import JournalFileBackend

            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(url)), Path(url + ".create.lock")
        local = Path(url.split("///", 1)[1].split("?", 1)[0]) if url.startswith("sqlite:///") else None
        lock = None if local is None else tuning_dir / ".create.lock" if storage is None else \
            local.with_name(local.name + ".create.lock")
        # concurrent workers on one SQLite file: one creates the schema, the others wait
        with locked(lock) if lock else contextlib.nullcontext():
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180,
                                              engine_kwargs={"connect_args": {"timeout": 60}} if local else None), lock
    except (OSError, ValueError, ImportError, sqlalchemy.exc.SQLAlchemyError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserInputError(f"--storage {url}: not a usable Optuna storage ({reason})") from None


def tune_suite(options: TuneOptions) -> pd.DataFrame:
    import optuna

    from benchmark.plan import chosen_population
    from benchmark.runner import CellsFailedError, RunOptions, run_suite

    spec, methods = _resolve(options)
    options = replace(options, population=chosen_population(options.population, spec, options.device))
    metric, split = spec.tuning_objective
    tuning_dir = Path(options.results_dir) / spec.name / "tuning"
    tuning_dir.mkdir(parents=True, exist_ok=True)
    storage, lock = open_storage(options.storage, tuning_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # workers sharing a storage would draw the same random start-up trials from one seed: each seeds its sampler
    # from its first seed, its host and its process (the interleaving of workers' trials is not reproducible anyway)
    sampler_seed = options.seeds[0] if options.storage is None else \
        zlib.crc32(f"{options.seeds[0]}:{socket.gethostname()}:{os.getpid()}".encode())

    batch = trials_per_batch(spec, options)
    for method in methods:
        study = optuna.create_study(study_name=study_name(spec.name, method.name, options.profile), storage=storage,
                                    direction="maximize", load_if_exists=True,
                                    # random start-up trials, then TPE: a third of the budget (Optuna's 10
                                    # would be most of it)
                                    sampler=optuna.samplers.TPESampler(
                                        seed=sampler_seed, n_startup_trials=min(10, max(3, options.trials // 3)),
                                        constant_liar=batch > 1))  # a batch's trials: asked before any is told
        optuna.storages.fail_stale_trials(study)  # trials a killed worker left RUNNING (RDB storage: heartbeats)
        # trial 0 is the default config ("how much did tuning move it"), enqueued once by whichever worker comes first
        # (skip_if_exists: the one guard a database server's workers have)
        with locked(lock) if lock else contextlib.nullcontext():
            if not study.trials and method.search_space:
                study.enqueue_trial(default_values(options, method), user_attrs={"default": True},
                                    skip_if_exists=True)

        def trial_run(trial, method=method) -> tuple[dict, RunOptions]:
            values = {p.key: _suggest(trial, p) for p in method.search_space}
            return values, RunOptions(suite=spec.name, methods=[method.name], seeds=list(options.seeds),
                                      profile=options.profile,
                                      overrides=[*options.overrides, *(assignment(k, v) for k, v in values.items())],
                                      results_dir=tuning_dir / "trials", cache_dir=options.cache_dir,
                                      device=options.device, threads=options.threads,
                                      population=options.population, resume=True)

        def score(trial, run: RunOptions, method=method) -> float:
            try:
                table = run_suite(run)  # a batch's trial: its cells are there already
            except CellsFailedError:  # a diverged trial is a bad configuration, not the end of the study
                return float("-inf")
            trial.set_user_attr("headline", headline_values(spec, table, method.name, options.seeds))
            return objective_value(table, method.name, options.seeds, metric, split)

        # a method without a search space still runs once: its untuned value is part of the table
        budget = options.trials if method.search_space else 1
        if budget <= _completed(study):
            continue
        if batch > 1 and method.search_space:
            _optimize_in_batches(study, spec, method, budget, batch, trial_run, score, options,
                                 lambda: write_outputs(spec, storage, options, tuning_dir))
        else:
            # outputs after every trial: a study stopped by a kill or a wall budget leaves them current; the study
            # stops when all workers together completed the budget (a trial in flight then still finishes and is
            # recorded, not counted)
            study.optimize(lambda trial: score(trial, trial_run(trial)[1]), n_trials=budget - _completed(study),
                           timeout=options.timeout, callbacks=[optuna.study.MaxTrialsCallback(budget),
                                                               lambda *_: write_outputs(spec, storage, options,
                                                                                        tuning_dir)])
    return write_outputs(spec, storage, options, tuning_dir, figures=True)


def _completed(study) -> int:
    import optuna

    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def trials_per_batch(spec: SuiteSpec, options: TuneOptions) -> int:
    """How many trials train together under ``--population N``: N // seeds where the suite's members may differ
    in settings (``SuiteSpec.member_settings``), else 1 (a trial's seeds are its population)."""
    return max(1, options.population // len(options.seeds)) if spec.member_settings else 1


def _optimize_in_batches(study, spec: SuiteSpec, method: MethodSpec, budget: int, batch: int, trial_run, score,
                         options: TuneOptions, after_batch) -> None:
    """The study in batches: ask ``batch`` trials (TPE's constant liar keeps them apart), train their trials × seeds
    as populations of ``--population`` (``train_trials_together``), then score and tell each from its cells. The
    batch size is a function of the options alone (never of free memory); a wall budget is checked between
    batches."""
    started = time.monotonic()
    while (done := _completed(study)) < budget:
        if options.timeout is not None and time.monotonic() - started > options.timeout:
            return
        trials = [study.ask() for _ in range(min(batch, budget - done))]
        runs = [trial_run(trial) for trial in trials]
        train_trials_together(spec, method, runs, options)
        for trial, (_, run) in zip(trials, runs):
            study.tell(trial, score(trial, run))
        after_batch()


def train_trials_together(spec: SuiteSpec, method: MethodSpec, runs: list[tuple[dict, object]], options: TuneOptions
                          ) -> None:
    """A batch of trials' members (trials outer, seeds inner) cut into consecutive populations of ``--population``,
    inside one MLflow run of its own; each member stored as a cell of its trial's run, which then reuses it. Trials
    that differ in a value members cannot differ in (e.g. FitNet's hint stage) train in populations apart."""
    from benchmark.config import population_chunks
    from benchmark.invocation import member_knob, open_invocation, train_populations
    from benchmark.plan import apply_plan

    invocations = [open_invocation(apply_plan(run)) for _, run in runs]
    groups: dict[tuple, list] = {}
    for invocation, (values, _) in zip(invocations, runs):
        apart = tuple(sorted((k, v) for k, v in values.items() if not member_knob(spec, method, k)))
        groups.setdefault(apart, []).extend(
            (invocation.runner, seed, {k: v for k, v in values.items() if member_knob(spec, method, k)})
            for seed in options.seeds)
    train_populations(invocations, [(method, chunk) for members in groups.values()
                                    for chunk in population_chunks(members, options.population)],
                      f"{options.suite}-tune-{method.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                      {"tuning": method.name}, f"{method.name} trials × seeds")


def write_outputs(spec: SuiteSpec, storage, options: TuneOptions, tuning_dir: Path,
                  figures: bool = False) -> pd.DataFrame:
    """``trials.csv`` and ``best.json`` over every study of the suite in ``storage`` (workers tuning other methods
    included). Equal budget: each method's best is taken over its first k completed trials, k the smallest number
    of completed trials of any method with a search space and at most ``--trials``, so a method that got more
    trials (a faster worker, or workers that finished together past the budget) has no advantage. best.json also
    records the study's provenance (code, seeds, threads, host, trial time), which ``run --params`` checks."""
    import optuna

    names = set(optuna.get_all_study_names(storage))
    profile = options.profile
    studies = {m.name: (m, optuna.load_study(study_name=study_name(spec.name, m.name, profile), storage=storage))
               for m in REGISTRY.methods(spec.name) if study_name(spec.name, m.name, profile) in names}
    complete = {name: [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
                for name, (_, study) in studies.items()}
    budget = min((len(complete[n]) for n, (m, _) in studies.items() if m.search_space and complete[n]), default=0)
    budget = min(budget, options.trials)
    rows, best = [], {}
    for name, (method, study) in studies.items():
        counted = complete[name][:budget] if method.search_space else complete[name][:1]
        for t in study.trials:
            rows.append({"method": name, "trial": t.number, "state": t.state.name, "value": t.value,
                         "counted": t in counted, **{f"param:{k}": v for k, v in t.params.items()},
                         **{f"headline:{k}": v for k, v in _headline(t).items()}})
        if counted:
            top = max(counted, key=lambda t: t.value)
            default = next((t for t in counted if t.user_attrs.get("default")),
                           None if method.search_space else counted[0])
            best[name] = {"value": top.value, "params": top.params, "trial": top.number, "trials": len(counted),
                          "default_value": default.value if default else None,
                          "headline": _headline(top), "default_headline": _headline(default) if default else {}}
    trials = pd.DataFrame(rows, columns=["method", "trial", "state", "value", "counted"] if not rows else None)
    atomic_write_csv(tuning_dir / "trials.csv", trials)
    seconds = sum(t.duration.total_seconds() for _, study in studies.values() for t in study.trials if t.duration)
    payload = {"suite": spec.name, "profile": profile, "objective": list(spec.tuning_objective),
               "trials_per_method": budget, "methods": best,
               # threads: run's default when none given
               "provenance": study_provenance(options.seeds, options.threads or os.cpu_count(), seconds)}
    if figures:
        for name, (method, _) in studies.items():
            if name in best and method.search_space:
                best[name]["importance"] = _importances(complete[name][:budget])
        from paper_figures.tuning_figures import sensitivity

        for name, (method, _) in studies.items():
            frame = trials[(trials["method"] == name) & trials["counted"]]
            if not frame.empty and method.search_space:
                sensitivity(frame, spec.tuning_objective, tuning_dir / "figures" / f"sensitivity_{name}.png")
    atomic_write_text(tuning_dir / "best.json", json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return trials


def _headline(trial) -> dict[str, float | None]:
    # None for a censored number (trials recorded before this was kept apart hold -inf)
    recorded = trial.user_attrs.get("headline", {})
    return {k: v if v is not None and math.isfinite(v) else None for k, v in recorded.items()}


def _importances(counted) -> dict[str, float]:
    """fANOVA parameter importances (Optuna's) over the counted trials; empty where they cannot support it."""
    import optuna

    if len(counted) < 2 or len({t.value for t in counted}) < 2:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    counted_only = optuna.create_study(direction="maximize")
    counted_only.add_trials(counted)
    try:
        return {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(counted_only).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}
