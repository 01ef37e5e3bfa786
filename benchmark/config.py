"""Resolved configs: dataclass defaults → profile → ``--set section.key=value``, validated, hashed.

A resolved config is a plain nested dict ``{section: {key: value}}`` (JSON-able, so it can be hashed, written to
``run.json`` and logged to MLflow); library code receives ``section_config(cfg, section, Dataclass)``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any

from cvpdl.errors import UserInputError


def defaults(sections: dict[str, type]) -> dict[str, dict[str, Any]]:
    return {name: json.loads(json.dumps(dataclasses.asdict(cls()))) for name, cls in sections.items()}


def _parse(raw: str, default: Any, where: str) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return raw.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, list):
            element = default[0] if default else ""
            return [_parse(part.strip(), element, where) for part in raw.split(",") if part.strip()]
        return raw
    except ValueError:
        raise UserInputError(f"{where}: cannot read {raw!r} as {type(default).__name__}") from None


def apply_override(cfg: dict[str, dict[str, Any]], assignment: str) -> None:
    """Apply one ``section.key=value`` in place; unknown sections or keys are user errors listing the choices."""
    if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
        raise UserInputError(f"--set expects section.key=value, got {assignment!r}")
    path, raw = assignment.split("=", 1)
    section, key = path.split(".", 1)
    if section not in cfg:
        raise UserInputError(f"unknown config section {section!r}; choose from: {', '.join(cfg)}")
    if key not in cfg[section]:
        raise UserInputError(f"unknown config key {path!r}; choose from: "
                             + ", ".join(f"{section}.{k}" for k in cfg[section]))
    cfg[section][key] = _parse(raw, cfg[section][key], path)


def resolve(sections: dict[str, type], profile: dict[str, Any], assignments: list[str]) -> dict[str, dict[str, Any]]:
    cfg = defaults(sections)
    for path, value in profile.items():
        section, key = path.split(".", 1)
        if key not in cfg.get(section, {}):
            raise ValueError(f"profile sets unknown key {path!r}")  # a bug in a suite module, not user input
        cfg[section][key] = json.loads(json.dumps(value))
    for assignment in assignments:
        apply_override(cfg, assignment)
    return cfg


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def section_config(cfg: dict[str, dict[str, Any]], section: str, cls: type):
    """The dataclass instance of one section (JSON lists back to the tuples the dataclass declares)."""
    hints = typing.get_type_hints(cls)
    values = {k: tuple(v) if isinstance(v, list) and typing.get_origin(hints[k]) is tuple else v
              for k, v in cfg[section].items()}
    return cls(**values)
