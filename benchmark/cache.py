"""Artefacts shared across cells (trained CLIP, localizer, teachers), cached on disk by config hash."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_state(path: Path, module: torch.nn.Module, train: Callable[[], object]) -> None:
    """Load ``module``'s weights from ``path`` (``weights_only``), or train it and save them there atomically.
    An unreadable cache file (truncated, from other code) is set aside and the module trained again."""
    if path.is_file():
        try:
            module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return
        except Exception as err:
            warnings.warn(f"cached weights {path} are unreadable ({type(err).__name__}); training them again",
                          stacklevel=2)
            path.unlink()
    train()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent invocations may train the same artefact
    torch.save(module.state_dict(), tmp)
    tmp.replace(path)
