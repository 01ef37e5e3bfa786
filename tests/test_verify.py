"""The reproducibility record in run.json, cache keys, and ``verify`` against results committed in a git repo."""
import json
import subprocess
from dataclasses import dataclass

import pandas as pd
import pytest
import torch

from benchmark import cache, reproducibility
from benchmark.cli import main
from benchmark.context import CellResult
from benchmark.registry import REGISTRY, MethodSpec, SuiteSpec
from benchmark.reproducibility import hardware_signature
from benchmark.verify import EXIT_MISS, compare, verify
from benchmark.results import records_frame
from benchmark.runner import RunOptions, run_suite
from cvpdl.errors import UserInputError

SUITE = "toy_verify"


@dataclass(frozen=True)
class ToyConfig:
    offset: float = 0.0


def _run_cell(run, shared, method, seed, generator):
    value = torch.rand(1, generator=generator).item() + run.cfg["toy"]["offset"]
    return CellResult([{"epoch": 1, "split": "val", "metric": "top1", "value": value / 2},
                       {"epoch": None, "split": "test", "metric": "top1_last", "value": value}])


@pytest.fixture(scope="module", autouse=True)
def toy_suite():
    if SUITE not in {s.name for s in REGISTRY.suites()}:
        REGISTRY.register_suite(SuiteSpec(name=SUITE, question="q", dataset="none", config={"toy": ToyConfig},
                                          profiles={"quick": {}}, prepare=lambda run: None, run_cell=_run_cell,
                                          baseline="a", headline=(("top1_last", "test"),)))
        REGISTRY.register_method(MethodSpec("a", SUITE, "test-only", from_config=lambda cfg: None))


def _rows(*rows):
    return records_frame([dict(zip(["suite", "method", "seed", "epoch", "split", "metric", "value"], (SUITE, *r)))
                          for r in rows])


def test_compare_exact_and_within_tolerances():
    committed = _rows(("a", 0, 1, "val", "top1", 0.5), ("a", 0, None, "test", "top1_last", 0.60),
                      ("a", 0, None, "test", "AP50", 0.20), ("a", 0, None, "test", "student_params", 100.0),
                      ("a", 0, None, "test", "unlisted", 2.0), ("a", 1, None, "test", "AP50", 0.9))
    ours = _rows(("a", 0, 1, "val", "top1", 0.51), ("a", 0, None, "test", "top1_last", 0.69),
                 ("a", 0, None, "test", "AP50", 0.26), ("a", 0, None, "test", "student_params", 100.0),
                 ("a", 0, None, "test", "unlisted", 2.15), ("a", 0, None, "test", "only_here", 1.0))
    # tolerances: final rows of the cells we have (seed 1 and the epoch row are left out); top1_last ±0.10,
    # AP50 ±0.05, parameter counts exact, an unlisted metric ±10% of the committed value (0.2); one-sided rows miss
    within = compare(ours, committed, exact=False).set_index("metric")
    assert dict(within["ok"]) == {"top1_last": True, "AP50": False, "student_params": True, "unlisted": True,
                                  "only_here": False}
    assert within.loc["AP50", "diff"] == pytest.approx(0.06)
    assert within.loc["unlisted", "tolerance"] == pytest.approx(0.2)
    exact = compare(ours, committed, exact=True).set_index("metric")
    assert dict(exact["ok"]) == {"top1": False, "top1_last": False, "AP50": False, "student_params": True,
                                 "unlisted": False, "only_here": False}


def test_hardware_signature_covers_cpu_isa_torch_and_threads():
    hw = {"cpu_model": "AMD EPYC (cpu family 25, model 1)", "isa_flags": ["avx2", "fma"], "torch": "2.14.1",
          "threads": 2}
    same = hardware_signature({**hw, "unrelated": "x"})
    assert same == hardware_signature(hw)
    for change in ({"threads": 4}, {"torch": "2.15.0"}, {"isa_flags": ["avx2"]}, {"cpu_model": "Intel Xeon"}):
        assert hardware_signature({**hw, **change}) != same
    flags = ["aes", "avx2", "avx512f", "avx512_vnni", "fma", "hypervisor", "sse4_2", "asimd", "sve"]
    assert [f for f in flags if reproducibility.ISA_FLAG.match(f)] == ["avx2", "avx512f", "avx512_vnni", "fma",
                                                                     "sse4_2", "asimd", "sve"]


def test_cache_key_covers_code_and_threads(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    before = cache.code_version.__wrapped__(tmp_path / "pkg")
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert cache.code_version.__wrapped__(tmp_path / "pkg") != before

    key = cache.cache_key({"clip": 1}, 0)
    assert cache.cache_key({"clip": 1}, 0) == key and cache.cache_key({"clip": 2}, 0) != key
    monkeypatch.setattr(cache, "code_version", lambda: "other code")
    assert cache.cache_key({"clip": 1}, 0) != key
    monkeypatch.undo()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert cache.cache_key({"clip": 1}, 0) != key
    finally:
        torch.set_num_threads(threads)


def test_run_json_records_the_environment(tmp_path):
    run_suite(RunOptions(suite=SUITE, seeds=[0], profile="quick", results_dir=tmp_path, cache_dir=tmp_path / "c",
                         threads=1))
    info = json.loads((tmp_path / SUITE / "run.json").read_text())
    assert info["hardware"]["threads"] == 1 and info["hardware"]["torch"] == torch.__version__
    assert info["hardware_signature"] == hardware_signature(reproducibility.hardware(1))
    env = info["environment"]
    assert env["date"][:2] == "20" and env["command"] and env["os"]
    assert env["threads"]["torch"] == 1
    assert env["evaluator"]["backend"] == "faster-coco-eval"
    assert any("PyTorch built with" in line for line in env["torch_build"]["config"])
    assert len(env["data_sha256"]["mnist_5k.csv.gz"]) == 64


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture()
def repo(tmp_path):
    """A git repo whose HEAD holds results/toy_verify from a run on this machine."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    run_suite(RunOptions(suite=SUITE, seeds=[0, 1], profile="quick", results_dir=root / "results",
                         cache_dir=tmp_path / "c", threads=1))
    _git(root, "add", "results")
    _git(root, "commit", "-q", "-m", "results")
    return root


def _recommit(repo, edit):
    metrics, info = repo / "results" / SUITE / "metrics.csv", repo / "results" / SUITE / "run.json"
    frame, run = pd.read_csv(metrics), json.loads(info.read_text())
    edit(frame, run)
    frame.to_csv(metrics, index=False)
    info.write_text(json.dumps(run))
    _git(repo, "commit", "-q", "-am", "edit")


def test_verify_reruns_and_compares_with_head(repo, tmp_path, capsys):
    assert verify(SUITE, tmp_path / "rerun", run=True, cache_dir=tmp_path / "c", repo=repo) == 0
    out = capsys.readouterr().out
    assert "same hardware signature" in out and "4 of 4 values reproduced" in out

    def bump(frame, run):  # a committed final value 0.3 higher: beyond the 0.10 tolerance, and not identical
        frame.loc[frame["metric"] == "top1_last", "value"] += [0.3, 0.0]

    _recommit(repo, bump)
    assert verify(SUITE, tmp_path / "rerun", repo=repo) == EXIT_MISS
    out = capsys.readouterr().out
    assert "NOT reproduced: 1 of 4 values differ" in out and "a seed 0 epoch - test/top1_last" in out
    # the working tree does not count: restoring the file there still compares with HEAD
    (repo / "results" / SUITE / "metrics.csv").write_text((tmp_path / "rerun" / SUITE / "metrics.csv").read_text())
    assert verify(SUITE, tmp_path / "rerun", repo=repo) == EXIT_MISS
    capsys.readouterr()
    ours = tmp_path / "rerun" / SUITE / "run.json"
    ours.write_text(json.dumps({**json.loads(ours.read_text()), "profile": "default"}))
    with pytest.raises(UserInputError, match="'default'-profile run; the committed one is 'quick'"):
        verify(SUITE, tmp_path / "rerun", repo=repo)


def test_verify_other_hardware_uses_tolerances(repo, tmp_path, capsys):
    def elsewhere(frame, run):  # committed on a machine with 4 threads, final value 0.05 off, curve 0.2 off
        run["hardware"]["threads"] = 4
        run["hardware_signature"] = hardware_signature(run["hardware"])
        frame.loc[frame["metric"] == "top1_last", "value"] += 0.05
        frame.loc[frame["metric"] == "top1", "value"] += 0.2

    _recommit(repo, elsewhere)
    assert verify(SUITE, tmp_path / "nowhere", run=True, cache_dir=tmp_path / "c", threads=1, repo=repo) == 0
    out = capsys.readouterr().out
    assert "hardware differs from the committed run (threads 4 → 1)" in out
    assert "2 of 2 values reproduced" in out  # final metrics only


def test_verify_user_errors_are_one_line(tmp_path, capsys):
    assert main(["verify", "--suite", "nope"]) == 2
    assert main(["verify", "--suite", SUITE, "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.startswith("error: ")
