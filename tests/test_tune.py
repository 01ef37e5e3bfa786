"""``benchmark tune``: the objective read from val rows, equal budgets, resumable studies, best.json read by run."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from benchmark.context import CellResult
from benchmark.params import load_params, stored
from benchmark.registry import REGISTRY, MethodSpec, SearchParam, SuiteSpec
from benchmark.runner import RunOptions, run_suite
from benchmark.tune import TuneOptions, objective_value, tune_suite
from cvpdl.errors import UserInputError
from tests.conftest import suite_folder


def test_objective_is_the_last_epoch_or_the_final_row():
    rows = pd.DataFrame({"method": "m", "seed": 0, "epoch": [1, 2, 2, None], "split": ["val", "val", "val", "test"],
                         "metric": ["top1"] * 4, "value": [0.1, 0.4, 0.6, 0.9]})
    assert objective_value(rows, "m", [0], "top1", "val") == pytest.approx(0.5)  # epoch 2's rows, never test
    final = pd.concat([rows, pd.DataFrame({"method": "m", "seed": 0, "epoch": [None], "split": ["val"],
                                           "metric": ["top1"], "value": [0.7]})])
    assert objective_value(final, "m", [0], "top1", "val") == pytest.approx(0.7)
    # the merged table holds other methods' and seeds' cells: they never enter this trial's value
    others = pd.concat([final, final.assign(method="other", value=5.0), final.assign(seed=1, value=7.0)])
    assert objective_value(others, "m", [0], "top1", "val") == pytest.approx(0.7)
    assert objective_value(others, "m", [0, 1], "top1", "val") == pytest.approx((0.7 + 7.0) / 2)  # a trial's seeds
    with pytest.raises(UserInputError, match="missing"):
        objective_value(rows, "m", [0], "AP", "val")


OFFSET = {"fixed": 1.0, "tunable": 0.0}


@dataclass(frozen=True)
class KnobConfig:
    x: float = 0.9
    seconds: float = 0.0  # how long a trial's cell takes (so that workers sharing a study overlap)


def _run_cell(run, shared, method, seed, generator):
    # best at x = 0.3; every method scores differently, so one method's value can never pass for another's
    time.sleep(run.cfg["knob"]["seconds"])
    score = -(run.cfg["knob"]["x"] - 0.3) ** 2 - OFFSET[method.name]
    return CellResult([{"epoch": 1, "split": "val", "metric": "score", "value": score},
                       {"epoch": None, "split": "test", "metric": "score", "value": 10 + score}])


@pytest.fixture(scope="module", autouse=True)
def knob_suite():
    if "knob" not in {s.name for s in REGISTRY.suites()}:
        REGISTRY.register_suite(SuiteSpec(name="knob", question="q", dataset="none", config={"knob": KnobConfig},
                                          profiles={"quick": {}}, prepare=lambda run: None, run_cell=_run_cell,
                                          baseline="fixed", headline=(("score", "test"),),
                                          tuning_objective=("score", "val")))
        REGISTRY.register_method(MethodSpec("fixed", "knob", "test-only", from_config=lambda cfg: None))
        REGISTRY.register_method(MethodSpec("tunable", "knob", "test-only", from_config=lambda cfg: None,
                                            search_space=(SearchParam("knob.x", 0.0, 1.0),)))


def test_tune_gives_each_method_its_budget_and_run_reads_best_json(tmp_path):
    options = TuneOptions(suite="knob", trials=6, profile="quick", results_dir=tmp_path, cache_dir=tmp_path / "c")
    trials = tune_suite(options)
    assert (trials["method"] == "tunable").sum() == 6
    assert (trials["method"] == "fixed").sum() == 1  # nothing to tune: its untuned value, once
    best = json.loads((tmp_path / "knob" / "tuning" / "best.json").read_text())
    x = best["methods"]["tunable"]["params"]["knob.x"]
    assert best["methods"]["tunable"]["value"] == pytest.approx(-(x - 0.3) ** 2)
    assert best["methods"]["tunable"]["value"] == max(trials.loc[trials["method"] == "tunable", "value"])
    # trial 0 is the default config, the same as `fixed`'s only trial: still scored on its own cell alone
    assert best["methods"]["tunable"]["default_value"] == pytest.approx(-(0.9 - 0.3) ** 2)
    # the test-side headline of the default and the chosen trial is recorded beside them (never optimised)
    assert best["methods"]["tunable"]["default_headline"] == {"score[test]": pytest.approx(10 - 0.36)}
    assert best["methods"]["tunable"]["headline"] == {"score[test]": pytest.approx(10 - (x - 0.3) ** 2)}
    assert "headline:score[test]" in trials.columns
    assert (tmp_path / "knob" / "tuning" / "figures" / "sensitivity_tunable.png").is_file()

    again = tune_suite(options)  # a finished study is not extended: same trials
    pd.testing.assert_frame_equal(trials, again)

    params = load_params(tmp_path / "knob" / "tuning" / "best.json", "knob")
    assert params["tunable"] == {"knob.x": x}
    metrics = run_suite(RunOptions(suite="knob", seeds=[0], profile="quick", results_dir=tmp_path / "final",
                                   cache_dir=tmp_path / "c", params=tmp_path / "knob" / "tuning" / "best.json"))
    test = metrics[metrics["split"] == "test"].set_index("method")["value"]
    assert test["tunable"] == pytest.approx(10 - (x - 0.3) ** 2)  # the tuned value reached this method's cells
    assert test["fixed"] == pytest.approx(10 - 0.36 - 1)  # and only this method's
    fixed = json.loads((tmp_path / "knob" / "tuning" / "best.json").read_text())["methods"]["fixed"]
    assert fixed["value"] == pytest.approx(-0.36 - 1)  # its own cell, though trial 0 of both is the same config
    with pytest.raises(UserInputError, match="suite"):
        load_params(tmp_path / "knob" / "tuning" / "best.json", "detr")
    # two regimes: `--params tuned` runs the suite's own study into DIR/tuned/<suite>/; without --params (or with
    # "none") the papers' settings, into DIR/<suite>/, though the study exists
    own = run_suite(RunOptions(suite="knob", seeds=[0], profile="quick", results_dir=tmp_path,
                               cache_dir=tmp_path / "c", params=Path("tuned")))
    assert own.set_index(["method", "split"]).loc[("tunable", "test"), "value"] == pytest.approx(10 - (x - 0.3) ** 2)
    assert (tmp_path / "tuned" / "knob" / "metrics.csv").is_file()
    for params in (None, Path("none")):
        plain = run_suite(RunOptions(suite="knob", seeds=[0], profile="quick", results_dir=tmp_path,
                                     cache_dir=tmp_path / "c", params=params))
        assert plain.set_index(["method", "split"]).loc[("tunable", "test"), "value"] == pytest.approx(10 - 0.36)
    assert pd.read_csv(tmp_path / "knob" / "metrics.csv")["value"].max() == pytest.approx(10 - 0.36)
    with pytest.raises(UserInputError, match="no study"):
        run_suite(RunOptions(suite="knob", seeds=[0], profile="quick", results_dir=tmp_path / "elsewhere",
                             cache_dir=tmp_path / "c", params=Path("tuned")))


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_two_workers_share_one_study_and_its_budget(tmp_path, storage):
    """Two ``tune --storage`` processes (as on two machines: their own results dirs) on one study: together they
    complete the budget, each did part of it, the default trial is enqueued once, and both count the same trials."""
    import multiprocessing

    import optuna

    url = str(tmp_path / "shared" / "optuna.journal") if storage == "journal" else \
        f"sqlite:///{tmp_path / 'shared' / 'optuna.db'}"
    context = multiprocessing.get_context("fork")
    start = context.Barrier(2)

    def worker(i: int) -> None:
        start.wait()
        tune_suite(TuneOptions(suite="knob", trials=4, profile="quick", overrides=["knob.seconds=1"], storage=url,
                               results_dir=tmp_path / f"w{i}", cache_dir=tmp_path / f"c{i}"))
        os._exit(0)

    workers = [context.Process(target=worker, args=(i,)) for i in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(300)
        assert process.exitcode == 0
    from benchmark.tune import open_storage

    shared = optuna.load_study(study_name="knob-tunable-quick", storage=open_storage(url, tmp_path)[0])
    complete = [t for t in shared.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 4 <= len(complete) <= 5  # one trial in flight when the budget filled may finish past it
    assert sum(bool(t.user_attrs.get("default")) for t in shared.trials) == 1
    for i in range(2):
        assert list((tmp_path / f"w{i}" / "knob" / "tuning" / "trials").glob("**/DONE"))  # each did part of it
        best = json.loads((tmp_path / f"w{i}" / "knob" / "tuning" / "best.json").read_text())
        assert best["trials_per_method"] == 4 and best["methods"]["tunable"]["trials"] == 4
    assert best["methods"]["tunable"]["value"] == max(t.value for t in complete[:4])


def test_an_unusable_storage_is_one_line(tmp_path, capsys):
    from benchmark.cli import main

    (tmp_path / "file").write_text("")
    for url in (str(tmp_path / "file" / "optuna.journal"), "postgresql+nosuchdriver://u@h/db"):
        code = main(["tune", "--suite", "knob", "--profile", "quick", "--trials", "1", "--storage", url,
                     "--results-dir", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"error: --storage {url}: not a usable Optuna storage") and \
            err.count("\n") == 1, err


def test_killed_tune_resumes_and_run_reads_its_best_json(tmp_path):
    """Real suite, quick profile: 2 methods x 2 trials, SIGKILLed after its first trial, then resumed."""
    command = [sys.executable, "-m", "benchmark", "tune", "--suite", "detr", "--methods", "detr", "dab_detr",
               "--trials", "2", "--profile", "quick", "--threads", "1", "--results-dir", str(tmp_path / "r"),
               "--cache-dir", str(tmp_path / "c")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    trials_dir = tmp_path / "r" / "detr" / "tuning" / "trials" / "detr"  # each trial's config: its own folder
    deadline = time.time() + 300
    while not list(trials_dir.glob("*/cells/*/*/DONE")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    trials = pd.read_csv(tmp_path / "r" / "detr" / "tuning" / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"].groupby("method").size().to_dict()
    assert complete == {"detr": 2, "dab_detr": 2}
    best = tmp_path / "r" / "detr" / "tuning" / "best.json"
    run = subprocess.run([sys.executable, "-m", "benchmark", "run", "--suite", "detr", "--methods", "detr",
                          "--seeds", "0", "--profile", "quick", "--threads", "1", "--params", str(best),
                          "--results-dir", str(tmp_path / "final"), "--cache-dir", str(tmp_path / "c")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    recorded = json.loads((suite_folder(tmp_path / "final", "detr") / "run.json").read_text())
    assert recorded["params"]["detr"] == stored(load_params(best, "detr"))["detr"]


def test_report_says_how_much_tuning_moved_each_method(tmp_path):
    from benchmark.summary import tuning_lines

    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "best.json").write_text(json.dumps({
        "suite": "knob", "profile": "default", "objective": ["score", "val"], "trials_per_method": 4,
        "methods": {"tunable": {"value": 0.5, "default_value": 0.25, "params": {"knob.x": 0.3}, "trials": 4,
                                "headline": {"score[test]": 0.6}, "default_headline": {"score[test]": 0.2}},
                    "fixed": {"value": 0.1, "default_value": 0.1, "params": {}, "trials": 1}}}))
    lines = tuning_lines(tmp_path, pd.DataFrame(), {"params": {"tunable": ["knob.x=0.3"]}})
    assert "4 trials counted per method" in lines[0] and "used the tuned values" in lines[0]
    assert lines[1].startswith("**The tuned values predate the current training code**: it records no provenance")
    assert lines[2] == ("`tunable`: score[val] default → tuned 0.250 → 0.500 (test, same seed: score[test] "
                        "0.200 → 0.600); `knob.x=0.3`")
    assert lines[3] == "`fixed`: score[val] default → tuned 0.100 (nothing to tune)"
    assert "did **not** use them" in tuning_lines(tmp_path, pd.DataFrame(), {})[0]
    assert tuning_lines(tmp_path / "none", pd.DataFrame(), {}) == [
        "No tuning study: every method ran with its default values."]
