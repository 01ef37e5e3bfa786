"""Reliability of the runner: diverging cells, signals, stale MLflow runs, kill-and-resume, concurrent invocations,
a real MLflow server, and one clear line for each kind of bad input."""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmark.cli import main
from benchmark.context import CellResult
from benchmark.registry import REGISTRY, MethodSpec, SuiteSpec
from benchmark.runner import CellsFailedError, RunOptions, run_suite
from cvpdl.checkpoint import Checkpoint
from cvpdl.errors import NonFiniteLossError, UserInputError
from tests.conftest import suite_folder

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class FlakyConfig:
    nan_seed: int = -1  # this seed's loss diverges
    term_seed: int = -1  # this seed receives SIGTERM while it trains


def _run_cell(run, shared, method, seed, generator):
    cfg = run.cfg["flaky"]
    if seed == cfg["nan_seed"]:
        raise NonFiniteLossError("loss is nan at epoch 1, step 3")
    if seed == cfg["term_seed"]:
        signal.raise_signal(signal.SIGTERM)
    value = torch.rand(1, generator=generator).item()
    for epoch in (1, 2):
        run.on_epoch("flaky loop", epoch, 2, {"train/loss": value / epoch})
    return CellResult([{"epoch": None, "split": "test", "metric": "score", "value": value}],
                      models={"net": torch.nn.Linear(2, 1)})


@pytest.fixture(scope="module", autouse=True)
def flaky_suite():
    if "flaky" not in {s.name for s in REGISTRY.suites()}:
        REGISTRY.register_suite(SuiteSpec(name="flaky", question="q", dataset="none", config={"flaky": FlakyConfig},
                                          profiles={"quick": {}}, prepare=lambda run: None, run_cell=_run_cell,
                                          baseline="a", headline=(("score", "test"),)))
        REGISTRY.register_method(MethodSpec("a", "flaky", "test-only", from_config=lambda cfg: None))


def test_outbound_network_is_refused_here_and_in_child_processes():
    with pytest.raises(ConnectionRefusedError, match="network access refused"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1
    child = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80), 1)"],
                           capture_output=True, text=True)
    assert child.returncode != 0 and "network access refused" in child.stderr


def _states(results_dir: Path, suite: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(f"cvpdl-bench/{suite}").experiment_id])
    return {(r.data.tags["role"], r.data.tags.get("seed"), r.info.run_id): r.info.status for r in runs}


def test_a_diverging_cell_fails_alone_and_nothing_written_is_lost(tmp_path):
    opts = dict(suite="flaky", profile="quick", results_dir=tmp_path, cache_dir=tmp_path / "c")
    run_suite(RunOptions(seeds=[0], **opts))
    before = (tmp_path / "flaky" / "metrics.csv").read_bytes()
    with pytest.raises(CellsFailedError, match=r"1 of 3 cells failed \(a seed 2: loss is nan at epoch 1, step 3\)"):
        run_suite(RunOptions(seeds=[1, 2, 3], overrides=["flaky.nan_seed=2"], **opts))
    assert (tmp_path / "flaky" / "metrics.csv").read_bytes() == before  # the failing run changed nothing
    # seeds 0, 1, 3 kept (1 and 3 in the overridden config's own folder)
    assert len(list((tmp_path / "flaky").glob("**/cells/*/a_seed*/DONE"))) == 3
    statuses = sorted(v for (role, seed, _), v in _states(tmp_path, "flaky").items() if role == "cell")
    assert statuses == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]
    first = json.loads((tmp_path / "flaky" / "run.json").read_text())
    run_suite(RunOptions(seeds=[1, 3], **opts))  # same config and code: merged with seed 0's results
    assert sorted(pd.read_csv(tmp_path / "flaky" / "metrics.csv")["seed"]) == [0, 1, 3]
    merged = json.loads((tmp_path / "flaky" / "run.json").read_text())
    assert merged["seeds"] == [0, 1, 3]  # the invocation that made seed 0's cells is recorded beside this one
    assert merged["earlier_invocations"] == [{"command": first["environment"]["command"],
                                              "date": first["environment"]["date"], "seeds": [0],
                                              "methods": first["methods"], "wall_seconds": first["wall_seconds"]}]


def test_sigterm_ends_the_runs_killed(tmp_path, capsys):
    code = main(["run", "--suite", "flaky", "--profile", "quick", "--seeds", "0", "1", "--set", "flaky.term_seed=1",
                 "--results-dir", str(tmp_path), "--cache-dir", str(tmp_path / "c")])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    states = {(role, seed): v for (role, seed, _), v in _states(tmp_path, "flaky").items()}
    assert states == {("invocation", None): "KILLED", ("cell", "0"): "FINISHED", ("cell", "1"): "KILLED"}


def test_runs_left_running_by_a_dead_process_are_marked_killed(tmp_path):
    from mlflow.tracking import MlflowClient

    run_suite(RunOptions(suite="flaky", seeds=[0], profile="quick", results_dir=tmp_path, cache_dir=tmp_path / "c"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cvpdl-bench/flaky").experiment_id
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = client.create_run(experiment, tags={"host": socket.gethostname(), "pid": str(dead.pid),
                                                 "role": "invocation"}).info.run_id
    alive = client.create_run(experiment, tags={"host": socket.gethostname(), "pid": str(os.getpid()),
                                                "role": "invocation"}).info.run_id
    run_suite(RunOptions(suite="flaky", seeds=[0], profile="quick", results_dir=tmp_path, cache_dir=tmp_path / "c"))
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(alive).info.status == "RUNNING"  # a live invocation is left alone


def test_tagging_a_run_from_a_process_without_an_active_run_opens_no_stray_run(tmp_path):
    """A ``--jobs`` worker that finds its cell finished tags the invocation's run by id (mlflow.set_tag would
    open a new run in the worker, which has no active one)."""
    from benchmark.tracking import Tracker

    run_suite(RunOptions(suite="flaky", seeds=[0], profile="quick", results_dir=tmp_path, cache_dir=tmp_path / "c"))
    tracker = Tracker(tmp_path, "flaky")
    [parent] = tracker.client.search_runs([tracker.experiment_id], "tags.role = 'invocation'")
    before = len(tracker.client.search_runs([tracker.experiment_id]))
    tracker.tag_run(parent.info.run_id, "reused.a-seed0", "some-run")
    assert len(tracker.client.search_runs([tracker.experiment_id])) == before
    assert tracker.client.get_run(parent.info.run_id).data.tags["reused.a-seed0"] == "some-run"
    assert tracker.mlflow.active_run() is None


def _cli(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "benchmark", *args], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("profile", [
    ["--profile", "quick", "--set", "train.epochs=3"],
    pytest.param(["--profile", "default"], marks=pytest.mark.slow),  # the check, about 4 minutes
])
def test_sigkill_at_a_random_point_then_resume_gives_the_uninterrupted_metrics(tmp_path, cache_dir, profile):
    args = ["run", "--suite", "detr", "--methods", "dn_dab_detr", "--seeds", "0", *profile,
            "--cache-dir", str(cache_dir)]
    reference = _cli(*args, "--results-dir", str(tmp_path / "reference"))
    assert reference.wait(timeout=300) == 0, reference.stderr.read()

    killed = _cli(*args, "--results-dir", str(tmp_path / "killed"))
    deadline = time.time() + 300
    while not list((tmp_path / "killed").glob("detr/*/cells/*/*/checkpoints/detr.pt")):  # mid-cell, after an epoch
        assert killed.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    time.sleep(random.Random().uniform(0, 4 if "default" in profile else 1))  # anywhere in the next epochs
    killed.send_signal(signal.SIGKILL)
    killed.wait()

    resumed = _cli(*args, "--results-dir", str(tmp_path / "killed"), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert (suite_folder(tmp_path / "killed", "detr") / "metrics.csv").read_bytes() == \
        (suite_folder(tmp_path / "reference", "detr") / "metrics.csv").read_bytes()
    states = _states(tmp_path / "killed", "detr")
    assert sorted(states.values()) == ["FINISHED", "FINISHED", "KILLED", "KILLED"]  # the SIGKILLed runs, closed


def test_four_concurrent_invocations_share_one_store(tmp_path, cache_dir):
    runs = [_cli("run", "--suite", "detr", "--profile", "quick", "--methods", "detr", "--seeds", str(seed),
                 "--threads", "1", "--set", "train.epochs=1", "--results-dir", str(tmp_path),
                 "--cache-dir", str(cache_dir)) for seed in range(4)]
    for run in runs:
        assert run.wait(timeout=600) == 0, run.stderr.read()
    assert sorted(pd.read_csv(suite_folder(tmp_path, "detr") / "metrics.csv")["seed"].unique()) == [0, 1, 2, 3]
    assert json.loads((suite_folder(tmp_path, "detr") / "run.json").read_text())["seeds"] == [0, 1, 2, 3]
    states = _states(tmp_path, "detr")
    assert len(states) == 8 and set(states.values()) == {"FINISHED"}


def test_four_invocations_with_four_results_dirs_and_one_explicit_sqlite_store(tmp_path, monkeypatch):
    """The issue's set-up (one ``MLFLOW_TRACKING_URI=sqlite:///…`` store for all of a user's runs), started at the
    same instant: before the store's own lock, 3 of 4 died in MLflow's schema migration."""
    import multiprocessing

    store = tmp_path / "store" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    context = multiprocessing.get_context("fork")
    start = context.Barrier(4)

    def invocation(i: int) -> None:
        sys.stderr = open(tmp_path / f"stderr{i}", "w", buffering=1)  # its traceback, if any, stays readable
        os.dup2(sys.stderr.fileno(), 2)
        start.wait()
        os._exit(main(["run", "--suite", "flaky", "--profile", "quick", "--seeds", "0",
                       "--results-dir", str(tmp_path / f"r{i}"), "--cache-dir", str(tmp_path / "c")]))

    processes = [context.Process(target=invocation, args=(i,)) for i in range(4)]
    for process in processes:
        process.start()
    for i, process in enumerate(processes):
        process.join(120)
        assert process.exitcode == 0, (tmp_path / f"stderr{i}").read_text()[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("cvpdl-bench/flaky").experiment_id])
    assert sorted((r.data.tags["role"], r.info.status) for r in runs) == \
        [("cell", "FINISHED")] * 4 + [("invocation", "FINISHED")] * 4


def test_a_real_mlflow_server_on_loopback(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.time() + 90
        while True:
            try:
                if requests.get(f"{uri}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
            time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # the test's runs take seconds
        opts = dict(suite="flaky", profile="quick", results_dir=tmp_path / "r", cache_dir=tmp_path / "c")
        run_suite(RunOptions(seeds=[0, 1], **opts))
        run_suite(RunOptions(seeds=[0, 1, 2], **opts))  # seeds 0 and 1 reused: referenced, not logged again
        from benchmark.tracking import metrics_from_mlflow

        tracked, folder = metrics_from_mlflow("flaky", tmp_path / "r")  # follows the references
        assert sorted(tracked["seed"].unique()) == [0, 1, 2] and folder == "flaky"
        with pytest.raises(CellsFailedError):
            run_suite(RunOptions(seeds=[3], overrides=["flaky.nan_seed=3"], **opts))
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("cvpdl-bench/flaky").experiment_id],
                                  order_by=["attributes.start_time ASC"])
        invocations = [r for r in runs if r.data.tags["role"] == "invocation"]
        cells = {r.info.run_name: r for r in runs if r.data.tags["role"] == "cell"}
        # names say suite, profile, data and time; one run per trained cell (3 + the failed one)
        assert all(re.fullmatch(r"flaky-quick-digits-\d{8}-\d{6}", r.info.run_name) for r in invocations)
        assert len(invocations) == 3 and sorted(cells) == ["a-seed0", "a-seed1", "a-seed2", "a-seed3"]
        first, second, failed = invocations
        assert second.data.tags["reused.a-seed0"] == cells["a-seed0"].info.run_id
        assert second.data.tags["reused.a-seed1"] == cells["a-seed1"].info.run_id
        assert cells["a-seed3"].info.status == "FAILED"
        assert cells["a-seed3"].data.tags["failure"].startswith("NonFiniteLossError: loss is nan")
        # params as plain values; what the run read, and its hash, as tags and dataset inputs
        cell = cells["a-seed0"]
        assert cell.data.params["flaky.nan_seed"] == "-1" and cell.data.params["seed"] == "0"
        assert first.data.tags["data"] == "digits"
        assert [d.dataset.name for d in first.inputs.dataset_inputs] == ["digits:mnist_5k.csv.gz"]
        # per-epoch values logged as each epoch ended, the final ones, the parent's per-method means
        history = client.get_metric_history(cell.info.run_id, "flaky_loop/train/loss")
        assert [m.step for m in history] == [1, 2] and history[1].timestamp >= history[0].timestamp
        assert "test/score" in cell.data.metrics
        mean = (cells["a-seed0"].data.metrics["test/score"] + cells["a-seed1"].data.metrics["test/score"]) / 2
        assert first.data.metrics["a/test/score"] == pytest.approx(mean)
        # system metrics beside the invocation (psutil is a dependency)
        assert "system/cpu_utilization_percentage" in first.data.metrics
        # the trained model with its config, and the results files
        artifacts = {a.path for a in client.list_artifacts(cell.info.run_id, "models")}
        assert artifacts == {"models/net.pt"}
        saved = torch.load(client.download_artifacts(cell.info.run_id, "models/net.pt", str(tmp_path)),
                           weights_only=False)
        assert saved["config"]["flaky"]["nan_seed"] == -1 and set(saved["state_dict"]) == {"weight", "bias"}
        assert {a.path for a in client.list_artifacts(first.info.run_id, "results")} >= {"results/metrics.csv",
                                                                                       "results/run.json"}
        assert not (tmp_path / "r" / "mlflow.db").exists()  # tracked on the server, not in the results dir
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_a_corrupt_checkpoint_is_one_line(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpoint = Checkpoint(tmp_path, "train")
    checkpoint.save({"model": model}, torch.Generator(), epoch=1)
    assert checkpoint.restore({"model": torch.nn.Linear(2, 2)}, torch.Generator()) == {"epoch": 1}
    checkpoint.path.write_bytes(checkpoint.path.read_bytes()[:100])  # truncated
    with pytest.raises(UserInputError, match="cannot be resumed from"):
        checkpoint.restore({"model": model}, torch.Generator())
    Checkpoint(tmp_path, "other").save({"model": torch.nn.Linear(3, 3)}, torch.Generator())
    with pytest.raises(UserInputError, match="cannot be resumed from"):  # another model's state
        Checkpoint(tmp_path, "other").restore({"model": model}, torch.Generator())


@pytest.fixture
def cli_main(capsys):
    def run(*args):
        code = main(list(args))
        return code, capsys.readouterr().err
    return run


def _one_line(err: str) -> bool:
    """One ``error:`` line and no traceback (progress bars may precede it on stderr)."""
    return "Traceback" not in err and sum(line.startswith("error:") for line in err.splitlines()) == 1


def test_more_bad_inputs_are_one_line_and_exit_2(tmp_path, cli_main, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = cli_main("run", "--suite", "flaky", "--profile", "quick", "--results-dir", str(blocker / "sub"))
    assert code == 2 and "is not writable" in err and _one_line(err)

    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"not a checkpoint")
    code, err = cli_main("run", "--suite", "ovd", "--profile", "quick", "--clip", "RN50", "--clip-weights",
                         str(garbage), "--results-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"))
    assert code == 2 and "cannot be loaded as RN50" in err and _one_line(err)

    truncated = tmp_path / "gt.json"
    truncated.write_text('{"images": [')
    code, err = cli_main("evaluate", "--gt", str(truncated), "--dt", str(truncated))
    assert code == 2 and "gt.json" in err and _one_line(err)

    gt = {"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0}]}
    (tmp_path / "gt_ok.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps([{"image_id": 9, "category_id": 1, "bbox": [0, 0, 5, 5],
                                                   "score": 1.0}]))
    code, err = cli_main("evaluate", "--gt", str(tmp_path / "gt_ok.json"), "--dt", str(tmp_path / "dt.json"))
    assert code == 2 and "image ids not in the ground truth: [9]" in err

    code, err = cli_main("run", "--suite", "flaky", "--profile", "quick", "--device", "tpu",
                         "--results-dir", str(tmp_path / "r"))
    assert code == 2 and "unknown device 'tpu'" in err

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    code, err = cli_main("run", "--suite", "flaky", "--profile", "quick", "--results-dir", str(tmp_path / "r2"))
    assert code == 2 and "is unreachable" in err and _one_line(err)
    assert not (tmp_path / "r2" / "flaky").exists()


def _torchrun(results: Path, cache_dir: Path, *args: str) -> None:
    """``torchrun --nproc_per_node 2 -m benchmark run …`` on the CPU (gloo), one thread per rank."""
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "benchmark", "run", *args, "--profile", "quick", "--seeds", "0", "--threads", "1",
                          "--results-dir", str(results), "--cache-dir", str(cache_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def _written_by_rank_0_alone(results: Path, suite: str, cells: int) -> None:
    """world_size 2 in run.json; one tracked invocation and its cells (rank 0's), one log file."""
    assert json.loads((suite_folder(results, suite) / "run.json").read_text())["world_size"] == 2
    assert sorted(_states(results, suite).values()) == ["FINISHED"] * (1 + cells)
    assert len(list((results / "logs").glob("*.log"))) == 1


def test_torchrun_ddp_with_two_processes_on_cpu(tmp_path, cache_dir):
    _torchrun(tmp_path, cache_dir, "--suite", "detr", "--methods", "detr", "--set", "train.epochs=2")
    frame = pd.read_csv(suite_folder(tmp_path, "detr") / "metrics.csv")
    assert set(frame["seed"]) == {0} and {"AP50", "matching_instability"} <= set(frame["metric"])
    _written_by_rank_0_alone(tmp_path, "detr", cells=1)


def test_torchrun_kd_teacher_and_distillers_with_two_processes_on_cpu(tmp_path):
    """The teacher (cached by rank 0 under a world-size key), the baseline and reverse KD's three stages under DDP."""
    _torchrun(tmp_path, tmp_path / "cache", "--suite", "kd", "--methods", "student_baseline", "reverse_feature_kd",
              "--set", "train.epochs=1", "--set", "teacher_train.epochs=1")
    frame = pd.read_csv(suite_folder(tmp_path, "kd") / "metrics.csv")
    assert set(frame["method"]) == {"student_baseline", "reverse_feature_kd"}
    assert {"top1_last", "teacher_top1", "loss_feature"} <= set(frame["metric"])
    assert len(list((tmp_path / "cache" / "kd_teacher").glob("*.pt"))) == 1
    _written_by_rank_0_alone(tmp_path, "kd", cells=2)


def test_torchrun_ovd_clip_localizer_and_regionclip_with_two_processes_on_cpu(tmp_path):
    """CLIP and localizer pretraining (cached by rank 0) and RegionCLIP pretraining under DDP, tiny sizes."""
    _torchrun(tmp_path, tmp_path / "cache", "--suite", "ovd", "--methods", "regionclip",
              *[arg for value in ("clip.epochs=1", "data.train_images=256", "regionclip.images=64",
                                  "data.test_images=16", "data.val_images=16", "data.single_images=16",
                                  "eval.scatter_points=50") for arg in ("--set", value)])
    frame = pd.read_csv(suite_folder(tmp_path, "ovd") / "metrics.csv")
    assert {"loss_region", "loss_image", "loss_distill", "zs_top1"} <= set(frame["metric"])
    assert [len(list((tmp_path / "cache" / name).glob("*.pt"))) for name in ("clip", "localizer")] == [1, 1]
    _written_by_rank_0_alone(tmp_path, "ovd", cells=1)


