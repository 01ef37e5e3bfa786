"""Artefacts shared across cells (trained CLIP, localizer, teachers), cached on disk under a key of everything
that shapes them: the caller's config parts, the code that builds them, the hardware signature and, under
torchrun, the world size. Under torchrun every rank trains an artefact (DDP), rank 0 alone writes it and the
others read it back, so every rank holds the same weights and buffers."""
from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import cvpdl
from benchmark import distributed
from benchmark.paths import json_digest, source_digest
from benchmark.reproducibility import hardware, hardware_signature
from benchmark.results import atomic_path, locked
from cvpdl.checkpoint import Checkpoint

CVPDL_ROOT = Path(cvpdl.__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def code_version(root: Path = CVPDL_ROOT) -> str:
    """The library's source digest: an edit anywhere in ``cvpdl/`` retrains cached artefacts. Coarser than the
    subpackages each artefact imports, but never stale; read once per process."""
    return source_digest(root)


def cache_key(*parts) -> str:
    """Key of a cached artefact: ``parts`` (config sections, data options, seed) plus the library code and the
    hardware signature (CPU model, ISA flags, torch version, current torch threads), which shape trained weights,
    and the number of torchrun ranks that train it (absent from a single process's key)."""
    shaping = {"code": code_version(), "hardware": hardware_signature(hardware(torch.get_num_threads()))}
    if (world := distributed.world_size()) > 1:
        shaping["world_size"] = world
    return json_digest([parts, shaping])


def cached_state(path: Path, module: torch.nn.Module, train: Callable[[Checkpoint], object]) -> bool:
    """Load ``module``'s weights from ``path`` (``weights_only``), or train it and save them there atomically
    (concurrent invocations may train the same artefact). ``train`` gets the per-epoch checkpoint of the training,
    beside the cache file: a training killed midway continues from its last epoch when the artefact is next asked
    for (the path's key covers code, config and hardware, so the checkpoint is always this training's own), and
    the checkpoint is removed once the weights are saved. An unreadable cache file (truncated, from other code) is
    set aside and the module trained again. Under torchrun rank 0 decides, every rank trains (DDP), rank 0 writes
    and the others wait, then read the file. Concurrent processes (``--jobs`` workers, invocations) train it once:
    the others wait for the file under its lock. Returns whether it was trained here (False: loaded)."""
    with locked(path.with_name(path.name + ".lock")) if distributed.rank() == 0 else contextlib.nullcontext():
        return _load_or_train(path, module, train)


def _load_or_train(path: Path, module: torch.nn.Module, train: Callable[[Checkpoint], object]) -> bool:
    if distributed.agree(_load(path, module) if distributed.rank() == 0 else None):
        if distributed.rank() != 0:
            module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return False
    partial = Checkpoint(path.parent, path.name + ".partial")
    train(partial)
    if distributed.rank() == 0:
        with atomic_path(path) as tmp:
            torch.save(module.state_dict(), tmp)
        partial.path.unlink(missing_ok=True)
    distributed.barrier()
    if distributed.rank() != 0:
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return True


def _load(path: Path, module: torch.nn.Module) -> bool:
    if path.is_file():
        try:
            module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return True
        except Exception as err:
            warnings.warn(f"cached weights {path} are unreadable ({type(err).__name__}); training them again",
                          stacklevel=3)
            path.unlink()
    return False
