"""The tuned values ``benchmark tune`` writes to ``best.json``, read back: the ``section.key=value`` overrides
``run --params`` applies per method. Both ``tune`` (which writes the file) and the runner (which reads it) import
this module, so neither imports the other."""
from __future__ import annotations

import json
from pathlib import Path

from cvpdl.errors import UserInputError


def assignment(key: str, value) -> str:
    return f"{key}={json.dumps(value) if isinstance(value, bool) else value}"


def study_profile(path: Path) -> str | None:
    """The profile a best.json was tuned on (None when there is no readable file)."""
    try:
        return json.loads(Path(path).read_text()).get("profile")
    except (OSError, ValueError, AttributeError):
        return None


def load_params(path: Path, suite: str) -> dict[str, list[str]]:
    """``best.json`` → per method, the ``section.key=value`` overrides ``run --params`` applies to that method."""
    try:
        payload = json.loads(Path(path).read_text())
        methods = payload["methods"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserInputError(f"--params {path}: not a best.json written by `benchmark tune` ({err})") from None
    if payload.get("suite") != suite:
        raise UserInputError(f"--params {path} was tuned for suite {payload.get('suite')!r}, not {suite!r}")
    return {name: [assignment(k, v) for k, v in sorted(entry["params"].items())] for name, entry in methods.items()}
