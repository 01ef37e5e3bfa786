"""Where the time goes, for the goals ``perf`` can miss: measured accounts instead of likely causes.

- **A training step by op group** (``torch.profiler``) of every ``detr`` variant and its Hugging Face counterpart:
  milliseconds per step in the backbone's convolutions and batch norm, in drawing random numbers (dropout masks,
  DN-DETR's noise), in matrix multiplies and attention, and in everything else (element-wise ops, indexing, copies,
  the optimizer). HF's model runs our backbone and draws its own dropout masks, so that much of our step is work
  the counterpart does too and bounds the speed-up over it: the ceiling is HF's step ÷ that shared work.
- **A suite's wall time by part**, read from the committed default run: the wall seconds its ``timings.csv`` gives
  the training loops, kd's teachers and ovd's evaluation, against the run's worker seconds (wall × ``--jobs``).
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pandas as pd
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmark.registry import REGISTRY

SECTION = "step profile"
BACKBONE, RANDOM, MATMUL = "backbone convolution + batch norm", "random numbers", "matmul + attention"
OTHER = "other (element-wise, indexing, copies, optimizer, Python)"
# op groups by substring of the aten op name, first match wins; the rest is OTHER
OP_GROUPS = {BACKBONE: ("convolution", "batch_norm"), RANDOM: ("bernoulli", "rand", "uniform_", "normal_"),
             MATMUL: ("mm", "matmul", "linear", "scaled_dot_product", "attention")}
# the wall-clock timings a suite's timings.csv may hold, as the suite time table names them
TIMED_PARTS = {"train_seconds": "training loops", "teacher_seconds": "teacher (kd)",
               "eval_seconds": "evaluation (ovd)"}


def op_group(name: str) -> str:
    for group, keys in OP_GROUPS.items():
        if any(key in name for key in keys):
            return group
    return OTHER


def profile_step(step, batches: list, device: torch.device) -> dict[str, float]:
    """Milliseconds per step by op group over ``batches`` (self time of every op, so nothing counts twice),
    scaled so that the groups add up to the measured wall time per step (with the profiler running)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for images, targets in batches:
            step(images, targets)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall_ms = (time.perf_counter() - start) * 1e3 / len(batches)
    totals: dict[str, float] = dict.fromkeys([*OP_GROUPS, OTHER], 0.0)
    for event in prof.key_averages():
        if event.device_type == DeviceType.CPU:  # the ops; on CUDA their kernels' time is the ops' device time
            totals[op_group(event.key)] += getattr(event, attr)
    profiled = sum(totals.values())
    return {group: wall_ms * value / profiled for group, value in totals.items()}


def step_profiles(report, names: list[str], make_step, batches: list, device: torch.device) -> None:
    """One ``profile_step`` per model name (``make_step(name)`` → (step, model)), two warm-up steps first."""
    for name in names:
        torch.manual_seed(0)
        step, _ = make_step(name)
        for images, targets in batches[:2]:
            step(images, targets)
        groups = profile_step(step, batches[2:], device)
        total = sum(groups.values())
        for group, ms in groups.items():
            report.add(SECTION, f"{name}: {group}", ms, "ms/step", f"{100 * ms / total:.0f}% of the step",
                       model=name, group=group)
        report.add(SECTION, f"{name}: whole step", total, "ms/step",
                   f"{len(batches) - 2} profiled steps (profiler on, so slower than the train table)", model=name)


DISAGREEMENT = 0.1  # profile vs train-table speed-up ratios further apart than this are flagged


def ceiling_note(report, name: str, hf: str, target: float) -> str | None:
    """A measured account of a missed speed-up over ``hf``, from the step profiles; None without them. Where the
    profile (few steps, under the profiler) and the train table disagree on which model is faster, it says so: the
    train table is the measure of record."""
    frame = report.frame()
    if "group" not in frame:
        return None
    ms = frame[(frame["section"] == SECTION) & frame["group"].notna()].set_index(["model", "group"])["value"]
    if not {name, hf} <= set(ms.index.get_level_values("model")):
        return None
    ours, theirs, need = ms[name].sum(), ms[hf].sum(), ms[hf].sum() / target
    ratio = report.get("train", f"{name} images/s") / report.get("train", f"{hf} images/s")
    # work both models do: the same backbone (HF's model runs ours), and random numbers as far as HF draws them too
    # (DN-DETR's noise is ours alone)
    shared = ms[name, BACKBONE] + min(ms[name, RANDOM], ms[hf, RANDOM])
    text = (f"`{name}` vs {hf} (step profile table): our step takes {ours:.0f} ms, HF's {theirs:.0f} ms; {shared:.0f} "
            f"ms of ours is work HF's model does too (the same backbone's convolutions and batch norm, random numbers "
            f"up to HF's {ms[hf, RANDOM]:.0f} ms), so even with everything else at zero the ratio could reach "
            f"{theirs / shared:.2f}×. {target}× needs our step at ≤ {need:.0f} ms: ")
    if ours <= need:
        text += "the profiled step already meets it."
    elif need <= shared:
        text += "unreachable even with all our other work at zero."
    else:
        text += (f"the other {ours - shared:.0f} ms (matmuls and attention {ms[name, MATMUL]:.0f} ms, the rest "
                 f"{ms[name, OTHER]:.0f} ms, random numbers beyond HF's included) cut to {need - shared:.0f} ms.")
    if math.isfinite(ratio) and abs(theirs / ours - ratio) > DISAGREEMENT:
        text += (f" **The two measurements disagree**: the profiled steps give {theirs / ours:.2f}× HF's speed, the "
                 f"train table (more steps, no profiler, the measure of record) {ratio:.2f}×; a quieter machine is "
                 "needed to tell them apart.")
    return text


def suite_time_accounts(report, results_dir: Path) -> None:
    """Each committed default run's worker seconds (wall × jobs) against the wall seconds of its training loops
    and evaluation as ``timings.csv`` records them."""
    for spec in REGISTRY.suites():
        folder = results_dir / spec.name
        if not (folder / "run.json").is_file() or not (folder / "timings.csv").is_file():
            continue
        info = json.loads((folder / "run.json").read_text())
        if info.get("profile") != "default" or "wall_seconds" not in info:
            continue
        timings, jobs = pd.read_csv(folder / "timings.csv"), committed_jobs(info)
        worker_seconds = info["wall_seconds"] * jobs
        note = f"{folder / 'timings.csv'} against wall {info['wall_seconds']} s × {jobs} jobs"
        report.add("suite time", f"{spec.name} worker seconds", worker_seconds, "s", note)
        for metric, label in TIMED_PARTS.items():
            seconds = timings.loc[timings["metric"] == metric, "value"].sum()
            if seconds:
                report.add("suite time", f"{spec.name} {label}", seconds, "s",
                           f"{100 * seconds / worker_seconds:.0f}% of the worker seconds")
        if (prepare := info.get("prepare_seconds")) is not None:
            report.add("suite time", f"{spec.name} shared set-up", prepare, "s",
                       "data and shared models (CLIP, localizer) prepared before the cells (run.json)")


def committed_jobs(info: dict) -> int:
    """``--jobs`` of a committed run: run.json's own field, or for a run from before it the recorded command."""
    if "jobs" in info:
        return int(info["jobs"])
    match = re.search(r"--jobs[ =](\d+)", info.get("environment", {}).get("command", ""))
    return int(match.group(1)) if match else 1


def suite_time_note(report, suite: str) -> str | None:
    """A measured account of a missed suite budget, from ``suite_time_accounts``; None without it."""
    worker = report.get("suite time", f"{suite} worker seconds")
    if not math.isfinite(worker):
        return None
    parts = {label: report.get("suite time", f"{suite} {label}")
             for label in (*TIMED_PARTS.values(), "shared set-up")}
    parts = {label: value for label, value in parts.items() if math.isfinite(value)}
    rest = worker - sum(parts.values())
    text = (f"`{suite}` default (measured, suite time table): of its {worker:.0f} worker seconds (wall × jobs), "
            + ", ".join(f"{label} {value:.0f} s ({100 * value / worker:.0f}%)" for label, value in parts.items()))
    if rest < 0:  # timings.csv holds cells an earlier invocation trained
        return text + "; the timed parts exceed the wall time: some cells were reused from an earlier run."
    return text + (f"; the other {rest:.0f} s ({100 * rest / worker:.0f}%) are what no timer covers (the cells' "
                   "evaluation and analyses where not timed, start-up, idle workers at the end).")
