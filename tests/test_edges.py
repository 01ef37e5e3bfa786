"""The edges of the harness (issue #16): a kill during start-up, data a suite cannot use, config holes, config files,
exit codes, lazy imports and portable file locks. Each test failed before its fix."""
import ast
import itertools
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy
import yaml

from benchmark.cli import main
from benchmark.context import CellResult
from benchmark.registry import REGISTRY, MethodSpec, SuiteSpec
from cvpdl.errors import NonFiniteLossError
from tests.conftest import suite_folder

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class EdgesConfig:
    batch_size: int = 4
    lr: float = 1e-3
    sizes: tuple[int, int] = (2, 3)
    nan_seed: int = -1  # this seed's loss diverges


def _run_cell(run, shared, method, seed, generator):
    if seed == run.cfg["edges"]["nan_seed"]:
        raise NonFiniteLossError("loss is nan at epoch 1, step 1")
    run.on_epoch("edges loop", 1, 1, {"train/loss": 0.5})
    return CellResult([{"epoch": None, "split": "test", "metric": "score", "value": float(seed)}])


@pytest.fixture(scope="module", autouse=True)
def edges_suite():
    if "edges" not in {s.name for s in REGISTRY.suites()}:
        REGISTRY.register_suite(SuiteSpec(name="edges", question="q", dataset="none", config={"edges": EdgesConfig},
                                          profiles={"quick": {}}, prepare=lambda run: None, run_cell=_run_cell,
                                          baseline="a", headline=(("score", "test"),)))
        REGISTRY.register_method(MethodSpec("a", "edges", "test-only", from_config=lambda cfg: None))


def _run_args(results_dir: Path, *extra: str) -> list[str]:
    return ["run", "--suite", "edges", "--profile", "quick", "--seeds", "0", "--results-dir", str(results_dir),
            "--cache-dir", str(results_dir / "cache"), *extra]


def test_population_is_refused_where_a_suite_trains_seeds_alone(tmp_path, cli):
    """A suite without ``run_population`` (every suite of the benchmark has one now): one line, nothing written;
    ``auto`` there is 1."""
    code, _, err = cli(*_run_args(tmp_path / "r", "--population", "2"))
    assert code == 2 and "suite 'edges' trains every seed alone" in err
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()
    assert cli(*_run_args(tmp_path / "auto"))[0] == 0
    run = json.loads(next((tmp_path / "auto" / "edges").rglob("run.json")).read_text())
    assert run["population"] == {"a": 1} and run["population_choice"] == "the suite trains every seed alone"


@pytest.fixture(params=["default", "explicit"])
def store(request, tmp_path, monkeypatch) -> Path:
    """The SQLite store a run tracks into: the results dir's, or one named by ``MLFLOW_TRACKING_URI`` elsewhere."""
    if request.param == "default":
        return tmp_path / "mlflow.db"
    path = tmp_path / "tracking" / "store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
    return path


def _die_at_statement(results_dir: Path, kill_at: int, atomic: bool = True) -> int:
    """A forked ``run`` that SIGKILLs itself before its ``kill_at``-th SQL statement (start-up builds the store:
    about 1,700 statements); ``atomic=False`` replays the old start-up (and mlflow's own, for an explicit store),
    which migrated the store in place."""
    def child():
        import benchmark.tracking

        if not atomic:
            benchmark.tracking.ensure_store = lambda path, root: None
        counter = itertools.count(1)

        def maybe_die(*_):
            if next(counter) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", maybe_die)
        os._exit(main(_run_args(results_dir)))

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(300)
    return process.exitcode


def test_sigkill_at_several_points_of_startup_then_resume_completes(tmp_path, cli, store):
    for kill_at in (3, 400, 1200):  # creating the file, early and late in the migration
        assert _die_at_statement(tmp_path, kill_at) == -signal.SIGKILL
        assert not store.exists() or sqlite3.connect(store).execute("SELECT count(*) FROM alembic_version").fetchone()
    code, _, err = cli(*_run_args(tmp_path, "--resume"))
    assert code == 0, err
    assert not list(store.parent.glob(f".{store.name}.*"))  # the killed builds' temporary files are gone
    assert sorted(p.name for p in store.parent.glob(f"{store.name}*")) == [store.name, f"{store.name}.lock"]


def test_a_store_half_migrated_in_place_is_rebuilt_or_named_in_one_line(tmp_path, cli, store):
    assert _die_at_statement(tmp_path, 400, atomic=False) == -signal.SIGKILL  # the state
    assert store.with_name(store.name + "-journal").exists()  # the killed migration's hot journal
    code, _, err = cli(*_run_args(tmp_path, "--resume"))  # it holds no runs: rebuilt
    assert code == 0, err

    with sqlite3.connect(store) as db:  # now it holds runs: damaged → one line naming it
        db.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")
    code, _, err = cli(*_run_args(tmp_path, "--resume"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(store) in err and "mlflow db upgrade" in err

    with sqlite3.connect(store) as db:  # a migration killed between its statements (alembic: no transaction)
        db.execute("CREATE TABLE _alembic_tmp_experiments (id INTEGER)")
    code, _, err = cli(*_run_args(tmp_path, "--resume"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{store} was left half-migrated" in err and "DROP TABLE _alembic_tmp_experiments" in err


@pytest.mark.parametrize("args, message", [
    (["--suite", "detr", "--data", "imagefolder"], "suite 'detr' cannot use --data imagefolder; it supports: digits, "
                                                   "coco"),
    (["--suite", "kd", "--data", "coco"], "suite 'kd' cannot use --data coco; it supports: digits, imagefolder"),
    (["--suite", "detr", "--set", "world.digit_size=10"], "world.digit_size must be tuple[int, int], got [10]"),
    (["--suite", "detr", "--set", "train.batch_size=0"], "train.batch_size must be at least 1, got 0"),
    (["--suite", "kd", "--set", "train.lr=-0.1"], "train.lr must be positive, got -0.1"),
    (["--suite", "detr", "--set", "world.digit_size=10,90"], "world.digit_size must be [min, max] with min <= max"),
    (["--suite", "detr", "--set", "world.max_overlap_iou=1.5"], "world.max_overlap_iou must lie in [0, 1], got 1.5"),
    (["--suite", "ovd", "--set", "clip.vision_layers=1,1"], "clip.vision_layers must be tuple[int, int, int, int]"),
])
def test_data_a_suite_cannot_use_and_config_holes_are_one_line(args, message, tmp_path, cli):
    code, _, err = cli("run", *args, "--data-root", str(tmp_path), "--results-dir", str(tmp_path / "r"))
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()  # refused before any work


def test_config_file_round_trips_run_json_and_set_still_wins(tmp_path, cli):
    code, out, err = cli("run", "--suite", "detr", "--profile", "quick", "--set", "train.lr=0.00002",
                         "--set", "world.digit_size=12,20", "--print-config")
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["train"]["lr"] == 2e-5 and printed["world"]["digit_size"] == [12, 20]
    hash_line = out.splitlines()[0]
    (tmp_path / "printed.yaml").write_text(out)
    code, again, _ = cli("run", "--suite", "detr", "--profile", "default", "--config", str(tmp_path / "printed.yaml"),
                         "--print-config")
    assert code == 0 and again.splitlines()[1:] == out.splitlines()[1:]  # same config from another profile

    code, _, err = cli(*_run_args(tmp_path / "r", "--set", "edges.lr=1e-5", "--set", "edges.sizes=4,5"))
    assert code == 0, err
    written = suite_folder(tmp_path / "r", "edges") / "run.json"
    run_json = json.loads(written.read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(run_json["config"]))  # run.json's config section
    for source in (tmp_path / "config.yaml", written):
        code, out, _ = cli("run", "--suite", "edges", "--profile", "quick", "--config", str(source), "--print-config")
        assert code == 0 and f"config_hash {run_json['config_hash']} " in out.splitlines()[0]
    code, out, _ = cli("run", "--suite", "edges", "--profile", "quick", "--config", str(tmp_path / "config.yaml"),
                       "--set", "edges.batch_size=7", "--print-config")
    assert yaml.safe_load(out)["edges"]["batch_size"] == 7 and hash_line != out.splitlines()[0]

    (tmp_path / "bad.yaml").write_text("edges:\n  nope: 1\n")
    code, _, err = cli("run", "--suite", "edges", "--profile", "quick", "--config", str(tmp_path / "bad.yaml"))
    assert code == 2 and "unknown config key 'edges.nope'" in err and err.count("\n") == 1


def test_another_config_writes_its_own_folder_and_the_default_results_stay(tmp_path, cli):
    base = tmp_path / "edges"
    assert cli(*_run_args(tmp_path))[0] == 0  # the suite's default run (its only profile, no --set)
    default = (base / "metrics.csv").read_bytes()
    assert cli(*_run_args(tmp_path, "--set", "edges.lr=1e-5"))[0] == 0
    [other] = [p.parent for p in base.glob("*/run.json")]
    assert other.name.startswith("digits-quick-") and (base / "metrics.csv").read_bytes() == default
    assert json.loads((other / "run.json").read_text())["config"]["edges"]["lr"] == 1e-5
    assert "Data `digits` (the built-in digits world" in (other / "summary.md").read_text()
    assert (tmp_path / "REPORT.md").is_file() and not (base / "REPORT.md").exists()  # REPORT: the defaults only
    # the default config however spelled (a config file, a --set to the default value) is the default run
    assert cli(*_run_args(tmp_path, "--config", str(base / "run.json"), "--set", "edges.lr=0.001"))[0] == 0
    assert [p.parent for p in base.glob("*/run.json")] == [other]
    # `report` re-renders both
    (other / "summary.md").unlink()
    assert cli("report", "--suite", "edges", "--results-dir", str(tmp_path))[0] == 0
    assert (other / "summary.md").is_file()


def test_exit_codes_usage_2_failed_cell_3(tmp_path, cli):
    code, _, err = cli("run", "--suite", "edges", "--bogus")
    assert code == 2 and err.count("\n") == 1
    code, _, err = cli(*_run_args(tmp_path, "--set", "edges.nan_seed=0"))
    assert code == 3 and "1 of 1 cells failed" in err and "Traceback" not in err


def test_quiet_hides_progress_lines_and_verbose_is_accepted(tmp_path, cli):
    code, _, err = cli(*_run_args(tmp_path))
    # one line per epoch at normal verbosity, also in the invocation's log file
    line = "[a seed 0] edges loop epoch 1/1: train/loss 0.5"
    assert code == 0 and line in err
    [log_file] = (tmp_path / "logs").glob("edges-quick-digits-*.log")
    assert line in log_file.read_text()
    code, _, err = cli(*_run_args(tmp_path))
    assert code == 0 and "finished before: reusing" in err
    code, _, err = cli("-q", *_run_args(tmp_path))
    assert code == 0 and "finished before" not in err
    code, _, err = cli(*_run_args(tmp_path), "-v")
    assert code == 0 and "finished before: reusing" in err


def test_help_and_a_cached_list_import_no_heavy_package(tmp_path):
    env = {**os.environ, "CVPDL_CACHE": str(tmp_path)}
    probe = ("import sys; from benchmark.cli import main; main(sys.argv[1:]); "
             "print(sorted(m for m in ('torch', 'mlflow', 'open_clip', 'pandas') if m in sys.modules))")
    first = subprocess.run([sys.executable, "-c", probe, "list", "-v"], cwd=REPO, env=env, capture_output=True,
                           text=True)
    assert first.returncode == 0 and "dn_dab_detr" in first.stdout and "--data digits | coco" in first.stdout
    second = subprocess.run([sys.executable, "-c", probe, "list", "-v"], cwd=REPO, env=env, capture_output=True,
                            text=True)
    assert second.stdout.splitlines()[:-1] == first.stdout.splitlines()[:-1]  # the same listing, from the cache
    assert second.stdout.splitlines()[-1] == "[]"
    helped = subprocess.run([sys.executable, "-c", "import sys; from benchmark.cli import main\ntry: main(['--help'])\n"
                             "except SystemExit: print('torch' in sys.modules)"], cwd=REPO, capture_output=True,
                            text=True)
    assert helped.stdout.splitlines()[-1] == "False"


def test_file_locks_are_portable_and_exclusive(tmp_path):
    import benchmark.results as results

    assert "fcntl" not in vars(results)
    with results.locked(tmp_path / "x.lock"):
        child = subprocess.run([sys.executable, "-c", "import sys; from filelock import FileLock, Timeout\n"
                                f"try: FileLock({str(tmp_path / 'x.lock')!r}, timeout=0.2).acquire()\n"
                                "except Timeout: sys.exit(7)"], capture_output=True)
        assert child.returncode == 7  # another process cannot take it meanwhile
    assert (tmp_path / "x.lock").exists()  # kept: deleting a lock file races with its next holder


def test_every_imported_package_is_declared():
    import tomllib

    declared = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower().replace("_", "-")
                for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    declared |= {"transformers"}  # optional extra `bench`, imported inside try
    distribution = {"PIL": "pillow", "yaml": "pyyaml", "skdim": "scikit-dimension", "open_clip": "open-clip-torch",
                    "faster_coco_eval": "faster-coco-eval"}
    stdlib = set(sys.stdlib_module_names) | {"benchmark", "cvpdl", "paper_figures"}
    imported = set()
    for path in [*REPO.glob("benchmark/**/*.py"), *REPO.glob("cvpdl/**/*.py"), *REPO.glob("paper_figures/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    missing = {name for name in imported - stdlib if distribution.get(name, name).lower().replace("_", "-")
               not in declared}
    assert not missing, f"imported but not in pyproject dependencies: {sorted(missing)}"
