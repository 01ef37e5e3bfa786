"""The tuned values ``benchmark tune`` writes to ``best.json``, read back: per method, the typed ``section.key`` →
value that ``run --params`` applies over its config. They travel typed; only run.json and plan.json store them as
``section.key=value`` strings (``stored`` and ``from_stored``: the form the config hashes were made from). Both
``tune`` (which writes the file) and the runner (which reads it) import this module, so neither imports the other."""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmark.paths import REPO_ROOT, source_digest
from benchmark.reproducibility import git_state
from cvpdl.errors import UserInputError

# The code a study's numbers depend on (the library and the suites' cells): values tuned on other code are refused
# unless the user asks for them (``run --allow-stale``).
TRAINING_CODE = (REPO_ROOT / "cvpdl", REPO_ROOT / "benchmark" / "suites")
# Code changes that a check found result-identical (``scripts/check_equivalence.py``: every method of every suite
# trained from scratch at both commits, metrics.csv byte for byte): a study tuned on either code is not stale.
EQUIVALENCE_FILE = REPO_ROOT / "results" / "code_equivalence.json"
# Trials run on seeds no final run uses (development 0-4, staged 100-142, confirmation from 200), so tuning never
# sees a cell it is judged on; two seeds per trial, because one seed's noise (kd top-1: sd ~0.01) is as large as the
# differences tuned for.
TUNING_SEEDS = (1000, 1001)
# `run --params tuned`: the suite's own study; its default run then lives in DIR/tuned/<suite>/ (the tuned regime)
TUNED = "tuned"


# per method, its tuned ``section.key`` → value
TunedValues = dict[str, dict[str, Any]]


def assignment(key: str, value) -> str:
    return f"{key}={json.dumps(value) if isinstance(value, bool) else value}"


def stored(tuned: TunedValues) -> dict[str, list[str]]:
    """The storage form of tuned values (run.json and plan.json ``params``, hashed into the config hash): per method,
    its sorted ``section.key=value`` strings."""
    return {name: [assignment(key, value) for key, value in sorted(values.items())] for name, values in tuned.items()}


def from_stored(params: dict[str, list[str]]) -> TunedValues:
    """``stored``'s strings read back as values (JSON where they parse as JSON: numbers, booleans; else the text,
    which the config reads as its field's type); ``stored(from_stored(p)) == p`` for every stored form."""
    def value(raw: str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    return {name: dict((key, value(raw)) for key, raw in (text.split("=", 1) for text in texts))
            for name, texts in params.items()}


def study_profile(path: Path) -> str | None:
    """The profile a best.json was tuned on (None when there is no readable file)."""
    try:
        return json.loads(Path(path).read_text()).get("profile")
    except (OSError, ValueError, AttributeError):
        return None


def training_code_digest() -> str:
    return source_digest(*TRAINING_CODE)


def equivalent_digests(digest: str, path: Path | None = None) -> set[str]:
    """``digest`` and every training code recorded as result-identical to it, directly or through a chain."""
    try:
        records = json.loads(Path(path or EQUIVALENCE_FILE).read_text())["records"]
    except (OSError, ValueError, KeyError, TypeError):
        records = []
    same, grown = {digest}, True
    while grown:
        linked = {r["same_as"] for r in records if r["digest"] in same} | {r["digest"] for r in records
                                                                        if r["same_as"] in same}
        grown = not linked <= same
        same |= linked
    return same


def study_provenance(seeds: list[int], threads: int, seconds: float) -> dict:
    """What a best.json records of the study that wrote it: code, seeds, threads, host, time."""
    commit, dirty = git_state()
    return {"commit": commit, "dirty": dirty, "code_digest": training_code_digest(), "seeds": list(seeds),
            "threads": threads, "host": platform.node(), "study_seconds": round(seconds, 1),
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def tuning_seeds(payload: dict) -> list[int]:
    """The seeds a best.json's study trained on (studies before several seeds per trial record one ``seed``)."""
    provenance = payload.get("provenance") or {}
    return [int(s) for s in provenance.get("seeds", [provenance["seed"]] if "seed" in provenance else [])]


def staleness(payload: dict) -> str | None:
    """Why a best.json's values do not belong to the code that would run them; None when they do."""
    provenance = payload.get("provenance")
    if not provenance:
        return "it records no provenance (the study predates the code's record of it)"
    if provenance.get("code_digest") not in equivalent_digests(training_code_digest()):
        return f"it was tuned on other training code (commit {str(provenance.get('commit'))[:12]})"
    return None


def load_params(path: Path, suite: str, allow_stale: bool = False, seeds: tuple[int, ...] = ()) -> TunedValues:
    """``best.json`` → per method, the tuned values ``run --params`` applies to that method.
    Refused: values tuned on other code (unless ``allow_stale``) or on one of the run's own ``seeds``."""
    try:
        payload = json.loads(Path(path).read_text())
        methods = payload["methods"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserInputError(f"--params {path}: not a best.json written by `benchmark tune` ({err})") from None
    if payload.get("suite") != suite:
        raise UserInputError(f"--params {path} was tuned for suite {payload.get('suite')!r}, not {suite!r}")
    why = staleness(payload)
    if why and not allow_stale:
        raise UserInputError(f"--params {path}: {why}; rerun `benchmark tune`, run with `--params none`, or pass "
                             "--allow-stale to use its values anyway")
    shared = sorted(set(tuning_seeds(payload)) & set(seeds))
    if shared:
        raise UserInputError(f"--params {path} was tuned on seed {shared[0]}, which this run evaluates too: "
                             "run other --seeds, or tune on other --seeds")
    return {name: dict(sorted(entry["params"].items())) for name, entry in methods.items()}
