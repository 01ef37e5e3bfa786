"""One invocation's cell runner, in whichever process trains cells (the invocation's own, a ``--jobs`` worker, a
submitit job): torch set up once, the resolved run received, never resolved again, and ``CellRunner``, the only
place that seeds a cell, opens its MLflow run and stores it."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark import distributed
from benchmark.cells import CellStore, FinishedCell
from benchmark.context import RunContext
from benchmark.params import TunedValues, stored
from benchmark.paths import default_cache_dir
from benchmark.plan import Execution, ResolvedRun, RunOptions, pick_device, resolve_run, run_tags
from benchmark.registry import METHOD_SECTIONS, MethodSpec, SuiteSpec
from benchmark.tracking import NoTracking, Tracker
from cvpdl.errors import NonFiniteLossError, UserInputError
from cvpdl.population import RECIPE, Member
from cvpdl.progress import EpochCallback

log = logging.getLogger("benchmark")  # progress lines; -q hides them, the CLI prints them between progress bars


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def setup_torch(device: str, threads: int | None, jobs: int = 1) -> Execution:
    """Device, process group (under torchrun), thread count and deterministic algorithms."""
    rank, world, chosen = distributed.setup(pick_device(device))
    threads = threads or max(1, (os.cpu_count() or 1) // (world * jobs))  # torchrun ranks or workers share the cores
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = False
    if chosen.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # CUDA RoIAlign backward has no deterministic kernel: warn there instead of failing
    torch.use_deterministic_algorithms(True, warn_only=chosen.type == "cuda")
    return Execution(chosen, threads, rank, world)


def _check_writable(results_dir: Path) -> None:
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserInputError(f"results dir {results_dir} is not writable ({err.strerror or err})") from None


class CellRunner:
    """Runs or reuses the cells of one invocation; the suite's shared data and models are prepared at the first
    cell that trains (a run whose cells all finished before prepares nothing)."""

    def __init__(self, spec: SuiteSpec, context: RunContext, store: CellStore, tracker: Tracker | NoTracking,
                 tags: dict[str, str], tuned: TunedValues, method_cfgs: dict[str, dict],
                 options: RunOptions, ex: Execution):
        self.spec, self.context, self.store, self.tracker = spec, context, store, tracker
        self.tags, self.tuned, self.method_cfgs, self.options, self.ex = tags, tuned, method_cfgs, options, ex
        self.shared = None
        self.prepare_seconds: float | None = None  # None until prepared
        self.prepare_threads: int | None = None
        self.prepare_cache: dict[str, str] = {}  # each cached artefact of the set-up: "trained" here or "loaded"
        self.parent_id: str | None = None  # the invocation's MLflow run (set once it is open)
        self.trained_now: set[tuple[str, int]] = set()  # this invocation's cells, trained by its executor
        self.fresh: dict[tuple[str, int], FinishedCell] = {}  # of those, the ones trained in this process

    def reusable(self, method: MethodSpec, seed: int) -> bool:
        """Finished before (and not ``force``d), or just now by this invocation's executor."""
        return self.store.is_finished(method.name, seed) and (
            not self.options.force or (method.name, seed) in self.trained_now)

    def run(self, method: MethodSpec, seed: int) -> FinishedCell:
        """One cell: reused when it finished before (unless ``force``), else trained in its nested MLflow run."""
        if (method.name, seed) in self.fresh:  # trained by this process for this invocation a moment ago
            return self.fresh.pop((method.name, seed))
        # one invocation trains a cell at a time; another one waiting here then finds it finished
        with self.store.lock(method.name, seed) if self.ex.world == 1 else contextlib.nullcontext():
            if distributed.agree(self.reusable(method, seed)):
                return self._reuse(method, seed)
            cfg = self.method_cfgs.get(method.name, self.context.cfg)
            with self._cell_run(method, seed, cfg) as run_id:
                cell = self._train(method, seed, replace(self.context, cfg=cfg), run_id)
                self._log_cell(run_id, method, seed, cell)
        return cell

    @contextlib.contextmanager
    def _cell_run(self, method: MethodSpec, seed: int, cfg: dict, **extra_tags: str):
        tags = {**self.tags, "role": "cell", "method": method.name, "seed": str(seed), **extra_tags,
                # declared differences from the paper's official code travel with the run
                **{f"deviation.{i}": d.line()[:5000] for i, d in enumerate(method.deviations)},
                **({"tuned_params": " ".join(stored(self.tuned)[method.name])} if method.name in self.tuned else {})}
        with self.tracker.run(f"{method.name}-seed{seed}", {**cfg, "method": method.name, "seed": seed}, tags,
                              nested=True, parent_id=self.parent_id) as run_id:
            yield run_id

    def _log_cell(self, run_id: str | None, method: MethodSpec, seed: int, cell: FinishedCell) -> None:
        folder = self.store.folder(method.name, seed)
        self.tracker.log_records(run_id, cell.records())
        self.tracker.log_artifacts(run_id, folder)
        if run_id is not None:
            self.store.remember_run(method.name, seed, self.tracker.uri, run_id)

    def _reuse(self, method: MethodSpec, seed: int) -> FinishedCell:
        """A finished cell: referenced from the invocation's run (tag ``reused.<method>-seed<seed>`` = the run that
        trained it) when that run is in this tracking store; otherwise logged once as a new run tagged
        ``reused_from`` (e.g. cells trained while tracking elsewhere), which later invocations then reference."""
        cell, folder = self.store.load(method.name, seed), self.store.folder(method.name, seed)
        if (method.name, seed) not in self.trained_now:
            log.info(f"[{method.name} seed {seed}] finished before: reusing {folder}")
        if (method.name, seed) in self.trained_now:  # already a nested run of this invocation
            return cell
        earlier = self.store.remembered_run(method.name, seed, self.tracker.uri)
        if earlier is not None and self.tracker.is_finished_run(earlier):
            self.tracker.tag_run(self.parent_id, f"reused.{method.name}-seed{seed}", earlier)
            return cell
        with self._cell_run(method, seed, self.method_cfgs.get(method.name, self.context.cfg),
                            reused_from=str(folder)) as run_id:
            self._log_cell(run_id, method, seed, cell)
        return cell

    def _epoch_reporter(self, label: str, run_id: str | None) -> EpochCallback:
        """After each epoch of a training loop: one console line, and the values as live MLflow metrics
        ``<stage>/<split>/<metric>`` (step = epoch) of the run in flight (a cell's, or the invocation's while the
        shared set-up trains); the cell's records are logged again under their final names when it ends."""
        def report(stage: str, epoch: int, epochs: int, values: dict[str, float]) -> None:
            if self.ex.rank != 0:
                return
            shown = ", ".join(f"{k} {v:.4g}" for k, v in list(values.items())[:4])
            log.info(f"[{label}] {stage} epoch {epoch}/{epochs}: {shown}")
            prefix = re.sub(r"[^\w .-]", "", stage).strip().replace(" ", "_")
            self.tracker.log_records(run_id, [{"split": prefix, "metric": name, "value": v, "epoch": epoch}
                                              for name, v in values.items()])
        return report

    def ensure_prepared(self) -> None:
        if self.prepare_seconds is None:
            log.info(f"{self.spec.name}: preparing the shared data and models")
            self._prepare()

    def _prepare(self) -> None:
        started, run_threads = time.time(), torch.get_num_threads()
        # a --jobs parent prepares on all the cores (or --threads), before its workers start
        self.prepare_threads = self.options.prepare_threads or (
            (self.options.threads or os.cpu_count() or 1) if self.options.jobs > 1 else run_threads)
        torch.set_num_threads(self.prepare_threads)
        try:
            self.shared = self.spec.prepare(replace(self.context,
                                                    on_epoch=self._epoch_reporter("shared set-up", self.parent_id)))
        finally:
            torch.set_num_threads(run_threads)
        self.prepare_seconds = round(time.time() - started, 1)
        artifacts = getattr(self.shared, "artifacts", {})  # e.g. the trained CLIP weights
        for artifact in artifacts:
            self.tracker.log_artifact(self.parent_id, artifact, "cached")
        self.prepare_cache = {path.name: "trained" if trained else "loaded" for path, trained in artifacts.items()}

    def _train(self, method: MethodSpec, seed: int, context: RunContext, run_id: str | None) -> FinishedCell:
        self.ensure_prepared()
        checkpoints = self._fresh_checkpoints(self.store.folder(method.name, seed) / "checkpoints")
        generator = seed_everything(seed)  # after prepare, which draws from the global generators too
        context = replace(context, checkpoints=checkpoints, on_epoch=self._epoch_reporter(f"{method.name} seed {seed}",
                                                                                          run_id))
        started = time.time()
        result = self.spec.run_cell(context, self.shared, method, seed, generator)
        log.info(f"[{method.name} seed {seed}] finished in {time.time() - started:.0f} s")
        cell = self._store(method, seed, result, context.cfg)
        if self.ex.rank == 0:
            shutil.rmtree(checkpoints, ignore_errors=True)
        return cell

    def _fresh_checkpoints(self, checkpoints: Path) -> Path:
        if not self.options.resume and self.ex.rank == 0:  # a fresh start; --resume continues from them
            shutil.rmtree(checkpoints, ignore_errors=True)
        distributed.barrier()
        return checkpoints

    def _store(self, method: MethodSpec, seed: int, result, cfg: dict) -> FinishedCell:
        cell = FinishedCell.from_result(self.spec.name, method.name, seed, result)
        if self.ex.rank == 0:
            self.store.save(method.name, seed, cell, result.models, cfg)
        return cell

    def run_population(self, method: MethodSpec, seeds: list[int]) -> dict[int, FinishedCell | NonFiniteLossError]:
        """Several seeds of one method: those finished before reused, the others trained together as one population
        (``train_together``)."""
        return dict(zip(seeds, train_together(method, [(self, seed, {}) for seed in seeds])))


RECIPE_KEYS = tuple(f"train.{key}" for key in RECIPE)  # what a member's recipe may vary: the ``train`` section's


def member_knob(spec: SuiteSpec, method: MethodSpec, knob: str) -> bool:
    """Whether members of ``method`` may differ in ``knob`` (``section.key``) inside one population: a recipe value,
    or a float field of a section (or the field itself) the suite lets members differ in
    (``SuiteSpec.member_settings``)."""
    section, key = knob.split(".", 1)
    sections = {**spec.config, **method.config}
    allowed = (section in spec.member_settings or knob in spec.member_settings
               or (METHOD_SECTIONS in spec.member_settings and section in method.config))
    return knob in RECIPE_KEYS or (allowed and section in sections
                                   and isinstance(getattr(sections[section](), key, None), float))


def member_of(spec: SuiteSpec, method: MethodSpec, seed: int, settings: dict[str, float]) -> Member:
    """The member of ``seed`` (its RNG as its cell alone has it) with ``settings`` (``section.key`` → value): the
    recipe's in ``Member.recipe`` (by key), the others in ``Member.settings`` (by ``section.key``; the suite's
    ``run_population`` reads them)."""
    if bad := [knob for knob in settings if not member_knob(spec, method, knob)]:
        raise ValueError(f"{method.name}'s members cannot differ in {', '.join(bad)} inside one population")
    return Member(seed_everything(seed), settings={k: float(v) for k, v in settings.items() if k not in RECIPE_KEYS},
                  recipe={k.split(".", 1)[1]: float(v) for k, v in settings.items() if k in RECIPE_KEYS})


def train_together(method: MethodSpec, members: list[tuple[CellRunner, int, dict[str, float]]]
                   ) -> list[FinishedCell | NonFiniteLossError]:
    """Members of one method, each (the run whose cell it is, its seed, its settings as ``section.key`` → value):
    those finished before reused, the others trained together as one population
    (``SuiteSpec.run_population``) on the first run's shared set-up, each then stored and logged as its own cell of
    its own run (its own nested MLflow run, tagged with its population). The runs differ at most in the settings
    (``sensitivity --population``: a sweep's values × seeds; ``tune --population``: a batch of trials × seeds): float
    fields of the sections the suite names (``member_knob``) and the lr and weight decay of the ``train`` recipe.
    A member whose loss diverged gets its error."""
    lead = members[0][0]
    with contextlib.ExitStack() as locks:
        for runner, seed, _ in members:
            locks.enter_context(runner.store.lock(method.name, seed))
        cells: list[FinishedCell | NonFiniteLossError | None] = [
            runner._reuse(method, seed) if runner.reusable(method, seed) else None for runner, seed, _ in members]
        pending = [index for index, cell in enumerate(cells) if cell is None]
        if not pending:
            return cells
        lead.ensure_prepared()
        names = [f"{members[i][1]}" + "".join(f" {k}={v:g}" for k, v in members[i][2].items()) for i in pending]
        label = f"{method.name} seeds {', '.join(names)}"
        digest = hashlib.sha256("|".join(names).encode()).hexdigest()[:12]  # a trial batch's names are long
        checkpoints = lead._fresh_checkpoints(lead.store.folder(method.name, members[pending[0]][1]) / "checkpoints"
                                              / f"population-{digest}")
        # each seed's RNG as its cell alone has it
        trained = [member_of(lead.spec, method, members[i][1], members[i][2]) for i in pending]
        context = replace(lead.context, cfg=lead.method_cfgs.get(method.name, lead.context.cfg),
                          checkpoints=checkpoints, on_epoch=lead._epoch_reporter(label, lead.parent_id))
        started = time.time()
        results = lead.spec.run_population(context, lead.shared, method, [members[i][1] for i in pending], trained)
        log.info(f"[{label}] finished together in {time.time() - started:.0f} s")
        for index, result in zip(pending, results):
            runner, seed, _ = members[index]
            cfg = runner.method_cfgs.get(method.name, runner.context.cfg)
            try:
                with runner._cell_run(method, seed, cfg, population=", ".join(names)) as run_id:
                    if isinstance(result, NonFiniteLossError):
                        raise result  # its run ends FAILED, with the reason
                    cells[index] = runner._store(method, seed, result, cfg)
                    runner._log_cell(run_id, method, seed, cells[index])
            except NonFiniteLossError as err:
                cells[index] = err
        shutil.rmtree(checkpoints, ignore_errors=True)
    return cells


def train_populations(invocations: list[Invocation], populations: list[tuple[MethodSpec, list]], name: str,
                      tags: dict[str, str], desc: str) -> None:
    """Several runs' members, each (method, members) one ``train_together``, inside one MLflow run of their own
    (``name``, under the first invocation's tracker; each member's run nests under it). Populations whose members are
    all finished are skipped; a diverged member is left to its own run, which reports it."""
    populations = [(method, members) for method, members in populations
                   if not all(runner.reusable(method, seed) for runner, seed, _ in members)]
    if not populations:
        return
    lead = invocations[0]
    with lead.tracker.run(name, lead.resolved.cfg, {**lead.tags, "role": "invocation", **tags}) as parent:
        for invocation in invocations:
            invocation.runner.parent_id = parent
        for method, members in tqdm(populations, desc=desc, unit="population", leave=False):
            train_together(method, members)


@dataclass
class Invocation:
    """What one invocation (or one of its ``--jobs`` workers, or a submitit job) runs cells with."""

    resolved: ResolvedRun
    tags: dict[str, str]
    tracker: Tracker | NoTracking
    runner: CellRunner
    ex: Execution


def open_invocation(options: RunOptions) -> Invocation:
    """Set up torch, resolve and validate everything once (``resolve_run``), then open the invocation on it."""
    ex = setup_torch(options.device, options.threads, options.jobs)
    return open_resolved(resolve_run(options, ex), ex)


def open_resolved(resolved: ResolvedRun, ex: Execution) -> Invocation:
    """The cell store, the tracker and the cell runner of a resolved run, in this process (no resolving)."""
    results_dir = Path(resolved.options.results_dir)
    _check_writable(results_dir)
    tags = {**run_tags(resolved, ex), "results_folder": str(resolved.suite_dir.relative_to(results_dir))}
    spec, options = resolved.spec, resolved.options
    tracker = Tracker(results_dir, spec.name) if ex.rank == 0 else NoTracking()
    context = RunContext(spec.name, resolved.cfg, ex.device, Path(options.cache_dir or default_cache_dir()),
                         options.data, options.data_root, options.clip, options.clip_weights)
    runner = CellRunner(spec, context, CellStore(resolved.suite_dir, resolved.cell_keys), tracker, tags,
                        resolved.tuned, resolved.method_cfgs, options, ex)
    return Invocation(resolved, tags, tracker, runner, ex)
