"""The flow of a run: ``run_suite`` opens the invocation (``benchmark.invocation``: torch set up, the run resolved once,
the cell runner that alone seeds cells), then runs every (method, seed) cell of the suite, through one of
``benchmark.executors``, inside one MLflow invocation run: a cell that finished before is reused from the cell store
(``benchmark.cells``) unless ``force`` is set, any other is trained and stored. A cell whose loss diverges ends
FAILED and the others go on; the suite's files are then left as they were. Otherwise the cells are merged into the
suite's files, which are rendered into ``summary.md``, ``REPORT.md`` and the figures. What the run is (its options,
config, results folder and ``run.json``) is decided beforehand by ``benchmark.plan``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from benchmark import distributed
from benchmark.cells import stack, write_suite_files
from benchmark.config import population_chunks
from benchmark.executors import cell_executor
from benchmark.invocation import open_invocation
from benchmark.plan import RunOptions, apply_plan
from benchmark.registry import MethodSpec
from benchmark.report import render_suite
from benchmark.summary import SMOKE, headline_table, is_smoke
from benchmark.results import locked
from benchmark.tracking import NoTracking, Tracker

log = logging.getLogger("benchmark")  # progress lines; -q hides them, the CLI prints them between progress bars


class CellsFailedError(RuntimeError):
    """Some cells diverged or failed; the others finished and are kept. The CLI exits with its own code (3)."""


def _bar_shape() -> dict[str, int]:
    """tqdm draws nothing on a terminal that reports 0 × 0 (a pseudo-terminal nobody sized): 100 × 24 there."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):  # not a terminal: the bar is disabled anyway
        return {}
    return {} if size.columns > 0 and size.lines > 0 else {"ncols": 100, "nrows": 24}


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
            def done(seeds):
                if bar.n == 0 and runner.prepare_seconds and not bar.disable:  # a disabled bar has no clock
                    bar.start_t += runner.prepare_seconds
                bar.update(len(seeds))

            futures = []
            if to_train:
                with cell_executor(resolved, runner, log_path) as executor:
                    for method, seeds in populations(to_train, options.seeds, resolved.population):
                        futures.append(executor.submit(method, seeds))
                        futures[-1].add_done_callback(lambda _, seeds=seeds: done(seeds))
            failures = [failure for future in futures for failure in future.result()]
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


def populations(to_train: list[tuple[MethodSpec, int]], seeds: list[int], sizes: dict[str, int]
                ) -> list[tuple[MethodSpec, list[int]]]:
    """What trains together: per method, the run's seed list cut into consecutive chunks of its population size (a
    function of the options alone, recorded in run.json), each chunk's seeds still to train."""
    pending: dict[str, tuple[MethodSpec, set[int]]] = {}
    for method, seed in to_train:
        pending.setdefault(method.name, (method, set()))[1].add(seed)
    return [(method, members) for method, left in pending.values()
            for chunk in population_chunks(seeds, sizes[method.name])
            if (members := [seed for seed in chunk if seed in left])]


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
