"""``--population``'s default (``auto``), chosen per device type before anything trains and recorded in run.json.

On each device type it is the population size that a committed ``perf --population`` run on that type measured
fastest for the suite's own population path (``results/perf/`` on this CPU, ``results/perf/device_check/perf/`` from
a lent GPU), where it beats one member trained alone by ``MARGIN`` at least: 1 otherwise. Where no run on that type
measured it, a CPU trains every seed alone (a population has to earn its place there) and a GPU trains up to
``GPU_UNMEASURED`` seeds of a method together, labelled unmeasured. The choice is a function of committed files and
the device type, never of free memory, so the same invocation on the same kind of machine chooses the same
populations.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from benchmark.paths import REPO_ROOT
from cvpdl.errors import UserInputError

AUTO = "auto"
PERF_RUNS = (REPO_ROOT / "results" / "perf", REPO_ROOT / "results" / "perf" / "device_check" / "perf")
# how much faster than one member alone a population must be measured to be chosen: timings are noisy here (two perf
# runs of the same code on this machine, 2026-12-08, timed detr alone at 323 and 238 images/s, 26% apart)
MARGIN = 1.25
# a GPU without a measurement: the model-ensembling recipe's design point, tiny members (detr 375k parameters),
# not a measured optimum
GPU_UNMEASURED = 32


def measured_rates(folder: Path, suite: str) -> tuple[str | None, dict[int, float]]:
    """The device type of the perf run in ``folder`` and its images/s of ``suite``'s population per size, size 1
    being one member trained alone: the train table's row where perf times the suite's model alone there (detr:
    its population of 1 is the batched model with one member), else the population section's own."""
    try:
        device = str(json.loads((folder / "run.json").read_text())["device"]).split(":")[0]
        rows = list(csv.DictReader((folder / "perf.csv").open()))
    except (OSError, ValueError, KeyError):
        return None, {}
    pattern = re.compile(rf"{re.escape(suite)} population of (\d+) images/s")
    rates = {int(match[1]): float(row["value"]) for row in rows
             if row["section"] == "population" and (match := pattern.fullmatch(row["item"]))}
    alone = [float(row["value"]) for row in rows if row["section"] == "train" and row["item"] == f"{suite} images/s"]
    return device, {**rates, 1: alone[0]} if rates and alone else rates


def default_population(suite: str, device_type: str, folders: tuple[Path, ...] = PERF_RUNS) -> tuple[int, str]:
    """(``--population auto``'s size for ``suite`` on ``device_type``, why)."""
    for folder in folders:
        device, rates = measured_rates(folder, suite)
        if device == device_type and 1 in rates and len(rates) > 1:
            where = folder.relative_to(REPO_ROOT) if folder.is_relative_to(REPO_ROOT) else folder
            batched = max((size for size in rates if size > 1), key=rates.get)
            ratio = f"P = {batched}: {rates[batched] / rates[1]:.2f}× one member alone ({where}/perf.csv)"
            if rates[batched] < MARGIN * rates[1]:
                return 1, f"no population measured {MARGIN:g}× faster on {device_type}, the best {ratio}"
            return batched, f"fastest measured on {device_type}, {ratio}"
    if device_type == "cuda":
        return GPU_UNMEASURED, f"no perf --population run on a GPU: up to {GPU_UNMEASURED} seeds (unmeasured)"
    return 1, f"no perf --population run on {device_type}: each seed alone"


def population_option(text: str) -> int | str:
    """argparse ``type=`` of ``--population``: a size of at least 1, or ``auto``."""
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise UserInputError(f"--population takes a whole number or 'auto', got {text!r}") from None


def population_size(population: int | str, suite: str, can_batch: bool, device_type: str, world: int = 1
                    ) -> tuple[int, str]:
    """The size an invocation trains populations of, and why: ``population`` as given, or ``auto``'s choice (1 for
    a suite that trains every seed alone, and under torchrun)."""
    if population != AUTO:
        return int(population), "--population"
    if not can_batch or world > 1:
        return 1, "the suite trains every seed alone" if not can_batch else "one process per rank (torchrun)"
    return default_population(suite, device_type)
