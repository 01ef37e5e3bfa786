"""MLflow tracking: one experiment per suite, one parent run per invocation, one nested run per cell.

The default tracking URI is a SQLite file inside the results dir, created once before any cell;
``MLFLOW_TRACKING_URI`` (e.g. a shared server) overrides it. A run that raises ends FAILED, an interrupted one
KILLED, never left RUNNING.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

MAX_PARAM_LENGTH = 500


def tracking_uri(results_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


def _flatten(cfg: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


class Tracker:
    def __init__(self, results_dir: Path, suite: str):
        logging.getLogger("alembic").setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow
        from mlflow.tracking import MlflowClient

        self.mlflow = mlflow
        self.uri = tracking_uri(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        user_uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        if user_uri is None:  # mlflow exports the URI to the environment: undo it, the next results dir is not ours
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        self.client = MlflowClient(self.uri)
        name = f"cvpdl-bench/{suite}"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            artifacts = None if self.uri.startswith("http") else (results_dir / "mlartifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
        else:
            self.experiment_id = experiment.experiment_id

    @contextlib.contextmanager
    def run(self, name: str, params: dict, tags: dict[str, str], nested: bool = False) -> Iterator[str]:
        """Open a (nested) run; long params go to ``config.json`` as an artifact instead."""
        run = self.mlflow.start_run(experiment_id=self.experiment_id, run_name=name, nested=nested, tags=tags)
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
        except BaseException:
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

    def log_artifacts(self, run_id: str, directory: Path) -> None:
        self.client.log_artifacts(run_id, str(directory))
