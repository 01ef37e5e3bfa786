"""The kd method contract: a new method is one ``Distiller`` file plus one ``@REGISTRY.register`` entry, and then it
is listed, run, tabulated, drawn and reported like the built-in ones."""
import importlib
import sys
import textwrap

import matplotlib.pyplot as plt
import pandas as pd
import pytest

import benchmark.suites  # noqa: F401  (registers the suites)
from benchmark.cli import main
from benchmark.registry import REGISTRY
from benchmark.runner import RunOptions, run_suite
from paper_figures.kd_figures import kd_accuracy
from benchmark.results import read_metrics, read_tables
from paper_figures.style import SuiteInputs
from tests.conftest import report_over, suite_folder

TOY = "toy_logit_kd"
TOY_MODULE = '''
"""A toy kd method: cross-entropy plus a small logit-matching term."""
from dataclasses import dataclass

import torch.nn.functional as F

from benchmark.registry import REGISTRY
from benchmark.suites.kd import OPTIMIZER_SPACE, KdMethod
from cvpdl.distill.base import Distiller
from cvpdl.losses import distillation_kl


@dataclass(frozen=True)
class ToyConfig:
    kd_weight: float = 0.1


class ToyLogitKD(Distiller):
    def losses(self, x, y, teacher_out):
        logits = self.student(x)["logits"]
        return {"loss_ce": F.cross_entropy(logits, y),
                "loss_toy": self.cfg.kd_weight * distillation_kl(logits, teacher_out["logits"], 2.0)}


@REGISTRY.register("kd", "toy_logit_kd", paper="a test-only toy", config={"toy_logit_kd": ToyConfig},
                   search_space=OPTIMIZER_SPACE)
def toy_logit_kd(cfg):
    return KdMethod.of(ToyLogitKD, cfg, "toy_logit_kd", ToyConfig)
'''


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """Imports the toy's module from a temporary file; afterwards the registry and ``sys.modules`` are as before,
    so no other test sees the toy (the registry itself refuses a second registration of the name)."""
    monkeypatch.setitem(REGISTRY._methods, "kd", dict(REGISTRY._methods["kd"]))
    (tmp_path / "toy_kd_method.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("toy_kd_method")
    yield REGISTRY.method("kd", TOY)
    sys.modules.pop("toy_kd_method", None)


def test_a_registered_distiller_is_listed_run_drawn_and_reported(toy_method, tmp_path, cache_dir, monkeypatch,
                                                                   capsys):
    assert toy_method.config and TOY in toy_method.config  # its section, reachable with --set toy_logit_kd.kd_weight
    monkeypatch.setenv("CVPDL_CACHE", str(tmp_path / "catalog-cache"))  # `list` caches its answer: not the user's
    assert main(["list"]) == 0
    assert f"  - {TOY}: a test-only toy" in capsys.readouterr().out

    results = tmp_path / "results"
    run_suite(RunOptions(suite="kd", profile="quick", methods=["student_baseline", TOY], seeds=[0],
                         overrides=["train.epochs=1"], results_dir=results, cache_dir=cache_dir))
    suite_dir = suite_folder(results, "kd")
    metrics = pd.read_csv(suite_dir / "metrics.csv")
    assert list(dict.fromkeys(metrics["method"])) == ["student_baseline", TOY]
    toy = metrics[metrics["method"] == TOY]
    assert {"top1_last", "teacher_top1", "loss_ce", "loss_toy", "intrinsic_dim"} <= set(toy["metric"])
    summary = (suite_dir / "summary.md").read_text()
    assert f"| {TOY} | top1_last | test |" in summary  # final metrics
    assert f"| `{TOY}` − `student_baseline` test top-1 (last epoch) |" in summary  # its claim against the baseline
    assert (suite_dir / "figures" / "kd_accuracy.png").is_file()
    figure = kd_accuracy(SuiteInputs(read_metrics(suite_dir / "metrics.csv"), read_tables(suite_dir / "tables")))
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["student_baseline", TOY]
    plt.close(figure)
    assert f"- `{TOY}` top-1 (last epoch) " in report_over(suite_dir, "kd", tmp_path)
