"""Resolved configs: dataclass defaults → profile → ``--config FILE`` → ``--set section.key=value``, validated, hashed.

A resolved config is a plain nested dict ``{section: {key: value}}`` (JSON-able, so it can be hashed, written to
``run.json`` and logged to MLflow); library code receives ``section_config(cfg, section, Dataclass)``.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import math
import typing
from pathlib import Path
from typing import Any

from benchmark.paths import json_digest
from cvpdl.errors import UserInputError

# Ranges the dataclass types cannot say. Keys are ``section.key`` patterns; every number is also >= 0 unless its
# default is negative (a sentinel), and list values are checked element by element.
AT_LEAST_ONE = ("*.epochs", "*.batch_size", "*_images", "*.images", "*size", "*_layers", "*.heads", "*_heads",
                "*.d_model", "*.d_ff", "*.num_*", "*width*", "*_dim", "*.min_digits", "*.max_digits", "*.grid",
                "*.context_length", "*_per_image", "*_per_stage", "*.top_k", "*.proposal_pool")
POSITIVE = ("*.lr", "*temperature")
FRACTION = ("*_iou", "*_frac", "*fractions", "*threshold", "*.label_flip", "*alpha", "*.proposal_nms", "*target_ap*")


MAX_SEED = 2**32 - 1  # numpy's seed range


def seed(text: str) -> int:
    """argparse ``type=`` of a seed: an integer in numpy's seed range."""
    try:
        value = int(text)
    except ValueError:
        raise UserInputError(f"seed {text!r} is not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise UserInputError(f"seed {value} is out of range: seeds are integers from 0 to {MAX_SEED}")
    return value


def check_seeds(seeds: list[int] | None, flag: str = "--seeds") -> None:
    if seeds is None:
        return
    if not seeds:
        raise UserInputError(f"{flag} lists no seed")
    for value in seeds:
        seed(str(value))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UserInputError(f"{flag} lists seed {', '.join(map(str, repeated))} more than once")


def population_chunks(seeds: list[int], size: int) -> list[list[int]]:
    """Which seeds of a method train together under ``--population size``: the seed list cut into consecutive
    chunks, a function of the options alone (never of free memory or of what finished before)."""
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def nested(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"section.key": value}`` → ``{section: {key: value}}``."""
    out: dict[str, dict[str, Any]] = {}
    for knob, value in values.items():
        section, key = knob.split(".", 1)
        out.setdefault(section, {})[key] = value
    return out


def with_values(cfg: dict[str, dict[str, Any]], values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A copy of ``cfg`` with each ``section.key`` of ``values`` set (a population member's settings)."""
    out = {section: dict(fields) for section, fields in cfg.items()}
    for knob, value in values.items():
        section, key = knob.split(".", 1)
        out[section][key] = value
    return out


def choices(sections: dict[str, type]) -> dict[str, dict[str, list]]:
    """The fields typed ``Literal[...]``: section → key → the values they allow (for checks made without the
    dataclasses, e.g. before torch is imported)."""
    found: dict[str, dict[str, list]] = {}
    for name, cls in sections.items():
        for key, hint in typing.get_type_hints(cls).items():
            if typing.get_origin(hint) is typing.Literal:
                found.setdefault(name, {})[key] = list(typing.get_args(hint))
    return found


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


def _coerce(value: Any, default: Any, where: str) -> Any:
    """A value read from a config file, as the type of its default (YAML reads ``1e-4`` as a string)."""
    if isinstance(value, str) and not isinstance(default, str):
        return _parse(value, default, where)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, list) and isinstance(value, list):
        element = default[0] if default else ""
        return [_coerce(v, element, where) for v in value]
    return value


def read_config_file(path: Path) -> dict[str, dict[str, Any]]:
    """``{section: {key: value}}`` from a YAML or JSON file: a ``--print-config`` output, ``run.json``'s ``config``
    section, or ``run.json`` itself."""
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise UserInputError(f"config file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise UserInputError(f"config file {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if isinstance(values, dict) and isinstance(values.get("config"), dict) and "config_hash" in values:
        values = values["config"]  # a whole run.json
    if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
        raise UserInputError(f"config file {path}: expected a mapping of sections to {{key: value}} mappings")
    return values


def apply_file(cfg: dict[str, dict[str, Any]], values: dict[str, dict[str, Any]], source: str) -> None:
    """Set every ``section.key`` the file names; unknown ones are user errors listing the choices."""
    for section, entries in values.items():
        if section not in cfg:
            raise UserInputError(f"{source}: unknown config section {section!r}; choose from: {', '.join(cfg)}")
        for key, value in entries.items():
            if key not in cfg[section]:
                raise UserInputError(f"{source}: unknown config key '{section}.{key}'; choose from: "
                                     + ", ".join(f"{section}.{k}" for k in cfg[section]))
            cfg[section][key] = _coerce(value, cfg[section][key], f"{source}: {section}.{key}")


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


def apply_profile(cfg: dict[str, dict[str, Any]], profile: dict[str, Any]) -> None:
    """A profile's ``{"section.key": value}`` in place over the defaults."""
    for path, value in profile.items():
        section, key = path.split(".", 1)
        if key not in cfg.get(section, {}):
            raise ValueError(f"profile sets unknown key {path!r}")  # a bug in a suite module, not user input
        cfg[section][key] = json.loads(json.dumps(value))


def resolve(sections: dict[str, type], profile: dict[str, Any], assignments: list[str],
            file_values: dict[str, dict[str, Any]] | None = None, source: str = "--config",
            tuned: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Defaults → profile → config file → a method's ``tuned`` values (``section.key`` → value) → ``assignments``
    (``--set``, which win), validated."""
    cfg = defaults(sections)
    apply_profile(cfg, profile)
    if file_values:
        apply_file(cfg, file_values, source)
    if tuned:
        apply_file(cfg, nested(tuned), "--params")
    for assignment in assignments:
        apply_override(cfg, assignment)
    validate(cfg, sections)
    return cfg


@functools.cache
def _adapter(cls: type):
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _range_problem(path: str, value: Any, default: Any) -> str | None:
    """Why ``value`` is out of range for ``path`` (None: in range)."""
    if isinstance(value, list):
        element = default[0] if isinstance(default, list) and default else None
        return next((p for v in value if (p := _range_problem(path, v, element)) is not None), None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None

    def matches(patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)

    if not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, int) and matches(AT_LEAST_ONE) and value < 1:
        return "must be at least 1"
    if matches(POSITIVE) and value <= 0:
        return "must be positive"
    if matches(FRACTION) and not 0 <= value <= 1:
        return "must lie in [0, 1]"
    negative_default = isinstance(default, int | float) and not isinstance(default, bool) and default < 0
    if value < 0 and not negative_default:
        return "must not be negative"
    return None


def _world_problem(world: dict[str, Any]) -> str | None:
    """Cross-field checks of a digits-world section (a digit must fit on the canvas)."""
    low, high = world["digit_size"]
    if not low <= high <= world["canvas_size"]:
        return f"world.digit_size must be [min, max] with min <= max <= world.canvas_size, got {world['digit_size']}"
    if world["min_digits"] > world["max_digits"]:
        return "world.min_digits must not exceed world.max_digits"
    if not math.isclose(sum(world["pool_fractions"]), 1.0, abs_tol=1e-6):
        return f"world.pool_fractions must sum to 1, got {world['pool_fractions']}"
    return None


def validate(cfg: dict[str, dict[str, Any]], sections: dict[str, type]) -> None:
    """Type and shape through pydantic (the dataclass annotations), then ranges; the first problem is one line."""
    from pydantic import ValidationError

    for name, cls in sections.items():
        values = cfg[name]
        try:
            _adapter(cls).validate_python(values)
        except ValidationError as err:
            first = err.errors()[0]
            key = str(first["loc"][0])
            hint = _type_name(typing.get_type_hints(cls)[key])
            raise UserInputError(f"{name}.{key} must be {hint}, got {values[key]!r} ({first['msg'][0].lower()}"
                                 f"{first['msg'][1:]})") from None
        defaults_ = dataclasses.asdict(cls())
        for key, value in values.items():
            default = json.loads(json.dumps(defaults_[key]))
            if (problem := _range_problem(f"{name}.{key}", value, default)) is not None:
                raise UserInputError(f"{name}.{key} {problem}, got {value!r}")
        world_keys = {"digit_size", "canvas_size", "min_digits", "max_digits", "pool_fractions"}
        if name == "world" and world_keys <= set(values) and (problem := _world_problem(values)) is not None:
            raise UserInputError(problem)


def config_hash(cfg: dict) -> str:
    """The 12-digit name of a resolved config (with whatever else shapes its results), in run.json and cell keys."""
    return json_digest(cfg, 12)


def section_config(cfg: dict[str, dict[str, Any]], section: str, cls: type):
    """The dataclass instance of one section (JSON lists back to the tuples the dataclass declares)."""
    hints = typing.get_type_hints(cls)
    values = {k: tuple(v) if isinstance(v, list) and typing.get_origin(hints[k]) is tuple else v
              for k, v in cfg[section].items()}
    return cls(**values)
