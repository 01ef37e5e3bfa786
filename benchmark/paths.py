"""Where cached artefacts live and the digests that name things: light (no torch, no pandas), so that ``list`` and
``--help`` can use it without importing the library."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_cache_dir() -> Path:
    """``$CVPDL_CACHE``, else ``~/.cache/cvpdl-bench``: the one default of ``run``, ``tune``, ``perf`` and ``list``."""
    return Path(os.environ.get("CVPDL_CACHE") or Path.home() / ".cache" / "cvpdl-bench")


def json_digest(payload, length: int = 16) -> str:
    """The first ``length`` hex digits of the sha256 of ``payload`` as sorted-key JSON (paths and other objects as
    their ``str``): the name of a config, of a cached artefact, of a hardware signature."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:length]


def source_digest(*roots: Path) -> str:
    """sha256 over the paths and bytes of every ``*.py`` below ``roots``: changes whenever the code does."""
    digest = hashlib.sha256()
    for root in map(Path, roots):
        for path in sorted(root.rglob("*.py")):
            name = f"{root.name}/{path.relative_to(root).as_posix()}"  # the same digest wherever the tree lies
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
