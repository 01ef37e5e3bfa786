"""Suite ``detr``: why DETR converges slowly, and how DAB-DETR (anchor queries) and DN-DETR (denoising) fix it.

All three share backbone, width, depth, query count, optimiser, schedule and post-processing; only the query
formulation (learned embeddings vs 4-D anchors), the class loss that goes with it (softmax CE vs focal) and
denoising differ. Per epoch on the validation split: AP, AP50, the matching loss, matching instability and
cross-attention sparsity on a fixed probe set; at the end, test AP and the positional attention of the queries.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from benchmark.config import section_config
from benchmark.registry import REGISTRY, MethodSpec, Section, SuiteSpec
from benchmark.report import cell, describe, direction, paired_comparison, paired_verdict, summary_rows
from benchmark.runner import CellResult, RunContext
from cvpdl.analysis.detr_dynamics import count_modes, entropy, matching_instability, positional_attention
from cvpdl.checkpoint import Checkpoint
from cvpdl.data.coco import load_coco_split
from cvpdl.data.detection_split import DetectionSplit, resized
from cvpdl.data.digits_world import DigitsWorldConfig, load_digits_split
from cvpdl.detection.backbone import STRIDE
from cvpdl.detection.criterion import LossWeights, SetCriterion
from cvpdl.detection.dab_detr import DabDetr
from cvpdl.detection.denoising import DenoisingConfig
from cvpdl.detection.detr import Detr, DetrConfig
from cvpdl.detection.matcher import MatcherCosts
from cvpdl.detection.position_encoding import image_position_encoding
from cvpdl.detection.training import DetrTrainConfig, evaluate, probe, train_epoch

METHODS = ("detr", "dab_detr", "dn_dab_detr")


@dataclass(frozen=True)
class DetrDataConfig:
    train_images: int = 2000
    val_images: int = 200
    test_images: int = 500
    probe_images: int = 64  # fixed subset of val for instability and attention probes
    coco_train_split: str = "train2017"
    coco_val_split: str = "val2017"
    coco_image_size: int = 128


@dataclass
class DetrShared:
    train: DetectionSplit
    val: DetectionSplit
    test: DetectionSplit
    probe: DetectionSplit


def prepare(run: RunContext) -> DetrShared:
    data = section_config(run.cfg, "data", DetrDataConfig)
    if run.data == "coco":
        train = resized(load_coco_split(run.data_root, data.coco_train_split), data.coco_image_size)
        val = resized(load_coco_split(run.data_root, data.coco_val_split), data.coco_image_size)
        test = val
    else:
        world = section_config(run.cfg, "world", DigitsWorldConfig)
        train = load_digits_split(world, "train", data.train_images, world.seed, run.cache_dir)
        val = load_digits_split(world, "val", data.val_images, world.seed, run.cache_dir)
        test = load_digits_split(world, "test", data.test_images, world.seed, run.cache_dir)
    return DetrShared(train, val, test, val.subset(list(range(min(data.probe_images, len(val))))))


def _pos_attention(model, grid: tuple[int, int], heads: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    model.eval()
    with torch.no_grad():
        pe = image_position_encoding(*grid, model.encoder.d_model, next(model.parameters()).device)
        maps = positional_attention(*model.positional_parts(pe), heads)
    modes = [count_modes(m.reshape(grid).cpu().numpy()) for m in maps]
    return maps.cpu(), entropy(maps).cpu(), modes


def run_cell(run: RunContext, shared: DetrShared, method: MethodSpec, seed: int, generator: torch.Generator
             ) -> CellResult:
    cfg, device = run.cfg, run.device
    train_cfg = section_config(cfg, "train", DetrTrainConfig)
    model = method.build(cfg)(len(shared.train.cat_ids)).to(device)
    weights = section_config(cfg, "loss", LossWeights)
    criterion = SetCriterion(len(shared.train.cat_ids), weights,
                             MatcherCosts(focal=model.focal, focal_alpha=weights.focal_alpha,
                                          focal_gamma=weights.focal_gamma))
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    trained = DistributedDataParallel(model) if torch.distributed.is_initialized() else model  # torchrun
    records, timings, previous, to_target, done = [], [], None, float("nan"), 0
    checkpoint, stateful = Checkpoint(run.checkpoints, "detr"), {"model": model, "optimizer": optimizer}
    if (progress := checkpoint.restore(stateful, generator)) is not None:
        records, timings, previous, to_target, done = (progress[k] for k in ("records", "timings", "previous",
                                                                            "to_target", "epoch"))
    num_gt = sum(len(shared.probe.target(i)[1]) for i in range(len(shared.probe)))
    for epoch in tqdm(range(done + 1, train_cfg.epochs + 1), desc=method.name, unit="epoch", leave=False,
                      initial=done, total=train_cfg.epochs):
        started = time.perf_counter()
        train_epoch(trained, criterion, shared.train, train_cfg, optimizer, generator, device, epoch)
        seconds = time.perf_counter() - started
        timings += [{"epoch": epoch, "split": "train", "metric": "train_seconds", "value": seconds},
                    {"epoch": epoch, "split": "train", "metric": "train_images_per_second",
                     "value": len(shared.train) // train_cfg.batch_size * train_cfg.batch_size / seconds}]
        stats, val_loss = evaluate(model, criterion, shared.val, train_cfg, device)
        assignments, neg_entropy = probe(model, criterion, shared.probe, device)
        values = {"AP": stats["AP"], "AP50": stats["AP50"], "loss": val_loss,
                  "cross_attn_neg_entropy": float(np.mean(neg_entropy)),
                  **{f"cross_attn_neg_entropy_l{k}": v for k, v in enumerate(neg_entropy)}}
        if previous is not None:
            values["matching_instability"] = matching_instability(previous, assignments, num_gt)
        previous = assignments
        if np.isnan(to_target) and stats["AP50"] >= train_cfg.target_ap50:
            to_target = float(epoch)
        records += [{"epoch": epoch, "split": "val", "metric": k, "value": v} for k, v in values.items()]
        checkpoint.save(stateful, generator, epoch=epoch, records=records, timings=timings, previous=previous,
                        to_target=to_target)
    stats, _ = evaluate(model, criterion, shared.test, train_cfg, device)
    records += [{"epoch": None, "split": "test", "metric": k, "value": stats[k]} for k in ("AP", "AP50", "AP75")]
    records.append({"epoch": None, "split": "test", "metric": "epochs_to_target", "value": to_target})
    # area under the convergence curve: mean val AP50 over the epochs, a less noisy "how fast" than one endpoint
    curve = [r["value"] for r in records if r["split"] == "val" and r["metric"] == "AP50"]
    records.append({"epoch": None, "split": "val", "metric": "AP50_auc", "value": float(np.mean(curve))})
    height, width = shared.probe.image(0).shape[:2]
    grid = (height // STRIDE, width // STRIDE)
    maps, ent, modes = _pos_attention(model, grid, section_config(cfg, "model", DetrConfig).heads)
    records += [{"epoch": None, "split": "probe", "metric": "pos_attn_entropy", "value": float(ent.mean())},
                {"epoch": None, "split": "probe", "metric": "pos_attn_modes", "value": float(np.mean(modes))}]
    table = pd.DataFrame([{"query": q, "y": i // grid[1], "x": i % grid[1], "value": float(maps[q, i]),
                           "entropy": float(ent[q]), "modes": modes[q]}
                          for q in range(min(8, len(maps))) for i in range(maps.shape[1])])
    return CellResult(records, timings, {"positional_attention": table})


def _first_last(frame: pd.DataFrame, method: str, metric: str) -> tuple[int, float, int, float] | None:
    """(first epoch, its mean over seeds, last epoch, its mean) of a per-epoch metric."""
    rows = frame[(frame["method"] == method) & (frame["metric"] == metric) & frame["epoch"].notna()]
    if rows.empty:
        return None
    by_epoch = rows.groupby("epoch")["value"].mean()
    return int(by_epoch.index[0]), float(by_epoch.iloc[0]), int(by_epoch.index[-1]), float(by_epoch.iloc[-1])


def _a1_verdict(frame: pd.DataFrame, rows: pd.DataFrame, methods: list[str]) -> str:
    parts = []
    trend = {m: _first_last(frame, m, "matching_instability") for m in methods}
    falling = [m for m, t in trend.items() if t and t[3] < t[1]]
    parts.append(f"instability falls from the first to the last epoch for {', '.join(falling) or 'no method'}")
    sparse = [m for m in methods if (t := _first_last(frame, m, "cross_attn_neg_entropy")) and t[3] > t[1]]
    parts.append(f"cross-attention keeps getting sparser to the last epoch for {', '.join(sparse) or 'no method'}")
    detr, dab = cell(rows, "detr", "pos_attn_entropy", "probe"), cell(rows, "dab_detr", "pos_attn_entropy", "probe")
    if detr is not None and dab is not None:
        separated = dab["ci_high"] < detr["ci_low"]
        parts.append("DAB's positional attention has lower entropy than DETR's" +
                     (" (intervals separated)" if separated else " only in the mean (intervals overlap)"))
    return "Measured: " + "; ".join(parts) + ". Compare with the literature above claim by claim."


def _a2_verdict(frame: pd.DataFrame, methods: list[str]) -> str:
    """The papers' ordering DN-DETR > DAB-DETR > DETR, step by step, on the final test AP50 and on the area under
    the val AP50 curve (convergence speed)."""
    pairs = [(m, b) for m, b in (("dab_detr", "detr"), ("dn_dab_detr", "dab_detr")) if m in methods and b in methods]
    parts = []
    criteria = (("AP50", "test", "Final test AP50"), ("AP50_auc", "val", "Area under the val AP50 curve"))
    for metric, split, what in criteria:
        sides = [direction(paired_comparison(frame, m, b, metric, split)) for m, b in pairs]
        finals = frame[frame["epoch"].isna() & (frame["metric"] == metric) & (frame["split"] == split)]
        means = finals.groupby("method")["value"].mean()
        ordered = all(means.get(m, float("nan")) > means.get(b, float("nan")) for m, b in pairs)
        if sides and all(side == "higher" for side in sides):
            parts.append(f"{what}: yes, every step of the ordering is significant")
        else:
            steps = ", ".join(f"{m} vs {b} {side}" for (m, b), side in zip(pairs, sides))
            parts.append(f"{what}: mean " + ("ordered as in the papers" if ordered else "not ordered as in the papers")
                         + f", but not every step significant ({steps})")
    return "; ".join(parts) + "."


def _curve_trend(frame: pd.DataFrame, method: str, metric: str) -> str:
    t = _first_last(frame, method, metric)
    return "not measured" if t is None else f"{t[1]:.3f} at epoch {t[0]} → {t[3]:.3f} at epoch {t[2]}"


def report_sections(frame: pd.DataFrame, timings: pd.DataFrame | None) -> list[Section]:
    rows = summary_rows(frame)
    methods = [m for m in METHODS if m in set(frame["method"])]
    instability = [f"`{m}` matching instability {_curve_trend(frame, m, 'matching_instability')}." for m in methods]
    if "dn_dab_detr" in methods and "dab_detr" in methods:
        last = frame[(frame["metric"] == "matching_instability") & frame["epoch"].notna()]
        mean_is = last.groupby(["method", "seed"])["value"].mean().rename("value").reset_index()
        a = mean_is[mean_is["method"] == "dn_dab_detr"]
        b = mean_is[mean_is["method"] == "dab_detr"]
        pairs = a.merge(b, on="seed", suffixes=("", "_b"))
        if len(pairs):
            instability.append(f"Mean instability over epochs, `dn_dab_detr` {a['value'].mean():.3f} vs `dab_detr` "
                               f"{b['value'].mean():.3f} (seeds {sorted(pairs['seed'].tolist())}).")
    sparsity = [f"`{m}` cross-attention negative entropy {_curve_trend(frame, m, 'cross_attn_neg_entropy')}."
                for m in methods]
    positional = [f"`{m}` positional attention of the learned queries: entropy "
                  f"{describe(rows, m, 'pos_attn_entropy', 'probe')}, "
                  f"modes {describe(rows, m, 'pos_attn_modes', 'probe')}."
                  for m in methods]
    convergence = [f"`{m}` val AP50 {_curve_trend(frame, m, 'AP50')}; test AP50 {describe(rows, m, 'AP50', 'test')}; "
                   f"epochs to the target AP50 {describe(rows, m, 'epochs_to_target', 'test')}; "
                   f"area under the val AP50 curve {describe(rows, m, 'AP50_auc', 'val')}." for m in methods]
    for m, base in (("dab_detr", "detr"), ("dn_dab_detr", "dab_detr"), ("dn_dab_detr", "detr")):
        if m in methods and base in methods:
            convergence.append(f"`{m}` vs `{base}`: test AP50 {paired_verdict(frame, m, base, 'AP50', 'test')}; "
                               f"area under the val AP50 curve {paired_verdict(frame, m, base, 'AP50_auc', 'val')}.")
    return [
        Section("A1. Why do DETR-family models converge slowly?",
                "Two explanations: bipartite matching is unstable — a query's matched ground truth keeps changing "
                "between epochs, mostly early (DN-DETR, Sun et al. 2020); and decoder cross-attention becomes sparse "
                "only slowly (Sun et al.). DAB-DETR adds that a learned query's positional part does not line up with "
                "the image's positional encoding, giving multi-mode or near-uniform positional attention.",
                instability + sparsity + positional,
                ["matching_instability", "cross_attn_sparsity", "positional_attention"],
                _a1_verdict(frame, rows, methods)),
        Section("A2. How do DAB-DETR and DN-DETR address it?",
                "DAB-DETR makes queries explicit 4-D anchor boxes refined layer by layer, whose sine embedding is the "
                "positional query (with width/height-modulated attention): a clear positional prior per query. "
                "DN-DETR feeds noised ground truths as extra queries that must reconstruct the originals without "
                "matching: stable targets that shortcut box-offset learning; it reports faster convergence and "
                "lower instability.", convergence, ["convergence"], _a2_verdict(frame, methods)),
    ]


PROFILES = {
    "quick": {"data.train_images": 256, "data.val_images": 48, "data.test_images": 48, "data.probe_images": 16,
              "train.epochs": 2, "train.batch_size": 32},
    "default": {},
    "full": {"world.canvas_size": 128, "world.digit_size": [20, 48], "world.max_digits": 6,
             "data.train_images": 4000, "data.val_images": 500, "data.test_images": 1000, "train.epochs": 50,
             "model.d_model": 128, "model.encoder_layers": 4, "model.decoder_layers": 4, "model.num_queries": 20,
             "train.batch_size": 64},
}

REGISTRY.register_suite(SuiteSpec(
    name="detr",
    question="Why does DETR converge slowly, and how do DAB-DETR and DN-DETR fix it?",
    dataset="digits world detection canvases (64 px, 1-4 digits), or COCO (--data coco)",
    config={"world": DigitsWorldConfig, "data": DetrDataConfig, "model": DetrConfig, "train": DetrTrainConfig,
            "loss": LossWeights},
    profiles=PROFILES,
    prepare=prepare,
    run_cell=run_cell,
    baseline="detr",
    headline=(("AP50", "test"), ("AP50_auc", "val"), ("AP", "test"), ("epochs_to_target", "test"),
              ("pos_attn_entropy", "probe"), ("pos_attn_modes", "probe")),
    report_sections=report_sections,
))
REGISTRY.register_method(MethodSpec(
    name="detr", suite="detr", paper="Carion et al., End-to-End Object Detection with Transformers, ECCV 2020",
    build=lambda cfg: lambda classes: Detr(section_config(cfg, "model", DetrConfig), classes)))
REGISTRY.register_method(MethodSpec(
    name="dab_detr", suite="detr", paper="Liu et al., DAB-DETR: Dynamic Anchor Boxes are Better Queries, ICLR 2022",
    build=lambda cfg: lambda classes: DabDetr(section_config(cfg, "model", DetrConfig), classes)))
REGISTRY.register_method(MethodSpec(
    name="dn_dab_detr", suite="detr",
    paper="Li et al., DN-DETR: Accelerate DETR Training by Introducing Query DeNoising, CVPR 2022",
    build=lambda cfg: lambda classes: DabDetr(section_config(cfg, "model", DetrConfig), classes,
                                              section_config(cfg, "dn", DenoisingConfig)),
    config={"dn": DenoisingConfig}))
