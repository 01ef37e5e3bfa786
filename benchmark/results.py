"""What a suite run writes into ``DIR/<suite>/``, always atomically (temp file + rename).

- ``metrics.csv``: long format ``suite,method,seed,epoch,split,metric,value`` (epoch empty for final metrics);
- ``timings.csv``: the same columns for wall-clock measurements (kept apart: they differ between identical runs);
- ``tables/<name>.csv``: per-cell data behind a figure (e.g. the score-vs-IoU scatter);
- ``run.json``: resolved config, its hash, seeds, git commit and dirty flag, versions, device, threads;
- ``summary.md`` (``benchmark.summary``) and ``figures/`` (``benchmark.report``).

``atomic_path`` and ``locked`` are how every writer of the harness (results, cached weights, the MLflow store)
replaces a file and shares it with concurrent invocations.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from filelock import FileLock

from cvpdl.errors import UserInputError

COLUMNS = ["suite", "method", "seed", "epoch", "split", "metric", "value"]


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive file lock (``filelock``: flock on POSIX, msvcrt on Windows), held while concurrent invocations
    touch the same files; a fresh lock object each time, so nesting on one path blocks like two processes would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path, thread_local=False, is_singleton=False, preserve_lock_file=True):
        yield


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary name beside ``path`` to write to: renamed onto ``path`` when the block ends, removed when it
    raises, so readers (and concurrent writers of the same file) see the old file or the whole new one. Names left
    by a killed process match ``.<name>.*<suffix>``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    # 10 significant digits: float32 values round-trip, parameter counts stay exact
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.10g", lineterminator="\n"))


def records_frame(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(records, columns=COLUMNS)
    frame["epoch"] = frame["epoch"].astype("Int64")
    return frame


def read_metrics(path: Path) -> pd.DataFrame:
    """Load and validate a ``metrics.csv`` (or ``timings.csv``); problems are one-line user errors."""
    if not path.is_file():
        raise UserInputError(f"no results at {path}: run `python -m benchmark run --suite <suite>` first")
    try:
        frame = pd.read_csv(path, dtype={"suite": str, "method": str, "split": str, "metric": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    if list(frame.columns) != COLUMNS:
        raise UserInputError(f"{path}: columns must be {','.join(COLUMNS)}, found {','.join(map(str, frame.columns))}")
    for column in ("seed", "value"):
        if len(frame) and not pd.api.types.is_numeric_dtype(frame[column]):
            raise UserInputError(f"{path}: column {column!r} has non-numeric entries")
    frame["epoch"] = pd.to_numeric(frame["epoch"], errors="raise").astype("Int64")
    return frame


def read_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """``<folder>/<name>.csv`` → name → table: the per-cell data behind figures."""
    return {p.stem: pd.read_csv(p) for p in sorted(folder.glob("*.csv"))}


def write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
