"""The plug-in point of ``perf``'s optional sections: what a section declares and where it is registered."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainingBench:
    """What the training-throughput section hands a ``"train"``-stage section: the model steps it timed."""

    make_step: Callable[..., Any]  # (detr variant, compiled=False) -> (one optimiser step on (images, targets), model)
    batches: list  # (images, targets) on the device, the same the throughput was timed on
    device: Any  # torch.device
    steps: int  # timed steps per model
    num_classes: int  # of the detection split the batches come from


@dataclass(frozen=True)
class PerfExtra:
    """An optional ``perf`` section: off unless ``perf --<name>`` (``PerfOptions.extras``) asks for it."""

    name: str  # the flag and the key in PerfOptions.extras
    help: str  # the flag's help line
    stage: str  # "train": after the training throughput, with its TrainingBench; "suites": after the suites' times
    run: Callable[..., None]  # (report, options, bench: TrainingBench | None) -> None: adds its rows to the report
    # (report, detr variant) -> a sentence perf.md adds where the variant missed its speed goal
    missed_goal_note: Callable[[Any, str], str] | None = None


EXTRAS: dict[str, PerfExtra] = {}


def register(extra: PerfExtra) -> PerfExtra:
    if extra.name in EXTRAS:
        raise ValueError(f"perf section {extra.name!r} is already registered")
    if extra.stage not in ("train", "suites"):
        raise ValueError(f"perf section {extra.name!r}: unknown stage {extra.stage!r}")
    EXTRAS[extra.name] = extra
    return extra


def run_stage(stage: str, report, options, bench: TrainingBench | None = None) -> None:
    """The sections of ``stage`` that ``options.extras`` asks for, in registration order."""
    for extra in EXTRAS.values():
        if extra.stage == stage and extra.name in options.extras:
            extra.run(report, options, bench)
