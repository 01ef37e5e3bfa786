"""The seeded runner: the only place that seeds cells, picks the device, opens MLflow runs and writes result files
(a suite's ``prepare`` seeds its shared artefacts from their own config seeds).

``run_suite`` resolves the config, sets up torch, then runs every (method, seed) cell of the suite inside one MLflow
invocation run: a cell that finished before is reused from the cell store (``benchmark.cells``) unless ``force``
is set, any other is trained and stored. A cell whose loss diverges ends FAILED and the others go on; the suite's
files are then left as they were. Otherwise the cells are merged into the suite's files, which are rendered into
``summary.md``, ``REPORT.md`` and the figures. What the run is (its options, config, results folder and
``run.json``) is decided beforehand by ``benchmark.plan``.
"""
from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmark import distributed
from benchmark.cells import CellStore, FinishedCell, stack, write_suite_files
from benchmark.context import RunContext
from benchmark.paths import default_cache_dir
from benchmark.plan import Execution, ResolvedRun, RunOptions, apply_plan, pick_device, resolve_run, run_tags
from benchmark.registry import REGISTRY, MethodSpec, SuiteSpec
from benchmark.report import SMOKE, headline_table, is_smoke, render_suite
from benchmark.results import locked
from benchmark.tracking import NoTracking, Tracker
from cvpdl.errors import NonFiniteLossError, UserInputError
from cvpdl.progress import EpochCallback

log = logging.getLogger("benchmark")  # progress lines; -q hides them, the CLI prints them between progress bars


class CellsFailedError(RuntimeError):
    """Some cells diverged or failed; the others finished and are kept. The CLI exits with its own code (3)."""


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


def _bar_shape() -> dict[str, int]:
    """tqdm draws nothing on a terminal that reports 0 × 0 (a pseudo-terminal nobody sized): 100 × 24 there."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):  # not a terminal: the bar is disabled anyway
        return {}
    return {} if size.columns > 0 and size.lines > 0 else {"ncols": 100, "nrows": 24}


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
                 tags: dict[str, str], params: dict[str, list[str]], method_cfgs: dict[str, dict],
                 options: RunOptions, ex: Execution):
        self.spec, self.context, self.store, self.tracker = spec, context, store, tracker
        self.tags, self.params, self.method_cfgs, self.options, self.ex = tags, params, method_cfgs, options, ex
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
                **({"tuned_params": " ".join(self.params[method.name])} if method.name in self.params else {})}
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
        checkpoints = self.store.folder(method.name, seed) / "checkpoints"
        if not self.options.resume and self.ex.rank == 0:  # a fresh start; --resume continues from them
            shutil.rmtree(checkpoints, ignore_errors=True)
        distributed.barrier()
        generator = seed_everything(seed)  # after prepare, which draws from the global generators too
        context = replace(context, checkpoints=checkpoints, on_epoch=self._epoch_reporter(f"{method.name} seed {seed}",
                                                                                          run_id))
        started = time.time()
        result = self.spec.run_cell(context, self.shared, method, seed, generator)
        log.info(f"[{method.name} seed {seed}] finished in {time.time() - started:.0f} s")
        cell = FinishedCell.from_result(self.spec.name, method.name, seed, result)
        if self.ex.rank == 0:
            self.store.save(method.name, seed, cell, result.models, context.cfg)
            shutil.rmtree(checkpoints, ignore_errors=True)
        return cell


@contextlib.contextmanager
def _log_file(results_dir: Path, name: str, rank: int):
    """The invocation's progress lines, also in ``DIR/logs/<invocation>.log`` (rank 0)."""
    if rank != 0:
        yield None
        return
    path = results_dir / "logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield path
    finally:
        log.removeHandler(handler)
        handler.close()


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
                        resolved.params, resolved.method_cfgs, options, ex)
    return Invocation(resolved, tags, tracker, runner, ex)


def _train_cell(runner: CellRunner, name: str, seed: int, keep: bool = False) -> str | None:
    """Train one cell into the cell store, in a run nested under the invocation's; a divergence is returned as the
    cell's failure line (the other cells go on). ``keep``: the cell stays in the runner's memory for ``run_suite`` to
    gather (in its own process: no reload, and no rank of a torchrun reads a cell rank 0 is still writing)."""
    try:
        cell = runner.run(REGISTRY.method(runner.spec.name, name), seed)
    except NonFiniteLossError as err:
        log.warning(f"[{name} seed {seed}] FAILED: {err}")
        return f"{name} seed {seed}: {err}"
    if keep:
        runner.fresh[(name, seed)] = cell
    return None


def _open_cell_worker(resolved: ResolvedRun, parent_id: str | None, log_level: int,
                      log_path: Path | None) -> CellRunner:
    """What a process that trains cells for another one (a ``--jobs`` worker, a submitit job) runs them with: the
    invocation's resolved run, received, not resolved again."""
    import benchmark.suites  # noqa: F401  (a new process registers the suites anew)

    log.setLevel(log_level)
    log.propagate = False
    log.addHandler(logging.StreamHandler())
    if log_path is not None:
        log.addHandler(logging.FileHandler(log_path))  # appends beside the parent's lines
    options = resolved.options
    runner = open_resolved(resolved, setup_torch(options.device, options.threads, options.jobs)).runner
    runner.parent_id = parent_id
    return runner


class CellExecutor(contextlib.AbstractContextManager):
    """Where an invocation's cells are trained: ``submit(method, seed)`` → a future of the cell's failure line (None
    when it finished). Every executor trains into the invocation's cell store, from which ``run_suite`` gathers the
    cells, so the three give the same numbers (tested). Used as a context manager: the futures are complete once
    its block has ended."""

    @abc.abstractmethod
    def submit(self, method: MethodSpec, seed: int) -> concurrent.futures.Future:
        """Start training one cell (or train it now) and return the future of its failure line."""

    def __exit__(self, *exc) -> None:  # nothing to wait for or release unless the executor says so
        return None


class InProcess(CellExecutor):
    """``--executor local --jobs 1`` (and every torchrun rank together): each cell trained here, when submitted."""

    def __init__(self, runner: CellRunner):
        self.runner = runner

    def submit(self, method: MethodSpec, seed: int) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        future.set_result(_train_cell(self.runner, method.name, seed, keep=True))
        return future


_worker_runner: CellRunner | None = None  # a --jobs worker's, opened at its first cell and kept for the next ones


def _worker_cell(resolved: ResolvedRun, parent_id: str | None, log_level: int, log_path: Path | None, name: str,
                 seed: int) -> str | None:
    global _worker_runner
    if _worker_runner is None:
        _worker_runner = _open_cell_worker(resolved, parent_id, log_level, log_path)
    return _train_cell(_worker_runner, name, seed)


class WorkerPool(CellExecutor):
    """``--jobs N``: N spawned processes of ``threads`` threads each (small models use two single-threaded processes
    better than one two-threaded one) take the cells from one queue, each the next as soon as it finished one, so a
    long cell does not leave the cells dealt behind it waiting. Each cell is seeded by the runner as in one process,
    so the cells' numbers are those of ``--jobs 1 --threads <threads>``; the shared set-up they load from the cache,
    where not cached already, is trained beforehand by the parent on all the cores (or ``--threads``), as ``--jobs
    1`` trains it (run.json: ``prepare_threads``)."""

    def __init__(self, resolved: ResolvedRun, runner: CellRunner, log_path: Path | None):
        import multiprocessing

        runner.ensure_prepared()  # here, on all the cores: else one worker trains it on its share while others wait
        options = resolved.options
        self.worker = replace(resolved, options=replace(options, jobs=1, threads=runner.ex.threads,
                                                        prepare_threads=runner.prepare_threads))
        self.args = (runner.parent_id, log.getEffectiveLevel(), log_path)
        self.saved = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"  # workers print plain lines; their bars would garble each other
        self.pool = concurrent.futures.ProcessPoolExecutor(options.jobs,
                                                           mp_context=multiprocessing.get_context("spawn"))

    def submit(self, method: MethodSpec, seed: int) -> concurrent.futures.Future:
        return self.pool.submit(_worker_cell, self.worker, *self.args, method.name, seed)

    def __exit__(self, *exc) -> None:
        self.pool.shutdown()
        os.environ.pop("TQDM_DISABLE") if self.saved is None else os.environ.__setitem__("TQDM_DISABLE", self.saved)


class CellJob:
    """One cell as a submitit job (a SLURM job, or a process of submitit's local executor): trains it into the
    shared results dir like a ``--jobs`` worker. Pre-empted or timed out, submitit calls ``checkpoint`` and requeues
    the job, which then resumes the cell from its last per-epoch checkpoint."""

    def __init__(self, resolved: ResolvedRun, parent_id: str | None, log_level: int, log_path: Path | None):
        self.resolved, self.parent_id, self.log_level, self.log_path = resolved, parent_id, log_level, log_path

    def __call__(self, name: str, seed: int) -> str | None:
        os.environ["TQDM_DISABLE"] = "1"  # the job's log gets plain lines
        resolved = self.resolved
        if resolved.options.threads is None and hasattr(os, "sched_getaffinity"):  # the CPUs SLURM gave the job
            resolved = replace(resolved, options=replace(resolved.options, threads=len(os.sched_getaffinity(0))))
        return _train_cell(_open_cell_worker(resolved, self.parent_id, self.log_level, self.log_path), name, seed)

    def checkpoint(self, name: str, seed: int):
        from submitit.helpers import DelayedSubmission

        resumed = replace(self.resolved, options=replace(self.resolved.options, resume=True))
        return DelayedSubmission(CellJob(resumed, self.parent_id, self.log_level, self.log_path), name, seed)


class SubmititJobs(CellExecutor):
    """``--executor submitit``: each cell a job (one SLURM job array per invocation; submitit's local executor with
    ``--submitit-cluster local``), submitted when the block ends and waited for by one thread per job. A job that
    failed (not a diverged cell: that is its own failure line) is one failure line naming the cell, the job and its
    log, so no cell is lost silently."""

    def __init__(self, resolved: ResolvedRun, parent_id: str | None, log_path: Path | None):
        import submitit

        options = resolved.options
        self.folder = Path(options.submitit_folder or Path(options.results_dir) / "submitit")
        self.executor = submitit.AutoExecutor(
            folder=self.folder, cluster=None if options.submitit_cluster == "auto" else options.submitit_cluster)
        self.executor.update_parameters(
            name=f"cvpdl-{options.suite}", timeout_min=options.slurm_time, nodes=1, tasks_per_node=1,
            gpus_per_node=options.gpus_per_cell, **({"cpus_per_task": options.threads} if options.threads else {}),
            **({"slurm_partition": options.slurm_partition} if options.slurm_partition else {}))
        self.job = CellJob(replace(resolved, options=replace(options, executor="local", jobs=1)), parent_id,
                           log.getEffectiveLevel(), log_path)
        self.suite = options.suite
        self.submitted: list[tuple[str, int, object, concurrent.futures.Future]] = []
        self.batch = self.executor.batch()
        self.batch.__enter__()
        self.waiters = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="submitit-wait")

    def submit(self, method: MethodSpec, seed: int) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        self.submitted.append((method.name, seed, self.executor.submit(self.job, method.name, seed), future))
        return future

    @staticmethod
    def _wait(name: str, seed: int, job, future: concurrent.futures.Future) -> None:
        try:
            future.set_result(job.result())
        except Exception as err:  # submitit's Failed/UncompletedJobError: what the job raised, or how it ended
            reason = next((line for line in reversed(str(err).splitlines()) if line.strip()), type(err).__name__)
            failure = f"{name} seed {seed}: job {job.job_id} failed ({reason.strip()[:300]}; log: {job.paths.stderr})"
            log.warning(f"[{name} seed {seed}] FAILED: {failure}")
            future.set_result(failure)

    def __exit__(self, *exc) -> None:
        self.batch.__exit__(*exc)  # one job array, submitted here
        if self.submitted:
            log.info(f"{self.suite}: {len(self.submitted)} cells submitted as {self.executor.cluster} jobs "
                     f"({', '.join(job.job_id for _, _, job, _ in self.submitted)}); their logs: {self.folder}")
        for entry in self.submitted:
            self.waiters.submit(self._wait, *entry)
        self.waiters.shutdown(wait=True)


def cell_executor(resolved: ResolvedRun, runner: CellRunner, log_path: Path | None) -> CellExecutor:
    """The executor the run's options ask for."""
    if resolved.options.executor == "submitit":  # the jobs prepare the shared set-up (cached: the first one trains it)
        return SubmititJobs(resolved, runner.parent_id, log_path)
    if resolved.options.jobs > 1:
        return WorkerPool(resolved, runner, log_path)
    return InProcess(runner)


def run_suite(options: RunOptions) -> pd.DataFrame:
    invocation = open_invocation(apply_plan(options))
    # workers and jobs receive the resolved run, keyed by the code this invocation started at
    resolved = invocation.resolved
    options, spec, methods, cfg, run_info, suite_dir = (resolved.options, resolved.spec, resolved.method_specs(),
                                                        resolved.cfg, resolved.run_info, resolved.suite_dir)
    results_dir, tags, tracker, runner, ex = (Path(options.results_dir), invocation.tags, invocation.tracker,
                                              invocation.runner, invocation.ex)
    cells = [(m, s) for m in methods for s in options.seeds]
    started, finished, failures = time.time(), [], []
    name = f"{spec.name}-{options.profile}-{options.data}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tracker.run(name, cfg, {**tags, "role": "invocation"}) as parent, \
            _log_file(results_dir, name, ex.rank) as log_path:
        runner.parent_id = parent
        tracker.log_inputs(options.data, run_info["data_root"], run_info["environment"]["data_sha256"])
        # every executor trains into the cell store; the cells are then gathered from it, in order. The bar counts
        # the cells to train; its ETA leaves out reused cells and the shared set-up; closed (cleared) before an
        # error reaches the console
        to_train = [(m, s) for m, s in cells if not runner.reusable(m, s)]
        with tqdm(total=len(to_train), desc=f"{spec.name} cells", unit="cell", smoothing=0, leave=False,
                  **_bar_shape()) as bar:
            def done(_):
                if bar.n == 0 and runner.prepare_seconds and not bar.disable:  # a disabled bar has no clock
                    bar.start_t += runner.prepare_seconds
                bar.update()

            futures = []
            if to_train:
                with cell_executor(resolved, runner, log_path) as executor:
                    for method, seed in to_train:
                        futures.append(executor.submit(method, seed))
                        futures[-1].add_done_callback(done)
            failures = [failure for future in futures if (failure := future.result()) is not None]
        runner.trained_now = {(m.name, s) for m, s in to_train}
        failed = {f.split(":")[0] for f in failures}
        finished = [runner.run(m, s) for m, s in cells if f"{m.name} seed {s}" not in failed]
        if failures:
            raise CellsFailedError(f"{len(failures)} of {len(options.seeds) * len(methods)} cells failed "
                                   f"({'; '.join(failures)}); the finished ones are kept under "
                                   f"{suite_dir / 'cells'} and {suite_dir} is unchanged")
        if ex.rank != 0:  # under torchrun only rank 0 writes
            distributed.barrier()
            distributed.close()
            return stack(finished)["metrics"]
        run_info["wall_seconds"] = round(time.time() - started, 1)
        if runner.prepare_seconds is not None:
            run_info["prepare_seconds"] = runner.prepare_seconds
            run_info["prepare_threads"] = runner.prepare_threads
            run_info["prepare_cache"] = runner.prepare_cache
        with locked(suite_dir / ".lock"):
            metrics = write_suite_files(suite_dir, run_info, finished)
            written = render_suite(spec.name, suite_dir, results_dir if suite_dir.parent == results_dir else None)
        tracker.log_means(parent, metrics[metrics["method"].isin([m.name for m in methods])])
        for path in [suite_dir / "metrics.csv", suite_dir / "run.json", *written]:
            tracker.log_artifact(None, path, "results" if path.suffix != ".png" else "figures")
    distributed.barrier()
    distributed.close()
    print(f"\n{spec.name}: {len(cells)} cells in {run_info['wall_seconds']} s → {suite_dir}")
    if is_smoke(run_info):
        print(SMOKE)
    print(headline_table(spec, metrics))
    print(closing_lines(suite_dir, written, tracker, parent))
    return metrics


def closing_lines(suite_dir: Path, written: list[Path], tracker: Tracker | NoTracking, parent_id: str | None) -> str:
    """Where to look next: the files this run wrote and the command that opens its MLflow runs."""
    figures = [p for p in written if p.suffix == ".png"]
    lines = ["", "wrote:", *(f"  {p}" for p in [suite_dir / "metrics.csv", suite_dir / "run.json", *written]
                            if p.suffix != ".png")]
    if figures:
        lines.append(f"  {len(figures)} figures in {figures[0].parent}/ (.png and .pdf)")
    uri = getattr(tracker, "uri", None)
    if uri:
        opener = (f"mlflow ui --backend-store-uri {uri}" if not uri.startswith("http") else f"open {uri}")
        lines.append(f"MLflow runs (invocation run {parent_id}): {opener}")
    return "\n".join(lines)
