"""Per-epoch checkpoints of a training loop, so that an interrupted run resumes to exactly the same result.

A checkpoint holds the ``state_dict`` of every stateful object of the loop (model, optimiser, scheduler), every
RNG state the loop draws from (torch, the loop's generator, CUDA, numpy, ``random``) and the loop's own
bookkeeping (epoch, history). It is written atomically after each epoch and read with
``torch.load(weights_only=True)``: only tensors and plain containers, no pickled code.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvpdl.errors import UserInputError


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt_state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "random": [version, list(mt_state), gauss]}


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, mt_state, gauss = state["random"]
    random.setstate((version, tuple(mt_state), gauss))


@dataclass(frozen=True)
class Checkpoint:
    """Where one loop keeps its checkpoint; ``directory`` None turns checkpointing off."""

    directory: Path | None
    name: str

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / f"{self.name}.pt"

    def child(self, name: str) -> Checkpoint:
        """The checkpoint of a nested loop (e.g. one stage of a multi-stage method)."""
        return Checkpoint(self.directory, f"{self.name}.{name}")

    def save(self, stateful: dict[str, Any], generator: torch.Generator, **progress: Any) -> None:
        if self.path is None or (torch.distributed.is_initialized() and torch.distributed.get_rank() != 0):
            return  # under DDP every rank holds the same state: rank 0 writes it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"state": {k: obj.state_dict() for k, obj in stateful.items()}, "rng": capture_rng(generator),
                    "progress": progress}, tmp)
        tmp.replace(self.path)

    def restore(self, stateful: dict[str, Any], generator: torch.Generator) -> dict[str, Any] | None:
        """Load the saved state into ``stateful`` and the RNGs; the loop's saved progress, or None (no file)."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            for key, obj in stateful.items():
                obj.load_state_dict(saved["state"][key])
        except Exception as err:  # truncated file, foreign pickle, other model: never a traceback
            raise UserInputError(f"checkpoint {self.path} cannot be resumed from ({type(err).__name__}); "
                                 "delete it or run without --resume") from None
        restore_rng(saved["rng"], generator)
        return saved["progress"]
