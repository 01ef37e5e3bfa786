"""What a suite run writes into ``DIR/<suite>/``, always atomically (temp file + rename).

- ``metrics.csv``: long format ``suite,method,seed,epoch,split,metric,value`` (epoch empty for final metrics);
- ``timings.csv``: the same columns for wall-clock measurements (kept apart: they differ between identical runs);
- ``tables/<name>.csv``: per-cell data behind a figure (e.g. the score-vs-IoU scatter);
- ``run.json``: resolved config, its hash, seeds, git commit and dirty flag, versions, device, threads;
- ``summary.md`` and ``figures/`` (``benchmark.report``).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
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


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g", lineterminator="\n"))


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


def write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
