"""The training loop, evaluation and per-epoch probes shared by every DETR-family variant."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cvpdl import ddp
from cvpdl.analysis.detr_dynamics import assignment_vector, matching_instability, negative_entropy
from cvpdl.checkpoint import Checkpoint
from cvpdl.data.detection_split import DetectionSplit
from cvpdl.detection.backbone import normalise
from cvpdl.detection.box_ops import xyxy_to_cxcywh
from cvpdl.detection.criterion import SetCriterion
from cvpdl.detection.denoising import attention_mask, build_dn_queries
from cvpdl.detection.matcher import hungarian_match
from cvpdl.detection.parts import DetectorParts
from cvpdl.engine import Batch, EpochEnd, EpochStats, StepLosses, TrainLoop
from cvpdl.errors import NonFiniteLossError
from cvpdl.evaluation.coco_eval import evaluate_detections
from cvpdl.population import Member, Population, PopulationLoop, recipe_optimizer, shared_recipe
from cvpdl.progress import EpochCallback, no_report


@dataclass(frozen=True)
class DetrTrainConfig:
    """Official recipe (facebookresearch/detr ``main.py``): AdamW, weight decay 1e-4, gradient clipping 0.1, the
    backbone at its own learning rate (``--lr_backbone``; 0 freezes it, ``train_backbone = lr_backbone > 0``) and
    one learning-rate drop by 10 (``StepLR(optimizer, lr_drop)``, stepped per epoch)."""

    epochs: int = 12
    batch_size: int = 32
    lr: float = 5e-4
    lr_backbone: float = 0.0
    lr_drop: int = 10  # epochs before the drop (0: none)
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    top_k: int = 30  # detections kept per image
    target_ap50: float = 0.1  # epochs_to_target: first epoch whose val AP50 reaches this


@dataclass
class FeatureSplit(DetectionSplit):
    """A split whose frozen backbone's feature maps (N, C, h, w) were computed once: its batches carry them instead
    of pixels (the detector's backbone is then ``nn.Identity()``)."""

    features: torch.Tensor | None = None


@dataclass
class DetectionData:
    """The splits of a comparison; ``probe``: a fixed subset of val for the per-epoch matching and attention probes.
    ``backbone``: the pretrained backbone every method starts from (frozen batch norm, eval mode; the splits are
    ``FeatureSplit``s when it stays frozen); ``artifacts``: the set-up's cached files, True where trained here."""

    train: DetectionSplit
    val: DetectionSplit
    test: DetectionSplit
    probe: DetectionSplit
    backbone: nn.Module | None = None
    artifacts: dict[Path, bool] = field(default_factory=dict)


@dataclass
class FitHistory:
    """Per epoch (1, 2, …): the val metrics and probes, and the training time. Plain lists and dicts of floats, so
    that a checkpoint holds them under ``weights_only``."""

    val: list[dict[str, float]] = field(default_factory=list)  # AP, AP50, loss, cross-attention, instability
    train: list[dict[str, float]] = field(default_factory=list)  # train_seconds, train_images_per_second

    def epochs_to_target(self, ap50: float) -> float:
        """The first epoch whose val AP50 reaches ``ap50``; NaN (censored) when none does."""
        return next((float(epoch) for epoch, values in enumerate(self.val, 1) if values["AP50"] >= ap50), float("nan"))


def image_size(split: DetectionSplit) -> tuple[int, int]:
    """(height, width) of the split's images (one size per split: its batches are stacked)."""
    return tuple(split.image(0).shape[:2])


def batch_inputs(split: DetectionSplit, indices: list[int], device: torch.device) -> tuple[torch.Tensor, list[dict]]:
    """The detector's inputs (normalised images, or a frozen backbone's cached features) and targets (contiguous
    labels, cxcywh boxes in [0, 1]). Pixels in memory are gathered in one indexing and the boxes of the batch
    converted in one go (elementwise: the same numbers as image by image, each image's target a view of the
    batch's)."""
    if getattr(split, "features", None) is not None:
        inputs = split.features[indices].to(device)
    elif isinstance(split.images, np.ndarray):
        inputs = normalise(torch.from_numpy(split.images[indices]).to(device))
    else:
        inputs = normalise(torch.stack([torch.from_numpy(split.image(i)) for i in indices]).to(device))
    h, w = image_size(split)
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
    boxes, labels = zip(*(split.target(i) for i in indices))
    sizes = [len(x) for x in labels]
    all_boxes = xyxy_to_cxcywh(torch.as_tensor(np.concatenate(boxes), device=device).reshape(-1, 4)) / scale
    all_labels = torch.as_tensor(np.concatenate(labels), device=device)
    return inputs, [{"labels": x, "boxes": b} for x, b in zip(all_labels.split(sizes), all_boxes.split(sizes))]


def step_losses(model, criterion: SetCriterion, split: DetectionSplit, generator: torch.Generator,
                device: torch.device) -> StepLosses:
    """One step of detection training: the model (DDP-wrapped by the caller) on this rank's share of the batch,
    the criterion's named losses."""
    def losses(batch: Batch) -> dict[str, torch.Tensor]:
        inputs, targets = batch_inputs(split, batch.mine, device)
        outputs = model(inputs, targets, generator)
        # NaN predictions would break the matcher before the loss exists; a sum is NaN/inf iff an entry is (one sync)
        ddp.check_finite_on_all_ranks(torch.stack([p.sum() for p in outputs["logits"] + outputs["boxes"]]),
                                      batch.where, "a prediction")
        return criterion(outputs, targets)[0]
    return losses


def detr_loop(model: nn.Module, split: DetectionSplit, cfg: DetrTrainConfig, generator: torch.Generator,
              name: str = "detr", checkpoint: Checkpoint | None = None, on_epoch: EpochCallback = no_report
              ) -> TrainLoop:
    """The official recipe as a ``TrainLoop``: AdamW (``optimizer_for``), the learning rate ÷ 10 after ``lr_drop``
    epochs (``StepLR`` stepped per epoch; no drop: a step size past the last epoch), gradient clipping, full
    batches only (a DN-DETR batch's noise draws as many numbers as its boxes: rank 0's order on every rank)."""
    optimizer = optimizer_for(model, cfg)
    return TrainLoop(name, model, optimizer, generator, len(split), cfg.batch_size, cfg.epochs,
                     steps_per_epoch=len(split) // cfg.batch_size,
                     epoch_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_drop or cfg.epochs + 1),
                     clip_parameters=list(model.parameters()), clip_norm=cfg.grad_clip, checkpoint=checkpoint,
                     on_epoch=on_epoch)


@torch.no_grad()
def evaluate(parts: DetectorParts, split: DetectionSplit, cfg: DetrTrainConfig, device: torch.device
             ) -> tuple[dict[str, float], float]:
    """COCO stats of the pinned top-k post-processing, and the mean matching loss (no denoising) on ``split``."""
    parts.model.eval()
    detections, losses = [], []
    for start in range(0, len(split), 64):
        indices = list(range(start, min(start + 64, len(split))))
        inputs, targets = batch_inputs(split, indices, device)
        out = parts.model(inputs)
        losses.append(sum(parts.criterion(out, targets)[0].values()).item() * len(indices))
        for i, (scores, labels, boxes) in zip(indices, parts.postprocess(out, image_size(split), cfg.top_k)):
            for s, c, (x0, y0, x1, y1) in zip(scores.tolist(), labels.tolist(), boxes.tolist()):
                detections.append({"image_id": split.image_ids[i], "category_id": split.cat_ids[c],
                                   "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s})
    return evaluate_detections(split.coco, detections), float(np.sum(losses) / len(split))


@torch.no_grad()
def probe(parts: DetectorParts, split: DetectionSplit, device: torch.device
          ) -> tuple[list[torch.Tensor], list[float]]:
    """On the fixed probe set, eval mode: each image's last-layer query→GT assignment, and the negative entropy
    of the decoder cross-attention per layer (averaged over heads, queries, images)."""
    parts.model.eval()
    inputs, targets = batch_inputs(split, list(range(len(split))), device)
    out = parts.model(inputs)
    indices = hungarian_match(out["logits"][-1], out["boxes"][-1], targets, parts.criterion.costs)
    q = out["logits"][-1].shape[1]
    return [assignment_vector(ix, q) for ix in indices], [negative_entropy(w) for w in out["cross_attn"]]


def optimizer_for(model: nn.Module, cfg: DetrTrainConfig) -> torch.optim.AdamW:
    """AdamW with the backbone (``encoder.backbone``) in its own group at ``lr_backbone``, frozen at 0 (official
    ``param_dicts`` and ``train_backbone``)."""
    return _adamw(model.named_parameters(), cfg)


def _adamw(named: Iterable[tuple[str, torch.Tensor]], cfg: DetrTrainConfig) -> torch.optim.AdamW:
    """``optimizer_for`` over (name, parameter) pairs: a model's, or a population's stacked ones."""
    return torch.optim.AdamW(_param_groups(named, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _param_groups(named: Iterable[tuple[str, torch.Tensor]], cfg: DetrTrainConfig) -> list[dict]:
    """The official param groups: the backbone at ``lr_backbone`` (frozen at 0), the rest at ``lr``."""
    named = list(named)
    backbone = [p for n, p in named if n.startswith("encoder.backbone.")]
    rest = [p for n, p in named if not n.startswith("encoder.backbone.")]
    groups = [{"params": rest, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    if cfg.lr_backbone > 0:
        groups.append({"params": backbone, "lr": cfg.lr_backbone, "weight_decay": cfg.weight_decay})
    else:
        for p in backbone:
            p.requires_grad_(False)
    return groups


def fit(parts: DetectorParts, data: DetectionData, cfg: DetrTrainConfig, generator: torch.Generator,
        device: torch.device, checkpoint: Checkpoint = Checkpoint(None, "detr"), desc: str = "detr",
        on_epoch: EpochCallback = no_report) -> FitHistory:
    """Train ``parts.model`` on ``device`` (``detr_loop``); after every epoch evaluate on val and probe matching
    and cross-attention on ``data.probe``. Under torchrun the model trains wrapped in DDP; evaluation and probes
    read the bare model on every rank."""
    model = parts.model.to(device)
    loop = detr_loop(model, data.train, cfg, generator, desc, checkpoint, on_epoch)
    state = loop.run(step_losses(ddp.wrap(model), parts.criterion, data.train, generator, device),
                     _epoch_end(parts, data, cfg, device), _fresh_state())
    return FitHistory(state["val"], state["train"])


def _fresh_state() -> dict:
    return {"val": [], "train": [], "previous": None}


def _epoch_end(parts: DetectorParts, data: DetectionData, cfg: DetrTrainConfig, device: torch.device) -> EpochEnd:
    """What the end of an epoch records for one detector: val COCO stats and loss, the cross-attention and
    matching probes, the training time."""
    num_gt = sum(len(data.probe.target(i)[1]) for i in range(len(data.probe)))

    def end_epoch(epoch: int, stats: EpochStats, state: dict) -> dict[str, float]:
        state["train"].append({"train_seconds": stats.seconds,
                               "train_images_per_second": stats.samples / stats.seconds})
        ap, val_loss = evaluate(parts, data.val, cfg, device)
        assignments, neg_entropy = probe(parts, data.probe, device)
        values = {"AP": ap["AP"], "AP50": ap["AP50"], "loss": val_loss,
                  "cross_attn_neg_entropy": float(np.mean(neg_entropy)),
                  **{f"cross_attn_neg_entropy_l{k}": v for k, v in enumerate(neg_entropy)}}
        if state["previous"] is not None:
            values["matching_instability"] = matching_instability(state["previous"], assignments, num_gt)
        state["previous"] = assignments
        state["val"].append(values)
        return {**{f"val/{k}": v for k, v in values.items()},
                **{f"train/{k}": v for k, v in state["train"][-1].items()}}
    return end_epoch


PREDICTIONS = ("logits", "boxes")  # the matching queries' predictions, per decoder layer


def _predictions(out: dict) -> dict:
    """What a population's batched forward returns (``vmap`` returns tensors only): the matching queries'
    predictions and, with denoising, the denoising queries'."""
    picked = {key: out[key] for key in PREDICTIONS}
    if "dn" in out:
        picked.update(dn_logits=out["dn"]["logits"], dn_boxes=out["dn"]["boxes"])
    return picked


def _denoising_queries(drawn: list[tuple], groups: int, num_classes: int, num_matching: int, device: torch.device
                       ) -> tuple[tuple[torch.Tensor, ...], list[dict]]:
    """Every member's ``build_dn_queries`` stacked: each group padded to the population's largest group size G
    (labels ``num_classes``, boxes 0.5, invalid), the added slots masked as keys for every query, so that each
    member's queries attend to what they attend to alone; the reconstruction indices moved to the padded layout.
    Returns (labels, boxes, valid, masks) with a leading member dimension, and each member's bookkeeping."""
    size = max(group_size for *_, group_size in drawn)
    stacked, books = [[], [], [], []], []
    for labels, boxes, valid, indices, group_size in drawn:
        b = len(labels)
        padded = (torch.full((b, groups, size), num_classes, dtype=labels.dtype, device=device),
                  torch.full((b, groups, size, 4), 0.5, dtype=boxes.dtype, device=device),
                  torch.zeros((b, groups, size), dtype=torch.bool, device=device))
        for target, source in zip(padded, (labels, boxes, valid)):
            target[:, :, :group_size] = source.view(b, groups, group_size, *source.shape[2:])
        mask = attention_mask(groups, size, num_matching, device)
        added = torch.zeros(groups, size, dtype=torch.bool, device=device)
        added[:, group_size:] = True
        mask[:, :groups * size] |= added.flatten()
        for part, value in zip(stacked, (padded[0].view(b, -1), padded[1].view(b, -1, 4), padded[2].view(b, -1),
                                         mask)):
            part.append(value)
        books.append({"pad": groups * size, "groups": groups,
                      "indices": [(q // group_size * size + q % group_size, t) for q, t in indices]})
    return tuple(torch.stack(part) for part in stacked), books


def fit_population(parts: list[DetectorParts], data: DetectionData, cfgs: list[DetrTrainConfig],
                   members: list[Member], device: torch.device, checkpoint: Checkpoint = Checkpoint(None, "detr"),
                   desc: str = "detr", on_epoch: EpochCallback = no_report) -> list[FitHistory | NonFiniteLossError]:
    """``fit`` for a population (``cvpdl.population``): detector i is member i's (its own initialisation, batch order
    and criterion), all trained as one batched model with ``fit``'s optimiser, schedule and per-member gradient
    clipping, member i with recipe ``cfgs[i]`` (the recipes may differ in lr and weight decay: each member's slices in
    param groups of their own, ``member_slices``); the Hungarian matching and the criterion run per (member, image)
    on the batched predictions. One detector goes through ``fit`` itself. DN-DETR's noised queries are drawn outside
    the batched forward, from each member's own generator and noise config in the order its run alone draws them,
    and padded to the population's largest group (masked, so each member attends as alone). A member whose loss
    diverged gets its error."""
    if len(parts) == 1:
        return [fit(parts[0], data, cfgs[0], members[0].generator, device, checkpoint, desc, on_epoch)]
    cfg = shared_recipe(cfgs)
    models = [p.model.to(device) for p in parts]
    for model in models:
        _adamw(model.named_parameters(), cfg)  # freezes the backbone where lr_backbone is 0, before stacking
    denoising = getattr(models[0], "denoising", None)
    if denoising is None:
        population = Population(models, lambda model, inputs: _predictions(model(inputs)))
    else:  # DN-DETR: each member's noised queries drawn from its own generator, outside vmap
        population = Population(models, lambda model, inputs, *queries: _predictions(
            model.forward_denoising(inputs, *queries)))
    population.template.encoder.channels_last = False  # not implemented under vmap for a batched input
    optimizer = recipe_optimizer(population, cfgs, _param_groups, lambda groups: torch.optim.AdamW(
        groups, lr=cfg.lr, weight_decay=cfg.weight_decay))
    loop = PopulationLoop(desc, population, optimizer, members, len(data.train), cfg.batch_size, cfg.epochs,
                          steps_per_epoch=len(data.train) // cfg.batch_size,
                          epoch_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_drop or cfg.epochs + 1),
                          clip_norm=cfg.grad_clip, checkpoint=checkpoint, on_epoch=on_epoch)
    constant: dict = {}  # the outputs that are no tensors (the feature grid): the same for every member

    def losses(batches: list[Batch]) -> dict[str, torch.Tensor]:
        batched = [batch_inputs(data.train, batch.mine, device) for batch in batches]
        if not constant:
            with torch.no_grad():
                out = models[0](batched[0][0][:1])
            constant.update({k: v for k, v in out.items() if k not in PREDICTIONS and k != "cross_attn"})
        queries, books = (), [None] * len(batched)
        if denoising is not None:
            queries, books = _denoising_queries(
                [build_dn_queries(targets, model.denoising, model.num_classes, member.generator)  # its own noise
                 for (_, targets), member, model in zip(batched, members, models)], denoising.groups,
                models[0].num_classes, models[0].anchors.num_embeddings, device)
        outputs = population(torch.stack([inputs for inputs, _ in batched]), *queries)
        terms = []
        for index, (_, targets) in enumerate(batched):
            own = {key: [layer[index] for layer in outputs[key]] for key in PREDICTIONS}
            if books[index] is not None:
                own["dn"] = {**books[index], "targets": targets,
                             "logits": [layer[index] for layer in outputs["dn_logits"]],
                             "boxes": [layer[index] for layer in outputs["dn_boxes"]]}
            # NaN predictions would break the matcher: the member's terms are NaN (it is dropped), not computed
            finite = all(bool(p.isfinite().all()) for p in own["logits"] + own["boxes"])
            terms.append(parts[index].criterion({**own, **constant}, targets)[0] if finite else None)
        names = next((list(t) for t in terms if t is not None), ["loss"])
        nan = torch.tensor(float("nan"), device=device)
        return {name: torch.stack([t[name] if t is not None else nan for t in terms]) for name in names}

    ends = [_epoch_end(p, data, cfg, device) for p in parts]
    states = loop.run(losses, lambda index, *args: ends[index](*args), [_fresh_state() for _ in parts])
    return [loop.diverged.get(index) or FitHistory(state["val"], state["train"])
            for index, state in enumerate(states)]
