"""The finished-cell store. A cell is one (method, seed) run of a suite.

A finished cell lives in ``DIR/<suite>/cells/<key>/<method>_seed<seed>/`` (``metrics.csv``, ``timings.csv``,
``tables/``, the trained models under ``models/``, then ``DONE``), the key a hash of what shapes its numbers: the
resolved config, the data options, the code and, under torchrun, the world size. Later invocations of the same
code reuse it; while it trains, its loops checkpoint every epoch into ``checkpoints/`` there, from which
``--resume`` continues.

Invocations of the same config and code share the suite folder: under its lock, each merges its cells into the
suite's existing files (other seeds or methods are kept), so concurrent runs lose nothing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.context import CellResult
from benchmark.config import config_hash
from benchmark.registry import REGISTRY, MethodSpec
from benchmark.results import (COLUMNS, atomic_path, atomic_write_csv, locked, read_metrics, read_tables,
                               records_frame, write_json)


@dataclass
class FinishedCell:
    """What a cell leaves: its metrics and timings in the long format, and the tables behind figures, each row
    carrying its method and seed."""

    metrics: pd.DataFrame
    timings: pd.DataFrame
    tables: dict[str, pd.DataFrame]

    @classmethod
    def from_result(cls, suite: str, method: str, seed: int, result: CellResult) -> FinishedCell:
        meta = {"suite": suite, "method": method, "seed": seed}
        return cls(records_frame([{**meta, **r} for r in result.records]),
                   records_frame([{**meta, **r} for r in result.timings]),
                   {name: table.assign(method=method, seed=seed) for name, table in result.tables.items()})

    def records(self) -> list[dict]:
        """Metric and timing rows, as the tracker logs them."""
        return self.metrics.to_dict("records") + self.timings.to_dict("records")


def cell_keys(methods: list[MethodSpec], cfg_hash: str, method_cfgs: dict[str, dict], data_options: dict,
              commit: str, world: int, population: dict[str, int] | None = None) -> dict[str, str]:
    """Per method, the key of its cell folders: new code (or a DDP run, whose batches differ, or a population, whose
    numbers differ in the last digits) → new cells. A tuned method's cells are keyed by its own config, so every run
    with the same tuned values shares them."""
    shaping = {"commit": commit, **({"world_size": world} if world > 1 else {})}
    own = {name: config_hash({"cfg": cfg, **data_options}) for name, cfg in method_cfgs.items()}
    size = population or {}
    return {m.name: config_hash({**shaping, **({"population": size[m.name]} if size.get(m.name, 1) > 1 else {}),
                                 "config_hash": own.get(m.name, cfg_hash)}) for m in methods}


class CellStore:
    """The cell folders of one suite folder, under the keys of one invocation."""

    def __init__(self, suite_dir: Path, keys: dict[str, str]):
        self.suite_dir = suite_dir
        self.keys = keys

    def folder(self, method: str, seed: int) -> Path:
        return self.suite_dir / "cells" / self.keys[method] / f"{method}_seed{seed}"

    def lock(self, method: str, seed: int):
        """Held while a cell is reused or trained: concurrent invocations train a cell once."""
        folder = self.folder(method, seed)
        return locked(folder.parent / f"{folder.name}.lock")

    def is_finished(self, method: str, seed: int) -> bool:
        return (self.folder(method, seed) / "DONE").is_file()

    def load(self, method: str, seed: int) -> FinishedCell:
        folder = self.folder(method, seed)
        return FinishedCell(read_metrics(folder / "metrics.csv"), read_metrics(folder / "timings.csv"),
                            read_tables(folder / "tables"))

    def remember_run(self, method: str, seed: int, tracking_uri: str, run_id: str) -> None:
        """The MLflow run that logged this cell, so later invocations reference it instead of logging it again."""
        write_json(self.folder(method, seed) / "tracking.json", {"tracking_uri": tracking_uri, "run_id": run_id})

    def remembered_run(self, method: str, seed: int, tracking_uri: str | None) -> str | None:
        path = self.folder(method, seed) / "tracking.json"
        if tracking_uri is None or not path.is_file():
            return None
        remembered = json.loads(path.read_text())
        return remembered["run_id"] if remembered.get("tracking_uri") == tracking_uri else None

    def save(self, method: str, seed: int, cell: FinishedCell, models: dict[str, torch.nn.Module],
             cfg: dict) -> None:
        """The cell's files, and its trained models as ``models/<name>.pt``: ``{"state_dict", "config", "method",
        "seed"}``, so a model can be rebuilt from the config the cell ran with and reloaded."""
        folder = self.folder(method, seed)
        for name, model in models.items():
            with atomic_path(folder / "models" / f"{name}.pt") as tmp:
                torch.save({"state_dict": model.state_dict(), "config": cfg, "method": method, "seed": seed}, tmp)
        atomic_write_csv(folder / "metrics.csv", cell.metrics)
        atomic_write_csv(folder / "timings.csv", cell.timings)
        for name, table in cell.tables.items():
            atomic_write_csv(folder / "tables" / f"{name}.csv", table)
        (folder / "DONE").touch()  # last: marks the cell finished


def stack(cells: list[FinishedCell]) -> dict[str, pd.DataFrame]:
    """The cells' rows as one table per file: ``metrics``, ``timings`` and each figure table by name."""
    tables: dict[str, list[pd.DataFrame]] = {}
    for cell in cells:
        for name, table in cell.tables.items():
            tables.setdefault(name, []).append(table)
    return {"metrics": pd.concat([c.metrics for c in cells], ignore_index=True)[COLUMNS],
            "timings": pd.concat([c.timings for c in cells], ignore_index=True)[COLUMNS],
            **{name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}}


def _in_cell_order(frame: pd.DataFrame, suite: str) -> pd.DataFrame:
    """Rows in registry method order, then seed; a cell's own rows keep their order."""
    rank = {name: i for i, name in enumerate(REGISTRY.method_names(suite))}
    keys = frame["method"].map(rank).astype(int) * 1_000_000 + frame["seed"].astype(int)
    return frame.iloc[np.argsort(keys.to_numpy(), kind="stable")].reset_index(drop=True)


def _merge_previous(suite_dir: Path, run_info: dict, parts: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Fold in the cells of the results already in ``suite_dir`` when they come from the same config and code
    (another invocation with other seeds or methods, possibly running at the same time); otherwise replace them.
    ``run_info``'s methods and seeds become those of the merged results."""
    previous = suite_dir / "run.json"
    if not previous.is_file():
        return parts
    old = json.loads(previous.read_text())
    if any(old.get(k, 1) != run_info[k] for k in ("config_hash", "git_commit", "profile", "world_size",
                                                 "hardware_signature")):  # cells from another machine: replace
        return parts
    merged = {}
    for name, frame in parts.items():
        path = suite_dir / (f"{name}.csv" if name in ("metrics", "timings") else f"tables/{name}.csv")
        if not path.is_file():
            merged[name] = frame
            continue
        earlier = pd.read_csv(path) if name not in ("metrics", "timings") else read_metrics(path)
        ours = set(zip(frame["method"], frame["seed"]))
        keep = [(m, s) not in ours for m, s in zip(earlier["method"], earlier["seed"])]
        merged[name] = pd.concat([earlier[keep], frame], ignore_index=True)
    run_info["methods"] = REGISTRY.method_names(run_info["suite"], merged["metrics"]["method"])
    run_info["seeds"] = sorted({int(s) for s in merged["metrics"]["seed"]})
    # command, date and wall time are this invocation's: the ones that made the merged-in cells are kept beside them
    env = old.get("environment", {})
    run_info["earlier_invocations"] = [*old.get("earlier_invocations", []), {
        "command": env.get("command"), "date": env.get("date"), "seeds": old.get("seeds"),
        "methods": old.get("methods"), "wall_seconds": old.get("wall_seconds")}]
    return merged


def write_suite_files(suite_dir: Path, run_info: dict, cells: list[FinishedCell]) -> pd.DataFrame:
    """Merge ``cells`` with the suite's earlier results, write ``metrics.csv``, ``timings.csv``, ``tables/`` and
    ``run.json``; return the merged metrics. Call under the suite folder's lock."""
    merged = _merge_previous(suite_dir, run_info, stack(cells))
    parts = {name: _in_cell_order(frame, run_info["suite"]) for name, frame in merged.items()}
    for name, frame in parts.items():
        folder = suite_dir if name in ("metrics", "timings") else suite_dir / "tables"
        atomic_write_csv(folder / f"{name}.csv", frame)
    write_json(suite_dir / "run.json", run_info)
    return read_metrics(suite_dir / "metrics.csv")  # as written: a later run reusing these cells reads the same
