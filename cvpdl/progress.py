"""Epoch-end reports from the training loops, for whoever runs them: the harness prints one line per epoch and logs
the values to MLflow as the epoch ends. The library itself prints nothing."""
from __future__ import annotations

from collections.abc import Callable

# called after every epoch: (stage, e.g. "detr" or "train CLIP"; epoch, 1-based; epochs in all;
# {"<split>/<metric>": value})
EpochCallback = Callable[[str, int, int, dict[str, float]], None]


def no_report(stage: str, epoch: int, epochs: int, values: dict[str, float]) -> None:
    """The default callback: nobody listens."""
