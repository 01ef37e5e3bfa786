"""The runner on a tiny test-only suite: failure handling, MLflow run states, resuming finished cells, no partial
results, and the per-cell determinism of seeds."""
import re
from dataclasses import dataclass

import pandas as pd
import pytest
import torch

from benchmark.context import CellResult
from benchmark.registry import REGISTRY, Deviation, MethodSpec, SuiteSpec
from benchmark.runner import RunOptions, run_suite

CALLS = []


@dataclass(frozen=True)
class ToyConfig:
    fail_seed: int = -1


def _run_cell(run, shared, method, seed, generator):
    CALLS.append((method.name, seed))
    if seed == run.cfg["toy"]["fail_seed"]:
        raise RuntimeError("boom")
    value = torch.rand(1, generator=generator).item() + torch.rand(1).item()  # both seeded by the runner
    return CellResult([{"epoch": 1, "split": "val", "metric": "score", "value": value},
                       {"epoch": None, "split": "test", "metric": "score", "value": value}])


@pytest.fixture(scope="module", autouse=True)
def toy_suite():
    if "toy" not in {s.name for s in REGISTRY.suites()}:
        REGISTRY.register_suite(SuiteSpec(name="toy", question="q", dataset="none", config={"toy": ToyConfig},
                                          profiles={"quick": {}}, prepare=lambda run: None, run_cell=_run_cell,
                                          baseline="a", headline=(("score", "test"),)))
        REGISTRY.register_method(MethodSpec("a", "toy", "test-only", from_config=lambda cfg: None))
        REGISTRY.register_method(MethodSpec("b", "toy", "test-only", from_config=lambda cfg: None,
                                            deviations=(Deviation("what", "why", "--set toy.x=1"),)))


def options(tmp_path, **kw):
    return RunOptions(suite="toy", seeds=[0, 1], profile="quick", results_dir=tmp_path, cache_dir=tmp_path / "c",
                      **kw)


def test_seeded_cells_are_reproducible_and_resumable(tmp_path, capsys):
    first = run_suite(options(tmp_path))
    assert "method" in capsys.readouterr().out  # the summary table
    CALLS.clear()
    second = run_suite(options(tmp_path))  # finished cells are reused, not recomputed
    assert CALLS == []
    pd.testing.assert_frame_equal(first, second)
    forced = run_suite(options(tmp_path / "other", force=True))
    assert len(CALLS) == 4
    pd.testing.assert_frame_equal(first, forced)
    assert first[first["seed"] == 0]["value"].iloc[0] != first[first["seed"] == 1]["value"].iloc[0]


def test_failed_cell_marks_mlflow_runs_and_writes_no_table(tmp_path):
    from mlflow.tracking import MlflowClient

    with pytest.raises(RuntimeError, match="boom"):
        run_suite(options(tmp_path, overrides=["toy.fail_seed=1"]))
    assert not (tmp_path / "toy" / "metrics.csv").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cvpdl-bench/toy").experiment_id])
    states = {(r.data.tags["role"], r.data.tags.get("seed")): r.info.status for r in runs}
    assert states == {("invocation", None): "FAILED", ("cell", "0"): "FINISHED", ("cell", "1"): "FAILED"}
    reasons = {r.data.tags.get("seed"): r.data.tags.get("failure") for r in runs}
    assert reasons == {None: "RuntimeError: boom", "0": None, "1": "RuntimeError: boom"}  # why, beside the run


def test_declared_deviations_are_mlflow_tags_of_the_method_cells(tmp_path):
    from mlflow.tracking import MlflowClient

    run_suite(options(tmp_path))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cvpdl-bench/toy").experiment_id])
    tags = {(r.data.tags.get("method"), r.data.tags.get("seed")): r.data.tags for r in runs
            if r.data.tags.get("role") == "cell"}
    assert tags[("b", "0")]["deviation.0"] == "what — why. Official: `--set toy.x=1`."
    assert not any(k.startswith("deviation.") for k in tags[("a", "0")])


def test_mlflow_runs_say_what_they_are(tmp_path):
    """Run names with suite, profile, data and time; params as plain values; data options as tags; the parent run
    carries each method's mean over seeds."""
    from mlflow.tracking import MlflowClient

    metrics = run_suite(options(tmp_path))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cvpdl-bench/toy").experiment_id])
    parent = next(r for r in runs if r.data.tags["role"] == "invocation")
    assert re.fullmatch(r"toy-quick-digits-\d{8}-\d{6}", parent.info.run_name)
    assert parent.data.tags["data"] == "digits"
    cell = next(r for r in runs if r.data.tags.get("method") == "a" and r.data.tags.get("seed") == "0")
    assert cell.data.params["toy.fail_seed"] == "-1" and cell.data.params["method"] == "a"  # not '"a"'
    test = metrics[(metrics["split"] == "test") & (metrics["method"] == "b")]["value"]
    assert parent.data.metrics["b/test/score"] == pytest.approx(test.mean())


def _cells_of(results_dir) -> tuple[str, list]:
    """The invocation's run and its cells' runs in the results dir's store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cvpdl-bench/detr").experiment_id])
    [parent] = [r for r in runs if r.data.tags["role"] == "invocation"]
    return parent.info.run_id, [r for r in runs if r.data.tags["role"] == "cell"]


def test_cells_as_submitit_jobs_give_the_numbers_of_one_process(tmp_path, cache_dir):
    """``--executor submitit`` without SLURM: submitit's local executor runs each cell as a job (its own process);
    the results dir, the MLflow runs and metrics.csv are those of a local run."""
    import json

    from benchmark.cli import main
    from tests.conftest import suite_folder

    args = ["run", "--suite", "detr", "--profile", "quick", "--methods", "detr", "--seeds", "0", "1", "--set",
            "train.epochs=1", "--threads", "1", "--cache-dir", str(cache_dir)]
    assert main([*args, "--results-dir", str(tmp_path / "one")]) == 0
    jobs = ["--executor", "submitit", "--submitit-cluster", "local", "--slurm-time", "20"]
    assert main([*args, *jobs, "--results-dir", str(tmp_path / "jobs")]) == 0
    assert (suite_folder(tmp_path / "one", "detr") / "metrics.csv").read_bytes() == \
        (suite_folder(tmp_path / "jobs", "detr") / "metrics.csv").read_bytes()
    parent, cells = _cells_of(tmp_path / "jobs")  # each job's cell: a run nested under the invocation's
    assert sorted(r.info.run_name for r in cells) == ["detr-seed0", "detr-seed1"]
    assert {r.data.tags["mlflow.parentRunId"] for r in cells} == {parent}
    assert len({r.data.tags["pid"] for r in cells}) == 2  # trained in two processes, not this one
    assert len(list((tmp_path / "jobs" / "submitit").glob("*_log.out"))) == 2  # the jobs' logs
    assert json.loads((suite_folder(tmp_path / "jobs", "detr") / "run.json").read_text())["executor"] == "submitit"


def test_a_killed_job_is_one_line_per_cell_and_resume_continues_its_checkpoint(tmp_path, cache_dir):
    """The job of a cell dies mid-cell (SIGKILL, as a node failure): the invocation names the cell, the job and its
    log and exits 3; ``--resume`` submits the cell again, which continues from the job's last checkpoint and ends
    with the uninterrupted run's metrics.csv."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    from tests.conftest import suite_folder

    args = [sys.executable, "-m", "benchmark", "run", "--suite", "detr", "--profile", "quick", "--methods", "detr",
            "--seeds", "0", "--set", "train.epochs=3", "--threads", "1", "--cache-dir", str(cache_dir)]
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([*args, "--results-dir", str(tmp_path / "one")], cwd=repo, check=True, capture_output=True)
    jobs = [*args, "--executor", "submitit", "--submitit-cluster", "local", "--slurm-time", "20",
            "--results-dir", str(tmp_path / "jobs")]
    parent = subprocess.Popen(jobs, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((tmp_path / "jobs").glob("detr/*/cells/*/*/checkpoints/detr.pt")):  # after an epoch
        assert parent.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    [job] = [p for p in psutil.Process(parent.pid).children(recursive=True)
             if "submitit.core._submit" in " ".join(p.cmdline())]
    job.send_signal(signal.SIGKILL)
    assert parent.wait(timeout=300) == 3
    err = parent.stderr.read()
    assert "1 of 1 cells failed (detr seed 0: job " in err and "_log.err" in err and "Traceback" not in err, err
    resumed = subprocess.run([*jobs, "--resume"], cwd=repo, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logs = (tmp_path / "jobs" / "submitit").glob("*_log.err")
    killed_log, resumed_log = sorted(logs, key=lambda path: path.stat().st_mtime)
    assert "epoch 1/3:" in killed_log.read_text()
    assert "epoch 1/3:" not in resumed_log.read_text() and "epoch 3/3:" in resumed_log.read_text()  # resumed
    assert (suite_folder(tmp_path / "one", "detr") / "metrics.csv").read_bytes() == \
        (suite_folder(tmp_path / "jobs", "detr") / "metrics.csv").read_bytes()


def test_the_plan_is_resolved_once_per_invocation(tmp_path, monkeypatch):
    """One invocation builds its ResolvedRun once; cells, workers and jobs receive it. Configs resolved: the run's,
    and the papers' default it is compared with to choose its folder (plus one per tuned method, none here)."""
    import benchmark.config
    import benchmark.plan
    import benchmark.invocation

    counts = {"resolve_run": 0, "config": 0}

    def counted(module, name, key):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    counted(benchmark.invocation, "resolve_run", "resolve_run")
    counted(benchmark.config, "resolve", "config")
    run_suite(options(tmp_path))
    assert counts == {"resolve_run": 1, "config": 2}
