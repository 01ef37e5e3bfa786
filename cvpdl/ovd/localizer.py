"""The class-agnostic localizer shared by every ``ovd`` method: torchvision's FCOS with a small backbone, trained
on base-class boxes only (novel objects in the training images stay unlabelled background, as in OV-COCO).

FCOS rather than Faster R-CNN: on the CPU, torchvision's RoIAlign backward dominated a Faster R-CNN step (~70%).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator

from cvpdl import ddp
from cvpdl.checkpoint import Checkpoint
from cvpdl.data.detection_split import DetectionSplit
from cvpdl.engine import Batch, TrainLoop
from cvpdl.progress import EpochCallback, no_report


@dataclass(frozen=True)
class LocalizerConfig:
    width: int = 32
    epochs: int = 3
    batch_size: int = 16
    lr: float = 2e-3
    detections_per_image: int = 10
    score_threshold: float = 0.05
    seed: int = 0


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def build_localizer(cfg: LocalizerConfig, image_size: int) -> FCOS:
    """One stride-8 level; with a single level FCOS assigns objects of every size to it."""
    w = cfg.width
    backbone = nn.Sequential(_conv(3, w, 2), _conv(w, w, 1), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 1),
                             _conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w, 1))  # stride 8
    backbone.out_channels = 4 * w
    anchors = AnchorGenerator(sizes=((8,),), aspect_ratios=((1.0,),))  # FCOS: one point per map position, size = stride
    return FCOS(backbone, num_classes=1, anchor_generator=anchors, min_size=image_size, max_size=image_size,
                image_mean=[0.0] * 3, image_std=[1.0] * 3, score_thresh=cfg.score_threshold,
                detections_per_img=cfg.detections_per_image, topk_candidates=200)


def _batch(split: DetectionSplit, idx: list[int], device: torch.device, keep_classes: list[int] | None):
    images, targets = [], []
    for i in idx:
        images.append(torch.from_numpy(split.image(i)).to(device).permute(2, 0, 1).float() / 255.0)
        boxes, labels = split.target(i)
        if keep_classes is not None:
            boxes = boxes[np.isin(labels, keep_classes)]
        targets.append({"boxes": torch.from_numpy(boxes).to(device).reshape(-1, 4),
                        "labels": torch.zeros(len(boxes), dtype=torch.int64, device=device)})
    return images, targets


def train_localizer(model: FCOS, split: DetectionSplit, cfg: LocalizerConfig, generator: torch.Generator,
                    keep_classes: list[int], on_epoch: EpochCallback = no_report, checkpoint: Checkpoint | None = None
                    ) -> list[float]:
    """Train class-agnostically on the boxes of ``keep_classes`` only; returns the mean loss per epoch (the sum
    of FCOS's terms, each reported per epoch to ``on_epoch``). With a ``checkpoint`` a rerun resumes from the last
    finished epoch.

    Under torchrun (``cvpdl.ddp``) each rank trains on its shard of every global batch (DDP over the model), its
    losses weighted by its share of the batch, and the logged losses are the mean over ranks. Not exactly the
    global batch's loss: torchvision's FCOS normalises its losses by the shard's own number of foreground locations
    (detectron2's FCOS all-reduces it), and batch-norm statistics are each shard's."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=1e-4)
    steps = max(1, len(split) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps,
                                                   pct_start=0.1)
    loop = TrainLoop("train localizer", model, optimizer, generator, len(split), cfg.batch_size, cfg.epochs,
                     step_scheduler=schedule, shard_means=True, checkpoint=checkpoint, on_epoch=on_epoch)
    trained = ddp.wrap(model)

    def step_losses(batch: Batch) -> dict[str, torch.Tensor]:
        return trained(*_batch(split, batch.mine, device, keep_classes))

    losses = loop.run(step_losses)["losses"]
    model.eval()
    return [sum(terms) for terms in zip(*losses.values())]


@torch.no_grad()
def propose(model: FCOS, split: DetectionSplit, batch_size: int = 64, detections_per_image: int | None = None,
            nms_threshold: float | None = None, score_threshold: float | None = None
            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Class-agnostic boxes (xyxy px) and objectness scores for every image of ``split``.

    The overrides change the post-processing for this call only (e.g. a larger proposal pool for pretraining,
    like RegionCLIP's 300 RPN proposals at NMS 0.5); the model is left as it was.
    """
    device = next(model.parameters()).device
    model.eval()
    saved = model.detections_per_img, model.nms_thresh, model.score_thresh
    model.detections_per_img = saved[0] if detections_per_image is None else detections_per_image
    model.nms_thresh = saved[1] if nms_threshold is None else nms_threshold
    model.score_thresh = saved[2] if score_threshold is None else score_threshold
    out = []
    try:
        for start in range(0, len(split), batch_size):
            images, _ = _batch(split, list(range(start, min(start + batch_size, len(split)))), device, None)
            for det in model(images):
                out.append((det["boxes"].cpu().numpy(), det["scores"].cpu().numpy()))
    finally:
        model.detections_per_img, model.nms_thresh, model.score_thresh = saved
    return out
