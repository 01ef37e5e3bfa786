"""A new DETR variant is one class and one registration: written into a module of its own, outside the repository,
it is listed, trained, tabulated, drawn and reported like the built-in ones."""
import importlib
import sys
import textwrap

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.registry import REGISTRY
from benchmark.runner import RunOptions, run_suite
from benchmark.suites import detr  # noqa: F401  (registers the suite the toy joins)
from paper_figures.detr_figures import convergence
from benchmark.results import read_metrics, read_tables
from paper_figures.style import SuiteInputs
from tests.conftest import report_over, suite_folder

TOY_MODULE = '''
    """DETR with half the queries: the whole of a toy variant."""
    from dataclasses import replace

    from benchmark.registry import REGISTRY
    from benchmark.suites.detr import SEARCH_SPACE, TESTBED, DetrVariant
    from cvpdl.detection.detr import Detr, DetrOptions


    class HalfQueryDetr(Detr):
        def __init__(self, cfg, num_classes, options=DetrOptions()):
            super().__init__(replace(cfg, num_queries=cfg.num_queries // 2), num_classes, options)


    @REGISTRY.register("detr", "toy_detr", paper="Toy, DETR with half the queries", config={"detr": DetrOptions},
                       search_space=SEARCH_SPACE, deviations=TESTBED)
    def toy_detr(cfg):
        return DetrVariant.of(HalfQueryDetr.build, cfg, options=("detr", DetrOptions))
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    (folder / "toy_detr_variant.py").write_text(textwrap.dedent(TOY_MODULE))
    with pytest.MonkeyPatch.context() as patch:
        # the registry refuses a second registration and has no unregister: the toy goes into a copy of the suite's
        # method table, put back afterwards, so that every other test still sees the built-in variants alone
        patch.setitem(REGISTRY._methods, "detr", dict(REGISTRY._methods["detr"]))
        patch.syspath_prepend(str(folder))
        importlib.import_module("toy_detr_variant")
        yield "toy_detr"
        del sys.modules["toy_detr_variant"]


def test_a_toy_variant_is_listed_run_drawn_and_reported(toy, tmp_path, cache_dir, capsys, monkeypatch):
    monkeypatch.setenv("CVPDL_CACHE", str(tmp_path / "cache"))  # `list` caches its catalog per version of the repo
    assert main(["list"]) == 0
    assert f"  - {toy}: Toy, DETR with half the queries" in capsys.readouterr().out

    small = ["data.train_images=64", "data.val_images=16", "data.test_images=16", "data.probe_images=8",
             "train.batch_size=16"]
    run_suite(RunOptions(suite="detr", profile="quick", methods=["detr", toy], seeds=[0], overrides=small,
                         results_dir=tmp_path, cache_dir=cache_dir))
    suite_dir = suite_folder(tmp_path, "detr")
    metrics = pd.read_csv(suite_dir / "metrics.csv")
    assert list(dict.fromkeys(metrics["method"])) == ["detr", toy]  # registry order
    params = metrics[metrics["metric"] == "params"].set_index("method")["value"]
    assert params[toy] < params["detr"]  # the toy's own class was built: fewer query embeddings
    assert set(metrics[metrics["method"] == toy]["metric"]) == set(metrics[metrics["method"] == "detr"]["metric"])
    assert f"| {toy} |" in (suite_dir / "summary.md").read_text()
    figure = convergence(SuiteInputs(read_metrics(suite_dir / "metrics.csv"), read_tables(suite_dir / "tables")))
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == ["detr", toy]
    assert {"convergence.png", "positional_attention.png"} <= {p.name for p in (suite_dir / "figures").iterdir()}
    report = report_over(suite_dir, "detr", tmp_path)
    assert f"`{toy}` val AP50" in report and f"`{toy}` matching_instability" in report
