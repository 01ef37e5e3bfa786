"""A newcomer's first hour: refusals before any heavy import or write, help that lists choices and defaults, a smoke
run that says so, a cells bar under a terminal, and a run that ends with where its results are."""
import argparse
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import catalog
from benchmark.cli import build_parser
from benchmark.registry import PROFILES, SUITE_NAMES

REPO = Path(__file__).resolve().parents[1]


def _python_m_benchmark(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, **kwargs)


@pytest.fixture(scope="module")
def warm_catalog():
    """The catalog of this code version, cached as a first call after a code change caches it."""
    catalog.suite_catalog()


@pytest.mark.parametrize("args, message", [
    (["--seeds", "-1"], "seed -1 is out of range"),
    (["--seeds", "0", "0"], "--seeds lists seed 0 more than once"),
    (["--seeds", "one"], "seed 'one' is not an integer"),
    (["--seeds", "4294967296"], "out of range"),
    (["--methods", "fitnett"], "unknown method 'fitnett' for suite 'kd'"),
    (["--profile", "fast"], "unknown profile 'fast'; choose from: quick, default, full"),
    (["--set", "fitnet.hint_wieght=1"], "unknown config key 'fitnet.hint_wieght'"),
    (["--set", "train.lr=fast"], "cannot read 'fast' as float"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--set", "fitnet.hint_stage=9"], "fitnet.hint_stage=9: the nets have 3 and 3 stages"),  # spans sections
])
@pytest.mark.parametrize("print_config", [False, True])
def test_bad_run_arguments_are_refused_before_anything_is_imported_or_written(args, message, print_config,
                                                                              tmp_path, warm_catalog):
    """One line, exit 2, no results folder, no torch imported (the subprocess fails if it is: a guard module)."""
    results = tmp_path / "results"
    probe = ("import sys, runpy; sys.argv = ['benchmark', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('benchmark', run_name='__main__')\n"
             "finally:\n    assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", probe, "run", "--suite", "kd", *args, "--results-dir", str(results),
                          *(["--print-config"] if print_config else [])], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not results.exists()


@pytest.mark.parametrize("suite, assignment, message", [
    ("detr", "dab.activation=swishy", "dab.activation must be one of relu, prelu, got 'swishy'"),
    ("ovd", "data.clip_corpus=web", "data.clip_corpus must be one of multiscale, train, got 'web'"),
    ("kd", "fitnet.hint_stage=9", "fitnet.hint_stage=9: the nets have 3 and 3 stages"),
])
def test_constrained_values_are_refused_before_any_folder_is_created(suite, assignment, message, tmp_path, cli):
    """Choices (``Literal`` fields, also checked before torch is imported) and constraints across sections (FitNet's
    hint stage against both nets) are checked when the config is resolved, not inside a cell."""
    results = tmp_path / "results"
    code, _, err = cli("run", "--suite", suite, "--profile", "quick", "--seeds", "0", "--set", assignment,
                       "--results-dir", str(results))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not results.exists()


def test_unknown_suite_is_refused_by_every_subcommand_that_takes_one(cli):
    for command in ("run", "tune", "report", "verify", "plan"):
        code, _, err = cli(command, "--suite", "kdd")
        assert code == 2 and "unknown suite 'kdd'; choose from: detr, kd, ovd" in err, (command, err)


def test_static_names_match_the_registry():
    import benchmark.suites
    from benchmark.registry import REGISTRY

    assert SUITE_NAMES == benchmark.suites.SUITES
    for name in SUITE_NAMES:
        assert tuple(REGISTRY.suite(name).profiles) == PROFILES


def test_every_subcommand_and_option_has_help():
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    top = parser.format_help()
    for name, sub in subcommands.choices.items():
        assert f"\n    {name} " in top, f"top-level help does not list {name}"
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings}: no help text"
    run_help = subcommands.choices["run"].format_help()
    assert "detr | kd | ovd" in run_help and "(default: 0 1 2 3 4)" in run_help and "{auto,cpu,cuda}" in run_help


def test_quick_run_under_a_terminal_shows_the_cells_bar_and_ends_with_where_to_look(tmp_path, cache_dir):
    """A pseudo-terminal (0 × 0, as nobody sized it): the cells bar is drawn; the run says it is a smoke test, lists
    the files it wrote and the command that opens its MLflow runs."""
    results = tmp_path / "results"
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmark", "run", "--suite", "kd", "--profile", "quick", "--seeds", "0",
         "--methods", "student_baseline", "logit_kd", "--results-dir", str(results), "--cache-dir", str(cache_dir)],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO, close_fds=True,
        # in-process CLI tests set TQDM_DISABLE (their stderr is no terminal): a user's shell has none
        env={k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"})
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert process.wait(timeout=600) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "kd cells:" in text and "cell/s" in text, text[-2000:]
    assert "SMOKE TEST (quick profile)" in text
    assert "wrote:" in text and "summary.md" in text
    assert "mlflow ui --backend-store-uri sqlite:///" in text
    summary = next(results.glob("kd/*/summary.md")).read_text()
    assert "SMOKE TEST (quick profile)" in summary.splitlines()[2]


def test_figures_draw_no_interval_below_three_seeds():
    from paper_figures.style import MIN_SEEDS_FOR_INTERVAL, t_interval

    assert MIN_SEEDS_FOR_INTERVAL == 3
    assert t_interval([0.1, 0.3]) == (0.2, 0.2)
    low, high = t_interval([0.1, 0.2, 0.3])
    assert low < 0.2 < high


def test_dry_run_prints_cells_and_time_and_writes_nothing(tmp_path, warm_catalog):
    results = tmp_path / "results"
    (results / "kd").mkdir(parents=True)
    committed = REPO / "results" / "kd" / "run.json"
    (results / "kd" / "run.json").write_text(committed.read_text())
    probe = ("import sys, runpy; sys.argv = ['benchmark', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('benchmark', run_name='__main__')\n"
             "finally:\n    assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", probe, "run", "--suite", "kd", "--seeds", "0", "1", "--methods",
                          "gld", "fitnet", "--dry-run", "--jobs", "2", "--results-dir", str(results)],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "4 cells = 2 methods × 2 seeds" in out.stdout and "seeds: 0 1" in out.stdout
    wall = json.loads(committed.read_text())["wall_seconds"]
    assert "time: ≈" in out.stdout and f"the committed run: {wall:.0f} s for 25 cells" in out.stdout
    assert sorted(p.name for p in results.rglob("*")) == ["kd", "run.json"]


def test_the_activation_choices_are_the_activations():
    import typing

    from cvpdl.detection.transformer import ACTIVATIONS, Activation

    assert set(typing.get_args(Activation)) == set(ACTIVATIONS)
