"""The seeded runner: the only place that seeds, picks the device, opens MLflow runs and writes result files.

Each (method, seed) is a cell. A finished cell is stored under ``DIR/<suite>/cells/<key>/<method>_seed<seed>/``
(key: hash of the resolved config, data options and git commit) and reused by later invocations of the same code
unless ``force`` is set. While a cell trains, its loops checkpoint every epoch into that folder; ``resume``
continues an interrupted cell from there, to the same numbers as an uninterrupted run.

A cell whose loss diverges ends FAILED and the others go on; the suite's files are then left as they were.
Invocations of the same config and code share the suite folder: under a lock, each merges its cells into the
existing ``metrics.csv`` (other seeds or methods are kept), so concurrent runs lose nothing.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmark import config as config_lib
from benchmark import distributed, reproducibility
from benchmark.claims import CellResult, RunContext
from benchmark.paths import REPO_ROOT, default_cache_dir
from benchmark.registry import REGISTRY, MethodSpec, SuiteSpec
from benchmark.report import headline_table, render_suite
from benchmark.results import COLUMNS, atomic_write_csv, locked, read_metrics, records_frame, write_json
from cvpdl.errors import NonFiniteLossError, UserInputError

PACKAGES = ("torch", "torchvision", "open_clip_torch", "pycocotools", "mlflow", "numpy", "scipy", "pandas", "mlxtend")
log = logging.getLogger("benchmark")  # progress lines; -q hides them, the CLI prints them between progress bars


class CellsFailedError(RuntimeError):
    """Some cells diverged or failed; the others finished and are kept. The CLI exits with its own code (3)."""


@dataclass
class RunOptions:
    suite: str
    methods: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    profile: str = "default"
    overrides: list[str] = field(default_factory=list)
    results_dir: Path = Path("results")
    device: str = "auto"
    data: str = "digits"
    data_root: Path | None = None
    clip: str | None = None
    clip_weights: Path | None = None
    cache_dir: Path | None = None
    threads: int | None = None
    force: bool = False
    resume: bool = False  # continue interrupted cells from their last per-epoch checkpoint
    config_file: Path | None = None  # YAML/JSON {section: {key: value}} over the profile; overrides still win
    # best.json of `benchmark tune`: each method's tuned values (--set still wins). None: the suite's own study,
    # DIR/<suite>/tuning/best.json, when it exists and was tuned on this profile (digits data); "none": the defaults
    params: Path | None = None
    method_overrides: dict[str, list[str]] | None = None  # the same as a dict (a run.json's "params"), without a file

    def data_options(self) -> dict:
        """The data and CLIP choices that shape results beside the config: hashed with it, written to run.json."""
        return {"data": self.data, "data_root": str(self.data_root) if self.data_root else None,
                "clip": self.clip, "clip_weights": str(self.clip_weights) if self.clip_weights else None}


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda: no CUDA device is visible to torch")
    if name not in ("cpu", "cuda"):
        raise UserInputError(f"unknown device {name!r}; choose from: auto, cpu, cuda")
    return torch.device(name)


def git_state() -> tuple[str, bool]:
    """Commit of the code and whether tracked code (not ``results/``) differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        return commit, bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def resolve(options: RunOptions) -> tuple[SuiteSpec, list[MethodSpec], dict]:
    """Validate every user choice before anything is written."""
    spec = REGISTRY.suite(options.suite)
    if spec.status != "ready":
        raise UserInputError(f"suite {spec.name!r} cannot run yet: {spec.status}")
    if options.data not in ("digits", "coco", "imagefolder"):
        raise UserInputError(f"unknown --data {options.data!r}; choose from: digits, coco, imagefolder")
    if options.data not in spec.datasets:
        raise UserInputError(f"suite {spec.name!r} cannot use --data {options.data}; it supports: "
                             f"{', '.join(spec.datasets)}")
    if options.profile not in spec.profiles:
        raise UserInputError(f"unknown profile {options.profile!r}; choose from: {', '.join(spec.profiles)}")
    names = options.methods or [m.name for m in REGISTRY.methods(spec.name)]
    methods = [REGISTRY.method(spec.name, name) for name in names]
    if len(set(names)) != len(names):
        raise UserInputError(f"--methods lists a method twice: {' '.join(names)}")
    if not options.seeds or len(set(options.seeds)) != len(options.seeds):
        raise UserInputError("--seeds must list distinct integers")
    sections = dict(spec.config)
    for method in REGISTRY.methods(spec.name):
        sections.update(method.config)
    file_values = config_lib.read_config_file(options.config_file) if options.config_file else None
    cfg = config_lib.resolve(sections, spec.profiles[options.profile], options.overrides, file_values)
    for method in methods:
        method.build(cfg)  # builders validate their config values: fail now, before anything is trained or written
    if options.data != "digits" and (options.data_root is None or not Path(options.data_root).is_dir()):
        raise UserInputError(f"--data {options.data} needs --data-root pointing at an existing folder "
                             f"(got {options.data_root})")
    if (options.clip is None) != (options.clip_weights is None):
        raise UserInputError("--clip and --clip-weights go together: an open_clip architecture and its local file")
    if options.clip_weights is not None and not Path(options.clip_weights).is_file():
        raise UserInputError(f"CLIP checkpoint not found: {options.clip_weights}")
    return spec, methods, cfg


def tuned_configs(options: RunOptions, methods: list[MethodSpec]) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """``--params best.json``: per method, its tuned ``section.key=value`` list and the config it runs with (the
    tuned values over the profile and config file; ``--set`` still wins). Methods absent from the file run as is."""
    from benchmark.tune import load_params, study_profile

    path = options.params
    if path is None:
        own = Path(options.results_dir) / options.suite / "tuning" / "best.json"
        path = own if options.data == "digits" and study_profile(own) == options.profile else None
    elif str(path) == "none":
        path = None
    if path is None and not options.method_overrides:
        return {}, {}
    tuned = load_params(path, options.suite) if path else options.method_overrides
    params = {m.name: tuned[m.name] for m in methods if tuned.get(m.name)}
    method_cfgs = {name: resolve(replace(options, overrides=[*values, *options.overrides]))[2]
                   for name, values in params.items()}
    return params, method_cfgs


def _cell_dir(suite_dir: Path, key: str, method: str, seed: int) -> Path:
    return suite_dir / "cells" / key / f"{method}_seed{seed}"


def _store_cell(path: Path, frame: pd.DataFrame, timings: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> None:
    atomic_write_csv(path / "metrics.csv", frame)
    atomic_write_csv(path / "timings.csv", timings)
    for name, table in tables.items():
        atomic_write_csv(path / "tables" / f"{name}.csv", table)
    (path / "DONE").touch()  # last: marks the cell complete


def _load_cell(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    tables = {p.stem: pd.read_csv(p) for p in sorted((path / "tables").glob("*.csv"))}
    return read_metrics(path / "metrics.csv"), read_metrics(path / "timings.csv"), tables


def _check_writable(results_dir: Path) -> None:
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserInputError(f"results dir {results_dir} is not writable ({err.strerror or err})") from None


def _cell_order(frame: pd.DataFrame, spec: SuiteSpec) -> pd.DataFrame:
    """Rows in registry method order, then seed; a cell's own rows keep their order."""
    rank = {m.name: i for i, m in enumerate(REGISTRY.methods(spec.name))}
    keys = frame["method"].map(rank).astype(int) * 1_000_000 + frame["seed"].astype(int)
    return frame.iloc[np.argsort(keys.to_numpy(), kind="stable")].reset_index(drop=True)


def _merge_previous(suite_dir: Path, run_info: dict, parts: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Fold in the cells of the results already in ``suite_dir`` when they come from the same config and code
    (another invocation with other seeds or methods, possibly running at the same time); otherwise replace them."""
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
    run_info["methods"] = [m.name for m in REGISTRY.methods(run_info["suite"])
                           if m.name in set(merged["metrics"]["method"])]
    run_info["seeds"] = sorted({int(s) for s in merged["metrics"]["seed"]})
    return merged


def run_suite(options: RunOptions) -> pd.DataFrame:
    spec, methods, cfg = resolve(options)
    params, method_cfgs = tuned_configs(options, methods)
    device = pick_device(options.device)
    rank, world, device = distributed.setup(device)
    threads = options.threads or max(1, (os.cpu_count() or 1) // world)  # torchrun ranks share the cores
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = False
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # CUDA RoIAlign backward has no deterministic kernel: warn there instead of failing
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")

    data_options = options.data_options()
    cfg_hash = config_lib.config_hash({"cfg": cfg, **data_options, **({"params": params} if params else {})})
    commit, dirty = git_state()
    key = {"config_hash": cfg_hash, "commit": commit, **({"world_size": world} if world > 1 else {})}
    cell_key = config_lib.config_hash(key)  # new code (or a DDP run, whose batches differ) → new cells
    # a tuned method's cells are keyed by its own config, so they are shared by every run with the same values
    cell_keys = {m: config_lib.config_hash({**key, "config_hash": config_lib.config_hash({"cfg": c, **data_options})})
                 for m, c in method_cfgs.items()}
    results_dir = Path(options.results_dir)
    _check_writable(results_dir)
    suite_dir = results_dir / spec.name
    cache_dir = Path(options.cache_dir or default_cache_dir())
    run_info = {"suite": spec.name, "profile": options.profile, "methods": [m.name for m in methods],
                "seeds": options.seeds, "config": cfg, "config_hash": cfg_hash, "params": params, **data_options,
                "git_commit": commit, "git_dirty": dirty, "versions": versions(), "device": str(device),
                "threads": threads, "world_size": world,
                # date, command, CPU/ISA, OS, torch build, evaluator, data hashes; the signature decides whether
                # `verify` expects identical numbers or numbers within tolerances
                **reproducibility.record(threads, options.data, options.data_root, options.clip_weights)}
    tags = {"config_hash": cfg_hash, "git_commit": commit, "git_dirty": str(dirty), "device": str(device),
            "torch": torch.__version__, "threads": str(threads), "profile": options.profile,
            "host": socket.gethostname(), "pid": str(os.getpid())}  # host + pid: stale RUNNING runs are found

    from benchmark.tracking import NoTracking, Tracker

    tracker = Tracker(results_dir, spec.name) if rank == 0 else NoTracking()
    if tracker.killed_stale_runs:
        log.info(f"marked {len(tracker.killed_stale_runs)} MLflow run(s) KILLED that a killed invocation had left "
                   "RUNNING")
    context = RunContext(spec.name, cfg, device, cache_dir, options.data, options.data_root, options.clip,
                         options.clip_weights)
    started = time.time()
    frames, timing_frames, tables, failures = [], [], {}, []
    with tracker.run(f"{spec.name}-{options.profile}", cfg, {**tags, "role": "invocation"}):
        shared, prepared = None, False
        cells = [(m, s) for m in methods for s in options.seeds]
        for method, seed in tqdm(cells, desc=f"{spec.name} cells", unit="cell"):
            method_cfg = method_cfgs.get(method.name, cfg)
            path = _cell_dir(suite_dir, cell_keys.get(method.name, cell_key), method.name, seed)
            try:
                with tracker.run(f"{method.name}-seed{seed}", {**method_cfg, "method": method.name, "seed": seed},
                                 {**tags, "role": "cell", "method": method.name, "seed": str(seed),
                                  # declared differences from the paper's official code travel with the run
                                  **{f"deviation.{i}": d.line()[:5000] for i, d in enumerate(method.deviations)},
                                  **({"tuned_params": " ".join(params[method.name])} if method.name in params
                                     else {})},
                                 nested=True) as run_id:
                    # one invocation trains a cell at a time; another one waiting here then finds it DONE
                    with locked(path.parent / f"{path.name}.lock") if world == 1 else contextlib.nullcontext():
                        if distributed.agree((path / "DONE").is_file() and not options.force):
                            frame, timing, cell_tables = _load_cell(path)
                            log.info(f"[{method.name} seed {seed}] finished before: reusing {path}")
                        else:
                            if not prepared:
                                prepare_started = time.time()
                                shared, prepared = spec.prepare(context), True
                                run_info["prepare_seconds"] = round(time.time() - prepare_started, 1)
                                for artifact in getattr(shared, "artifacts", ()):  # e.g. the trained CLIP weights
                                    tracker.log_artifact(run_id, artifact, "cached")
                            checkpoints = path / "checkpoints"
                            if not options.resume and rank == 0:  # a fresh start; --resume continues from them
                                shutil.rmtree(checkpoints, ignore_errors=True)
                            distributed.barrier()
                            generator = seed_everything(seed)
                            cell_context = replace(context, cfg=method_cfg, checkpoints=checkpoints)
                            result: CellResult = spec.run_cell(cell_context, shared, method, seed, generator)
                            meta = {"suite": spec.name, "method": method.name, "seed": seed}
                            frame = records_frame([{**meta, **r} for r in result.records])
                            timing = records_frame([{**meta, **r} for r in result.timings])
                            cell_tables = {name: t.assign(method=method.name, seed=seed)
                                           for name, t in result.tables.items()}
                            if rank == 0:
                                _store_cell(path, frame, timing, cell_tables)
                                shutil.rmtree(checkpoints, ignore_errors=True)
                    tracker.log_records(run_id, frame.to_dict("records") + timing.to_dict("records"))
                    tracker.log_artifacts(run_id, path)
            except NonFiniteLossError as err:  # this cell diverged: it ends FAILED, the others go on
                failures.append(f"{method.name} seed {seed}: {err}")
                log.warning(f"[{method.name} seed {seed}] FAILED: {err}")
                continue
            frames.append(frame)
            timing_frames.append(timing)
            for name, table in cell_tables.items():
                tables.setdefault(name, []).append(table)
        if failures:
            raise CellsFailedError(f"{len(failures)} of {len(cells)} cells failed ({'; '.join(failures)}); the "
                                 f"finished ones are kept under {suite_dir / 'cells'} and {suite_dir} is unchanged")

        if rank != 0:  # under torchrun only rank 0 writes
            distributed.barrier()
            distributed.close()
            return pd.concat(frames, ignore_index=True)[COLUMNS]
        parts = {"metrics": pd.concat(frames, ignore_index=True)[COLUMNS],
                 "timings": pd.concat(timing_frames, ignore_index=True)[COLUMNS],
                 **{name: pd.concat(p, ignore_index=True) for name, p in tables.items()}}
        run_info["wall_seconds"] = round(time.time() - started, 1)
        with locked(suite_dir / ".lock"):
            parts = {name: _cell_order(frame, spec) for name, frame in _merge_previous(suite_dir, run_info,
                                                                                        parts).items()}
            atomic_write_csv(suite_dir / "metrics.csv", parts["metrics"])
            atomic_write_csv(suite_dir / "timings.csv", parts["timings"])
            for name, table in parts.items():
                if name not in ("metrics", "timings"):
                    atomic_write_csv(suite_dir / "tables" / f"{name}.csv", table)
            write_json(suite_dir / "run.json", run_info)
            written = render_suite(spec.name, suite_dir)
        for path in [suite_dir / "metrics.csv", suite_dir / "run.json", *written]:
            tracker.log_artifact(None, path, "results" if path.suffix != ".png" else "figures")
        metrics = parts["metrics"]
    distributed.barrier()
    distributed.close()
    print(f"\n{spec.name}: {len(cells)} cells in {run_info['wall_seconds']} s → {suite_dir}")
    print(headline_table(spec, metrics))
    return metrics

