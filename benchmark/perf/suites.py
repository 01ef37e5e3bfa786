"""The suites' side of ``perf``: every suite run on the perf profile in its own process (wall time, peak memory,
ovd's seconds per image) and the committed default runs' wall times."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

from benchmark.perf.common import PerfOptions, PerfReport
from benchmark.perf.profile import committed_jobs
from benchmark.registry import REGISTRY


def run_suite_process(suite: str, options: PerfOptions, scratch: Path, profile: str | None = None,
                      processes: int = 1, cache_dir: Path | None = None, jobs: int = 1) -> tuple[float, float]:
    """``python -m benchmark run --suite SUITE`` on the perf profile (or ``profile``) in a child process, into
    ``scratch``: (wall seconds of the process, the largest peak resident memory of it or one of its descendants,
    in MiB). A process of its own, so that the peak is the suite's (interpreter and imports included) and not this
    process's models. ``processes`` > 1: under ``torchrun --nproc_per_node``; ``jobs`` > 1: ``--jobs``;
    ``--threads`` split between the ranks or workers."""
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        "--nproc_per_node", str(processes)]
    command = [*launcher, "-m", "benchmark", "-q", "run", "--suite", suite, "--profile",
               profile or options.suites_profile, "--results-dir", str(scratch), "--device", options.device, "--force"]
    if jobs > 1:
        command += ["--jobs", str(jobs)]
    cache_dir = cache_dir or options.cache_dir
    if cache_dir:
        command += ["--cache-dir", str(Path(cache_dir).resolve())]
    if options.threads:
        command += ["--threads", str(max(1, options.threads // (processes * jobs)))]
    log = scratch / f"{suite}.log"
    with open(log, "w") as output:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        peak = peak_resident_mib(child)
        seconds = time.perf_counter() - start
    if child.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"{shlex.join(command)} exited with {child.returncode}:\n{tail}")
    return seconds, peak


def _high_water_mib(process: psutil.Process) -> float:
    """A process's peak resident set so far: Linux's VmHWM (since its exec, so a child does not inherit its
    parent's, as ``ru_maxrss`` does), elsewhere its current resident set."""
    try:
        status = Path(f"/proc/{process.pid}/status")
        if status.is_file():
            line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
            return int(line.split()[1]) / 1024  # kB
        return process.memory_info().rss / 2 ** 20
    except (OSError, StopIteration, psutil.Error):
        return 0.0  # gone between listing and reading: its last reading stands


def peak_resident_mib(child: subprocess.Popen, interval: float = 0.1) -> float:
    """Wait for ``child``; the largest peak resident set (MiB) of it or any of its descendants (``--jobs`` workers,
    torchrun ranks), polled every ``interval`` seconds while they run (growth in a process's last interval is
    missed)."""
    peaks: dict[int, float] = {}
    root = psutil.Process(child.pid)
    while child.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        for process in tree:
            peaks[process.pid] = max(peaks.get(process.pid, 0.0), _high_water_mib(process))
        time.sleep(interval)
    return max(peaks.values(), default=float("nan"))


def suite_wall_times(report: PerfReport, options: PerfOptions) -> None:
    """Committed default-profile wall times, and every suite run here on the perf profile, one command after the
    other into one results folder, as a user runs them (the MLflow store is created by the first)."""
    with tempfile.TemporaryDirectory() as scratch:
        for spec in REGISTRY.suites():
            committed_wall_time(report, options.results_dir / spec.name / "run.json", spec.name)
            if options.suites_profile == "none":
                report.add("suites", f"{spec.name} peak memory", float("nan"), "MiB",
                           "not measured: suite runs skipped (--suites-profile none)", suite=spec.name,
                           quantity="peak memory")
            else:
                timed_suite_run(report, options, spec.name, Path(scratch))


def committed_wall_time(report: PerfReport, committed: Path, suite: str) -> None:
    if not committed.is_file():
        return
    info = json.loads(committed.read_text())
    if info.get("profile") != "default" or "wall_seconds" not in info:
        return
    prepare = info.get("prepare_seconds")
    report.add("suites", f"{suite} default wall time", info["wall_seconds"], "s",
               f"{committed} (commit {info['git_commit'][:12]}, {info['device']}, --jobs {committed_jobs(info)}"
               + (f"; {prepare} s of it preparing shared data/models)" if prepare is not None else ")"))
    if prepare is not None:  # what a run with its data, CLIP and localizer cached takes
        report.add("suites", f"{suite} default wall time without the shared set-up", info["wall_seconds"] - prepare,
                   "s", f"{committed}: wall − set-up")
    if (cache := info.get("prepare_cache")) and "loaded" not in cache.values():  # a cold start, as run.json says
        report.add("suites", f"{suite} default cold wall time", info["wall_seconds"], "s",
                   f"{committed}: its shared models trained in the run ({', '.join(cache)})")


def timed_suite_run(report: PerfReport, options: PerfOptions, suite: str, scratch: Path) -> None:
    profile = options.suites_profile
    process_seconds, peak = run_suite_process(suite, options, scratch, jobs=options.suite_jobs)
    # a quick-profile run writes its own folder, <suite>/<data>-<profile>-<hash>/
    [written] = (scratch / suite).glob("**/run.json")
    info = json.loads(written.read_text())
    # the runner's own clock, as in the committed default-profile figure; the rest is start-up and imports
    report.add("suites", f"{suite} {profile} wall time", info["wall_seconds"], "s",
               f"run here in its own process (+{process_seconds - info['wall_seconds']:.1f} s interpreter start, "
               f"imports, report), --jobs {options.suite_jobs}; cached data/CLIP/teacher reused as in a repeated run")
    report.add("suites", f"{suite} {profile} process wall time", process_seconds, "s",
               "the whole command, as a user waits for it", suite=suite, quantity=f"{profile} process wall time")
    report.add("suites", f"{suite} peak memory", peak, "MiB",
               f"peak resident set of the {profile}-profile process (interpreter and torch included"
               + ("; the largest one process, the parent's or a worker's)" if options.suite_jobs > 1 else ")"),
               suite=suite, quantity="peak memory")
    if suite == "ovd":
        timings = pd.read_csv(written.parent / "timings.csv")
        per_image = timings[timings["metric"] == "seconds_per_image"].groupby("method")["value"].mean()
        for method, value in per_image.items():
            report.add("ovd", f"{method} seconds per image", value, "s",
                       "proposals + region embedding + zero-shot scoring, test split")
