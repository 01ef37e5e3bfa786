"""Where an invocation's cells are trained, behind one interface (``CellExecutor.submit(method, seed)`` → a future):
in this process, in a pool of ``--jobs`` worker processes, or as submitit jobs (SLURM or local processes). Every
executor trains into the invocation's cell store and gives the same numbers (tested)."""
from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import logging
import os
from dataclasses import replace
from pathlib import Path

from benchmark.invocation import CellRunner, open_resolved, setup_torch
from benchmark.plan import ResolvedRun
from benchmark.registry import REGISTRY, MethodSpec
from cvpdl.errors import NonFiniteLossError

log = logging.getLogger("benchmark")  # progress lines; -q hides them, the CLI prints them between progress bars


def _train_cells(runner: CellRunner, name: str, seeds: list[int], keep: bool = False) -> list[str]:
    """Train the cells of ``seeds`` (one seed: alone; several: one population) into the cell store, each in a run
    nested under the invocation's; a divergence is returned as that cell's failure line (the other cells go on).
    ``keep``: the cells stay in the runner's memory for ``run_suite`` to gather (in its own process: no reload, and no
    rank of a torchrun reads a cell rank 0 is still writing)."""
    method = REGISTRY.method(runner.spec.name, name)
    if len(seeds) > 1:
        cells = runner.run_population(method, seeds)
    else:
        try:
            cells = {seeds[0]: runner.run(method, seeds[0])}
        except NonFiniteLossError as err:
            cells = {seeds[0]: err}
    failures = []
    for seed, cell in cells.items():
        if isinstance(cell, NonFiniteLossError):
            log.warning(f"[{name} seed {seed}] FAILED: {cell}")
            failures.append(f"{name} seed {seed}: {cell}")
        elif keep:
            runner.fresh[(name, seed)] = cell
    return failures


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
    """Where an invocation's cells are trained: ``submit(method, seeds)`` → a future of the cells' failure lines (none
    when they finished); several seeds are one population (``run --population``). Every executor trains into the
    invocation's cell store, from which ``run_suite`` gathers the cells, so the three give the same numbers
    (tested). Used as a context manager: the futures are complete once its block has ended."""

    @abc.abstractmethod
    def submit(self, method: MethodSpec, seeds: list[int]) -> concurrent.futures.Future:
        """Start training the cells of ``seeds`` (or train them now) and return the future of their failure lines."""

    def __exit__(self, *exc) -> None:  # nothing to wait for or release unless the executor says so
        return None


class InProcess(CellExecutor):
    """``--executor local --jobs 1`` (and every torchrun rank together): each cell trained here, when submitted."""

    def __init__(self, runner: CellRunner):
        self.runner = runner

    def submit(self, method: MethodSpec, seeds: list[int]) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        future.set_result(_train_cells(self.runner, method.name, seeds, keep=True))
        return future


_worker_runner: CellRunner | None = None  # a --jobs worker's, opened at its first cell and kept for the next ones


def _worker_cells(resolved: ResolvedRun, parent_id: str | None, log_level: int, log_path: Path | None, name: str,
                  seeds: list[int]) -> list[str]:
    global _worker_runner
    if _worker_runner is None:
        _worker_runner = _open_cell_worker(resolved, parent_id, log_level, log_path)
    return _train_cells(_worker_runner, name, seeds)


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

    def submit(self, method: MethodSpec, seeds: list[int]) -> concurrent.futures.Future:
        return self.pool.submit(_worker_cells, self.worker, *self.args, method.name, seeds)

    def __exit__(self, *exc) -> None:
        self.pool.shutdown()
        os.environ.pop("TQDM_DISABLE") if self.saved is None else os.environ.__setitem__("TQDM_DISABLE", self.saved)


class CellJob:
    """One cell as a submitit job (a SLURM job, or a process of submitit's local executor): trains it into the
    shared results dir like a ``--jobs`` worker. Pre-empted or timed out, submitit calls ``checkpoint`` and requeues
    the job, which then resumes the cell from its last per-epoch checkpoint."""

    def __init__(self, resolved: ResolvedRun, parent_id: str | None, log_level: int, log_path: Path | None):
        self.resolved, self.parent_id, self.log_level, self.log_path = resolved, parent_id, log_level, log_path

    def __call__(self, name: str, seeds: list[int]) -> list[str]:
        os.environ["TQDM_DISABLE"] = "1"  # the job's log gets plain lines
        resolved = self.resolved
        if resolved.options.threads is None and hasattr(os, "sched_getaffinity"):  # the CPUs SLURM gave the job
            resolved = replace(resolved, options=replace(resolved.options, threads=len(os.sched_getaffinity(0))))
        return _train_cells(_open_cell_worker(resolved, self.parent_id, self.log_level, self.log_path), name, seeds)

    def checkpoint(self, name: str, seeds: list[int]):
        from submitit.helpers import DelayedSubmission

        resumed = replace(self.resolved, options=replace(self.resolved.options, resume=True))
        return DelayedSubmission(CellJob(resumed, self.parent_id, self.log_level, self.log_path), name, seeds)


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
        self.submitted: list[tuple[str, list[int], object, concurrent.futures.Future]] = []
        self.batch = self.executor.batch()
        self.batch.__enter__()
        self.waiters = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="submitit-wait")

    def submit(self, method: MethodSpec, seeds: list[int]) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        self.submitted.append((method.name, seeds, self.executor.submit(self.job, method.name, seeds), future))
        return future

    @staticmethod
    def _wait(name: str, seeds: list[int], job, future: concurrent.futures.Future) -> None:
        try:
            future.set_result(job.result())
        except Exception as err:  # submitit's Failed/UncompletedJobError: what the job raised, or how it ended
            reason = next((line for line in reversed(str(err).splitlines()) if line.strip()), type(err).__name__)
            failures = [f"{name} seed {seed}: job {job.job_id} failed ({reason.strip()[:300]}; log: {job.paths.stderr})"
                        for seed in seeds]
            for failure in failures:
                log.warning(f"[{failure.split(':')[0]}] FAILED: {failure}")
            future.set_result(failures)

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
