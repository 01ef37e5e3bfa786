"""End-to-end: the detr suite on the quick profile writes every per-epoch and final metric and its figures."""
import json

import pandas as pd
import torch

from benchmark.cli import main
from benchmark.registry import REGISTRY
from tests.conftest import suite_folder


def test_detr_quick_run(tmp_path, cache_dir):
    code = main(["run", "--suite", "detr", "--profile", "quick", "--seeds", "0", "1", "--set", "train.epochs=3",
                 "--results-dir", str(tmp_path), "--cache-dir", str(cache_dir)])
    assert code == 0
    suite_dir = suite_folder(tmp_path, "detr")
    metrics = pd.read_csv(suite_dir / "metrics.csv")
    assert set(metrics["method"]) == {"detr", "dab_detr", "dn_dab_detr"}
    per_epoch = metrics[metrics["epoch"].notna()]
    assert {"AP", "AP50", "loss", "matching_instability", "cross_attn_neg_entropy", "cross_attn_neg_entropy_l0",
            "cross_attn_neg_entropy_l2"} <= set(per_epoch["metric"])
    assert set(per_epoch[per_epoch["metric"] == "matching_instability"]["epoch"]) == {2, 3}
    finals = metrics[metrics["epoch"].isna()]
    assert {("test", "AP"), ("test", "AP50"), ("test", "AP75"), ("val", "epochs_to_target"),
            ("probe", "pos_attn_entropy"), ("probe", "pos_attn_modes")} <= set(zip(finals["split"], finals["metric"]))
    for name in ("convergence", "matching_instability", "cross_attn_sparsity", "positional_attention"):
        assert (suite_dir / "figures" / f"{name}.png").is_file(), name
    # each cell keeps its trained detector with the config it ran with: rebuilt from the registry, it reloads
    saved = torch.load(next(suite_dir.glob("cells/*/dab_detr_seed0/models/detector.pt")), weights_only=False)
    assert (saved["method"], saved["seed"]) == ("dab_detr", 0)
    rebuilt = REGISTRY.build(REGISTRY.method("detr", "dab_detr"), saved["config"]).parts(10).model
    rebuilt.load_state_dict(saved["state_dict"])
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in saved["state_dict"].items())


def test_detr_same_seed_twice_gives_identical_metrics(tmp_path, cache_dir):
    args = ["run", "--suite", "detr", "--profile", "quick", "--methods", "detr", "dab_detr", "--seeds", "0",
            "--cache-dir", str(cache_dir)]
    assert main([*args, "--results-dir", str(tmp_path / "a")]) == 0
    assert main([*args, "--results-dir", str(tmp_path / "b")]) == 0
    assert (suite_folder(tmp_path / "a", "detr") / "metrics.csv").read_bytes() == \
        (suite_folder(tmp_path / "b", "detr") / "metrics.csv").read_bytes()


def test_a_diverging_cell_is_one_line_and_exit_3(tmp_path, cache_dir, capsys):
    code = main(["run", "--suite", "detr", "--profile", "quick", "--methods", "detr", "--seeds", "0",
                 "--set", "train.lr=1e30", "--results-dir", str(tmp_path), "--cache-dir", str(cache_dir)])
    err = capsys.readouterr().err
    assert code == 3 and "1 of 1 cells failed (detr seed 0: " in err and " is " in err and "epoch 1, step" in err
    assert not list((tmp_path / "detr").glob("**/metrics.csv"))


def test_jobs_2_gives_the_numbers_of_one_process_and_nests_its_cells(tmp_path, cache_dir):
    from mlflow.tracking import MlflowClient

    args = ["run", "--suite", "detr", "--profile", "quick", "--methods", "detr", "--seeds", "0", "1", "--set",
            "train.epochs=1", "--threads", "1", "--cache-dir", str(cache_dir)]
    assert main([*args, "--results-dir", str(tmp_path / "one")]) == 0
    # --force: the parent must not train again what its workers just trained (each cell one nested run below)
    assert main([*args, "--jobs", "2", "--force", "--results-dir", str(tmp_path / "two")]) == 0
    assert (suite_folder(tmp_path / "one", "detr") / "metrics.csv").read_bytes() == \
        (suite_folder(tmp_path / "two", "detr") / "metrics.csv").read_bytes()
    # the workers' cells are runs nested under the invocation's (not reused references)
    client = MlflowClient(f"sqlite:///{tmp_path / 'two' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cvpdl-bench/detr").experiment_id])
    [parent] = [r for r in runs if r.data.tags["role"] == "invocation"]
    cells = [r for r in runs if r.data.tags["role"] == "cell"]
    assert sorted(r.info.run_name for r in cells) == ["detr-seed0", "detr-seed1"]
    assert {r.data.tags["mlflow.parentRunId"] for r in cells} == {parent.info.run_id}
    assert not any(k.startswith("reused.") for k in parent.data.tags)
    info = json.loads((suite_folder(tmp_path / "two", "detr") / "run.json").read_text())
    assert info["threads"] == 1 and info["jobs"] == 2
    # the shared set-up was prepared by the parent, before the workers, with --threads
    assert info["prepare_seconds"] is not None and info["prepare_threads"] == 1


def test_population_trains_each_methods_seeds_together_in_worker_processes(tmp_path, cache_dir):
    """``--population 2 --jobs 2``: DAB-DETR's two seeds are one population in one worker, DN-DETR's (its noised
    queries drawn per member) one in the other; every cell is stored and reported as its own."""
    assert main(["run", "--suite", "detr", "--profile", "quick", "--methods", "dab_detr", "dn_dab_detr", "--seeds",
                 "0", "1", "--set", "train.epochs=1", "--population", "2", "--jobs", "2", "--results-dir",
                 str(tmp_path), "--cache-dir", str(cache_dir)]) == 0
    suite_dir = suite_folder(tmp_path, "detr")
    assert json.loads((suite_dir / "run.json").read_text())["population"] == {"dab_detr": 2, "dn_dab_detr": 2}
    finals = pd.read_csv(suite_dir / "metrics.csv").query("metric == 'AP50' and split == 'test'")
    assert sorted(zip(finals["method"], finals["seed"])) == [("dab_detr", 0), ("dab_detr", 1), ("dn_dab_detr", 0),
                                                             ("dn_dab_detr", 1)]
    assert finals["value"].notna().all()
