"""Suite ``detr``: why DETR converges slowly, and how DAB-DETR (anchor queries) and DN-DETR (denoising) fix it.

All three share the backbone (pretrained once on the digits world, cached, frozen batch norm; frozen by default, its
features then computed once per image), width, depth, query count, optimiser, schedule (with DETR's learning-rate
drop) and post-processing; only the query formulation (learned embeddings vs 4-D anchors), the class loss that
goes with it (softmax CE vs focal) and denoising differ. Per epoch on the validation split: AP, AP50, the matching
loss, matching instability and cross-attention sparsity on a fixed probe set; at the end, test AP and the
positional attention of the queries.

The training is ``cvpdl.detection.training.fit`` (on ``cvpdl.engine.TrainLoop``), the claims and report prose
``detr_report``. A variant is one class (see ``cvpdl.detection.parts``) and one ``@REGISTRY.register`` on its
``from_config`` (a ``DetrVariant``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmark.cache import cache_key, cached_state
from benchmark.config import section_config, with_values
from benchmark.context import CellResult, RunContext
from benchmark.registry import REGISTRY, Deviation, Floor, MethodSpec, SearchParam, SuiteSpec, Sweep
from benchmark.suites.detr_report import report_sections
from cvpdl.analysis.detr_dynamics import count_modes, entropy, positional_attention
from cvpdl.checkpoint import Checkpoint
from cvpdl.data.coco import load_coco_splits, resolve_splits
from cvpdl.data.detection_split import DetectionSplit
from cvpdl.data.digits_world import GENERATOR_VERSION, DigitsWorldConfig, load_digits_split
from cvpdl.detection.backbone import STRIDE, build_body
from cvpdl.detection.backbone_pretrain import (BackbonePretrainConfig, extract_features, presence_labels,
                                               pretrain_backbone)
from cvpdl.detection.criterion import LossWeights
from cvpdl.detection.dab_detr import DabDetr, DabOptions
from cvpdl.detection.denoising import DenoisingConfig
from cvpdl.detection.detr import Detr, DetrConfig, DetrOptions
from cvpdl.detection.parts import DetectorParts
from cvpdl.detection.training import (DetectionData, DetrTrainConfig, FeatureSplit, FitHistory, evaluate, fit,
                                     fit_population)
from cvpdl.errors import NonFiniteLossError
from cvpdl.population import Member, member_recipe

log = logging.getLogger("benchmark")


@dataclass(frozen=True)
class DetrDataConfig:
    train_images: int = 2000
    val_images: int = 200
    test_images: int = 500
    probe_images: int = 64  # fixed subset of val for instability and attention probes
    # COCO split names; "" = discovered from ROOT/annotations/instances_<split>.json (no test split: val is test)
    coco_train_split: str = ""
    coco_val_split: str = ""
    coco_test_split: str = ""
    coco_image_size: int = 128


def prepare(run: RunContext) -> DetectionData:
    """The splits and the backbone every method and seed shares, pretrained once and cached. A frozen backbone
    (``train.lr_backbone`` 0) runs once per image here: the splits then carry its features."""
    data = section_config(run.cfg, "data", DetrDataConfig)
    if run.data == "coco":
        names = resolve_splits(run.data_root, data.coco_train_split, data.coco_val_split, data.coco_test_split)
        if names.test_is_val:
            log.warning(f"{run.data_root} has no annotated test split: {names.val} is both val and test")
        splits = load_coco_splits(run.data_root, names, data.coco_image_size,
                                  {"train": data.train_images, "val": data.val_images, "test": data.test_images})
        train, val, test = splits["train"], splits["val"], splits["test"]
        pretraining = train  # image-level labels of the train split (no ImageNet weights reach this machine)
    else:
        world = section_config(run.cfg, "world", DigitsWorldConfig)
        train = load_digits_split(world, "train", data.train_images, world.seed, run.cache_dir)
        val = load_digits_split(world, "val", data.val_images, world.seed, run.cache_dir)
        test = load_digits_split(world, "test", data.test_images, world.seed, run.cache_dir)
        pre = section_config(run.cfg, "backbone", BackbonePretrainConfig)
        pretraining = load_digits_split(world, "train", pre.images, pre.seed, run.cache_dir)
    probe = val.subset(list(range(min(data.probe_images, len(val)))))
    body, path, trained = _pretrained_backbone(run, pretraining)
    if section_config(run.cfg, "train", DetrTrainConfig).lr_backbone == 0:
        train, val, test, probe = (_with_features(split, body) for split in (train, val, test, probe))
    return DetectionData(train, val, test, probe, backbone=body, artifacts={path: trained})


def _pretrained_backbone(run: RunContext, split: DetectionSplit) -> tuple[nn.Module, Path, bool]:
    """The backbone (frozen batch norm) pretrained on ``split``'s image-level labels, trained once per config and
    cached; its cache file and whether it was trained here. Built under a forked RNG seeded by its own config."""
    pre = section_config(run.cfg, "backbone", BackbonePretrainConfig)
    width = section_config(run.cfg, "model", DetrConfig).backbone_width
    shaping = [run.data, str(run.data_root), run.cfg["data"]] if run.data == "coco" else [run.cfg["world"]]
    key = cache_key(GENERATOR_VERSION, run.cfg["backbone"], width, *shaping)
    path = run.cache_dir / "detr_backbone" / f"backbone_{key}.pt"
    body = build_body(width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(pre.seed)

        def train(checkpoint: Checkpoint) -> None:
            images = split.images if isinstance(split.images, np.ndarray) else \
                np.stack([split.image(i) for i in range(len(split))])
            presence = presence_labels([split.target(i)[1] for i in range(len(split))], len(split.cat_ids))
            generator = torch.Generator().manual_seed(pre.seed)
            body.load_state_dict(pretrain_backbone(width, images, presence, pre, generator, run.on_epoch,
                                                   checkpoint).state_dict())
        trained = cached_state(path, body, train)
    return body.eval().requires_grad_(False), path, trained


def _with_features(split: DetectionSplit, body: nn.Module) -> FeatureSplit:
    return FeatureSplit(split.images, split.coco, split.captions, split.novel_cat_ids,
                        features=extract_features(body, split.images))


def _pos_attention(model, grid: tuple[int, int], heads: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    model.eval()
    with torch.no_grad():
        pe = model.encoder.position_encoding(*grid, next(model.parameters()).device)  # the model's own PE
        maps = positional_attention(*model.positional_parts(pe), heads)
    modes = [count_modes(m.reshape(grid).cpu().numpy()) for m in maps]
    return maps.cpu(), entropy(maps).cpu(), modes


def _parts(run: RunContext, shared: DetectionData, method: MethodSpec) -> DetectorParts:
    """A fresh detector of ``method`` (initialised from torch's global generator) on the shared backbone: its
    weights copied in, or ``nn.Identity()`` where the splits carry its frozen features."""
    parts = REGISTRY.build(method, run.cfg).parts(len(shared.train.cat_ids))
    if isinstance(shared.train, FeatureSplit):  # the splits carry its features, computed once per image
        parts.model.encoder.backbone = nn.Identity()
    else:
        parts.model.encoder.backbone.load_state_dict(shared.backbone.state_dict())
    return parts


def run_cell(run: RunContext, shared: DetectionData, method: MethodSpec, seed: int, generator: torch.Generator
             ) -> CellResult:
    parts = _parts(run, shared, method)
    history = fit(parts, shared, section_config(run.cfg, "train", DetrTrainConfig), generator, run.device,
                  Checkpoint(run.checkpoints, "detr"), desc=method.name, on_epoch=run.on_epoch)
    return _cell(run, shared, parts, history)


def run_population(run: RunContext, shared: DetectionData, method: MethodSpec, seeds: list[int],
                   members: list[Member]) -> list[CellResult | NonFiniteLossError]:
    """The cells of ``seeds`` trained as one population (``cvpdl.detection.training.fit_population``), member i from
    seed i's initialisation and batch order, with its own loss weights (``Member.settings``, the ``loss`` section:
    each member's criterion is its own) and recipe; a member whose loss diverged gets its error."""
    runs = [replace(run, cfg=with_values(run.cfg, member.settings)) for member in members]
    parts = []
    for own, member in zip(runs, members):
        with member.rng():
            parts.append(_parts(own, shared, method))
    recipe = section_config(run.cfg, "train", DetrTrainConfig)
    histories = fit_population(parts, shared, [member_recipe(recipe, member) for member in members], members,
                               run.device, Checkpoint(run.checkpoints, "detr"), desc=method.name,
                               on_epoch=run.on_epoch)
    return [history if isinstance(history, NonFiniteLossError) else _cell(own, shared, part, history)
            for own, part, history in zip(runs, parts, histories)]


def _cell(run: RunContext, shared: DetectionData, parts: DetectorParts, history: FitHistory) -> CellResult:
    cfg, device = run.cfg, run.device
    train_cfg = section_config(cfg, "train", DetrTrainConfig)
    frozen = isinstance(shared.train, FeatureSplit)
    records = [{"epoch": epoch, "split": "val", "metric": k, "value": v}
               for epoch, values in enumerate(history.val, 1) for k, v in values.items()]
    timings = [{"epoch": epoch, "split": "train", "metric": k, "value": v}
               for epoch, values in enumerate(history.train, 1) for k, v in values.items()]
    stats, _ = evaluate(parts, shared.test, train_cfg, device)
    records += [{"epoch": None, "split": "test", "metric": k, "value": stats[k]} for k in ("AP", "AP50", "AP75")]
    records.append({"epoch": None, "split": "val", "metric": "epochs_to_target",  # read off the val curve
                    "value": history.epochs_to_target(train_cfg.target_ap50)})
    records.append({"epoch": None, "split": "model", "metric": "params",
                    "value": float(sum(p.numel() for p in parts.model.parameters())
                                   + (sum(p.numel() for p in shared.backbone.parameters()) if frozen else 0))})
    # area under the convergence curve: mean val AP50 over the epochs, a less noisy "how fast" than one endpoint
    records.append({"epoch": None, "split": "val", "metric": "AP50_auc",
                    "value": float(np.mean([values["AP50"] for values in history.val]))})
    height, width = shared.probe.image(0).shape[:2]
    grid = (height // STRIDE, width // STRIDE)
    maps, ent, modes = _pos_attention(parts.model, grid, section_config(cfg, "model", DetrConfig).heads)
    records += [{"epoch": None, "split": "probe", "metric": "pos_attn_entropy", "value": float(ent.mean())},
                {"epoch": None, "split": "probe", "metric": "pos_attn_modes", "value": float(np.mean(modes))}]
    table = pd.DataFrame([{"query": q, "y": i // grid[1], "x": i % grid[1], "value": float(maps[q, i]),
                           "entropy": float(ent[q]), "modes": modes[q]}
                          for q in range(min(8, len(maps))) for i in range(maps.shape[1])])
    if frozen:  # the detector is kept whole: images in
        parts.model.encoder.backbone = shared.backbone
    return CellResult(records, timings, {"positional_attention": table}, models={"detector": parts.model})


PROFILES = {
    "quick": {"data.train_images": 256, "data.val_images": 48, "data.test_images": 48, "data.probe_images": 16,
              "train.epochs": 2, "train.batch_size": 32, "backbone.images": 512, "backbone.epochs": 2},
    "default": {},
    "full": {"world.canvas_size": 128, "world.digit_size": [20, 48], "world.max_digits": 6,
             "data.train_images": 4000, "data.val_images": 500, "data.test_images": 1000, "train.epochs": 50,
             "train.lr_drop": 40,
             "model.d_model": 128, "model.encoder_layers": 4, "model.decoder_layers": 4, "model.num_queries": 20,
             "train.batch_size": 64},
}

@dataclass(frozen=True)
class DetrVariant:
    """A detr-family method as ``run_cell`` trains it: its architecture's ``build(architecture, classes, loss
    weights, **own)`` with the shared ``model`` and ``loss`` sections and its own sections read from the config.
    Only the query formulation and what goes with it differ between variants."""

    build: Callable[..., DetectorParts]
    model: DetrConfig
    weights: LossWeights
    own: dict[str, Any] = field(default_factory=dict)
    population = True  # every variant trains as a population (``run --population``)

    @classmethod
    def of(cls, build: Callable[..., DetectorParts], cfg: dict, **own: tuple[str, type]) -> DetrVariant:
        """``own``: keyword argument → (config section, its dataclass)."""
        return cls(build, section_config(cfg, "model", DetrConfig), section_config(cfg, "loss", LossWeights),
                   {arg: section_config(cfg, section, config) for arg, (section, config) in own.items()})

    def parts(self, num_classes: int) -> DetectorParts:
        """A fresh model (initialised from torch's global generator), its criterion and post-processing."""
        return self.build(self.model, num_classes, self.weights, **self.own)



REGISTRY.register_suite(SuiteSpec(
    name="detr",
    question="Why does DETR converge slowly, and how do DAB-DETR and DN-DETR fix it?",
    dataset="digits world detection canvases (64 px, 1-4 digits), or a COCO-format dataset",
    datasets=("digits", "coco"),
    config={"world": DigitsWorldConfig, "data": DetrDataConfig, "backbone": BackbonePretrainConfig,
            "model": DetrConfig, "train": DetrTrainConfig, "loss": LossWeights},
    profiles=PROFILES,
    prepare=prepare,
    run_cell=run_cell,
    run_population=run_population,
    baseline="detr",
    headline=(("AP50", "test"), ("AP50_auc", "val"), ("AP", "test"), ("epochs_to_target", "val"),
              ("pos_attn_entropy", "probe"), ("pos_attn_modes", "probe")),
    report_sections=report_sections,
    tuning_objective=("AP50_auc", "val"),  # the area under the val convergence curve: how fast, not only where
    floors=(Floor("epochs_to_target", "val"),),  # a detector that never reaches the target is flagged
    # DN-DETR's two claims against DAB-DETR, across its box-noise scale λ around the official 0.4 (DN-DETR's
    # ``--box_noise_scale``): does the verdict hold only at the paper's λ?
    sweeps=tuple(Sweep(claim, "dn.box_noise", (0.2, 0.4, 1.0), ("dn_dab_detr",))
                 for claim in ("instability:dn_vs_dab", "AP50_auc:dn_dab_detr:dab_detr")),
    # members may differ in the loss weights (each member's criterion is its own), DN-DETR's noise (drawn outside the
    # batched model, from each member's own config) and the recipe's lr and weight decay; not in the model's options
    # (the batched model is member 0's: its dropout)
    member_settings=("loss", "dn"),
    method_type=DetrVariant,
))
# the same space for every variant: the recipe's learning rate and weight decay and the box-loss weights (matching
# costs follow the defaults); DN-DETR adds its own noise (below)
SEARCH_SPACE = (SearchParam("train.lr", 1e-4, 2e-3, log=True),
                SearchParam("train.weight_decay", 1e-5, 1e-3, log=True),
                SearchParam("loss.bbox", 2.0, 8.0), SearchParam("loss.giou", 1.0, 4.0))
# DN-DETR's own knobs around the official λ 0.4 and flip rate 0.2 (``--box_noise_scale``, ``--label_noise_scale``):
# the convergence claim against DAB-DETR may hinge on them
DN_SEARCH_SPACE = (*SEARCH_SPACE, SearchParam("dn.box_noise", 0.1, 1.0), SearchParam("dn.label_flip", 0.0, 0.4))


# what every variant's testbed changes from the official recipe (detr ``main.py``; DAB-DETR and DN-DETR keep it)
TESTBED = (
    Deviation(what="backbone: a 5-convolution CNN (stride 8, 128 channels, frozen batch norm) pretrained once on "
                   "the digits world (which digits a canvas holds, image-level labels, train-pool digits) instead "
                   "of an ImageNet ResNet-50", why="nothing is downloaded here and a ResNet-50 does not fit the "
                   "2-core CPU budget; like the papers' ImageNet weights it is shared by every method and seed"),
    Deviation(what="backbone frozen (`train.lr_backbone` 0) instead of trained at 1e-5 (official "
                   "`--lr_backbone 1e-5`, stem and layer1 frozen); its features are computed once per image",
              why="no backbone forward or backward per step, toward the default profile's 10-minute budget",
              restore="--set train.lr_backbone=1e-5"),
    Deviation(what="learning rate 5e-4 instead of 1e-4 (`--lr`), batch 32 (official: 2–4 images per GPU on 8–16 GPUs)",
              why="a 64-wide transformer trained for a few hundred steps", restore="--set train.lr=1e-4"),
    Deviation(what="schedule: 12 epochs of 2,000 canvases (750 steps), the drop after 10 (official: "
                   "`--epochs 500 --lr_drop 400` for DETR, 50 and 40 for DAB-DETR and DN-DETR, on COCO's 118k images)",
              why="the CPU budget; enough steps for the fastest variant to plateau",
              restore="--set train.epochs=50 train.lr_drop=40"),
    Deviation(what="no data augmentation (official: random flip, multi-scale resize, random crop)",
              why="digits are not mirror-symmetric, and cached features need fixed inputs"),
    Deviation(what="size: d_model 64, 4 heads, FFN 128, 2 encoder and 3 decoder layers, 12 queries (official: 256, "
                   "8, 2048, 6 and 6, 100 queries for DETR, 300 for DAB-DETR and DN-DETR)",
              why="the CPU budget; canvases hold at most 4 digits",
              restore="--set model.d_model=256 model.heads=8 model.d_ff=2048 model.encoder_layers=6 "
                      "model.decoder_layers=6 model.num_queries=100"),
)

# every variant shares the testbed's deviations (``TESTBED``) and the search space, then adds its own
@REGISTRY.register("detr", "detr", paper="Carion et al., End-to-End Object Detection with Transformers, ECCV 2020",
                   config={"detr": DetrOptions}, search_space=SEARCH_SPACE, deviations=(*TESTBED, Deviation(
                       what="post-processing: the 30 best (query, class) pairs of 12 queries × 10 classes instead of "
                            "one detection per query (its best class, official `PostProcess`)",
                       why="the suite pins one protocol for every variant, so that only the queries differ",
                       restore="--set detr.one_detection_per_query=true")))
def detr(cfg: dict) -> DetrVariant:
    return DetrVariant.of(Detr.build, cfg, options=("detr", DetrOptions))


TOP_K = Deviation(what="post-processing keeps the 30 best (query, class) pairs instead of 100 (`num_select`)",
                  why="12 queries × 10 classes hold 120 pairs; 30 is 7.5 per image of at most 4 digits",
                  restore="--set train.top_k=100")


@REGISTRY.register("detr", "dab_detr", paper="Liu et al., DAB-DETR: Dynamic Anchor Boxes are Better Queries, ICLR 2022",
                   config={"dab": DabOptions}, search_space=SEARCH_SPACE, deviations=(*TESTBED, TOP_K))
def dab_detr(cfg: dict) -> DetrVariant:
    return DetrVariant.of(DabDetr.build, cfg, options=("dab", DabOptions))


@REGISTRY.register("detr", "dn_dab_detr",
                   paper="Li et al., DN-DETR: Accelerate DETR Training by Introducing Query DeNoising, CVPR 2022",
                   config={"dn": DenoisingConfig, "dab": DabOptions}, search_space=DN_SEARCH_SPACE,
                   deviations=(*TESTBED, TOP_K))
def dn_dab_detr(cfg: dict) -> DetrVariant:
    return DetrVariant.of(DabDetr.build, cfg, denoising=("dn", DenoisingConfig), options=("dab", DabOptions))
