"""What a suite's hooks exchange with the runner: the context a cell runs in and what a cell returns.

Suites import these (with ``registry`` and ``claims``), never the runner."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from cvpdl.progress import EpochCallback, no_report


@dataclass
class RunContext:
    """What a suite's hooks receive: resolved config, device, where to cache artefacts, data options."""

    suite: str
    cfg: dict
    device: torch.device
    cache_dir: Path
    data: str
    data_root: Path | None
    clip: str | None
    clip_weights: Path | None
    checkpoints: Path | None = None  # the cell's per-epoch checkpoint folder (set per cell by the runner)
    # the training loops call it after every epoch: a console line and live MLflow metrics (set by the runner)
    on_epoch: EpochCallback = no_report


@dataclass
class CellResult:
    records: list[dict]  # {"epoch", "split", "metric", "value"}; epoch None for final metrics
    timings: list[dict] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    # the trained models a user may reload (name → module): saved in the cell folder as ``models/<name>.pt``
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
