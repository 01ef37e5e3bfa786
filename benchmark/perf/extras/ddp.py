"""``perf --ddp`` (minutes, so off by default): what two DDP processes buy each suite, its ``quick`` profile run
with one process and under ``torchrun --nproc_per_node 2`` (the same cores split between the ranks), the ratio of the
runner's wall times."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from benchmark.paths import default_cache_dir
from benchmark.perf.extras.base import PerfExtra, register
from benchmark.registry import REGISTRY

# cache folders of trained models (retrained in each timed run); the data folders beside them are reused
MODEL_CACHES = ("clip", "localizer", "kd_teacher")


def ddp_speedups(report, options, processes: int = 2) -> None:
    """Every suite's quick profile with one process and under torchrun with ``processes`` (each rank gets its share
    of the cores): the runner's wall times and their ratio. Each run gets a cache of its own holding the cached data
    (linked, so a rerun regenerates nothing) but no trained model, so CLIP, localizer and teacher are trained in
    both: every DDP training loop is timed."""
    from tqdm.auto import tqdm

    from benchmark.perf.suites import run_suite_process

    cache = Path(options.cache_dir or default_cache_dir()).resolve()
    for spec in tqdm(REGISTRY.suites(), desc="2-process speed-up", unit="suite"):
        seconds = {}
        for world in (1, processes):
            with tempfile.TemporaryDirectory() as scratch:
                scratch = Path(scratch)
                (scratch / "cache").mkdir()
                for folder in cache.glob("*") if cache.is_dir() else []:
                    if folder.is_dir() and folder.name not in MODEL_CACHES:
                        (scratch / "cache" / folder.name).symlink_to(folder, target_is_directory=True)
                (scratch / "results").mkdir()
                run_suite_process(spec.name, options, scratch / "results", profile="quick", processes=world,
                                  cache_dir=scratch / "cache")
                [written] = (scratch / "results" / spec.name).glob("**/run.json")
                info = json.loads(written.read_text())
                assert info["world_size"] == world, written
                seconds[world] = info["wall_seconds"]
        note = "quick profile, runner wall time, shared models (CLIP, localizer, teacher) trained in the run"
        report.add("ddp", f"{spec.name} 1-process wall time", seconds[1], "s", note)
        report.add("ddp", f"{spec.name} {processes}-process wall time", seconds[processes], "s",
                   f"{note}; torchrun --nproc_per_node {processes}, the cores split between the ranks")
        report.add("ddp", f"{spec.name} {processes}-process speed-up", seconds[1] / seconds[processes], "×",
                   f"1-process ÷ {processes}-process wall time", suite=spec.name,
                   quantity=f"{processes}-process speed-up")


register(PerfExtra(
    "ddp", help="also time every suite's quick profile with 1 process and under torchrun with 2 (DDP): the 2-process "
                "speed-up per suite (minutes; off by default)", stage="suites",
    run=lambda report, options, bench: ddp_speedups(report, options)))
