"""The detection backbone's pretraining, once, on the digits world: the counterpart of the ImageNet classifier every
DETR paper starts from (facebookresearch/detr ``models/backbone.py``: ``pretrained=is_main_process()``).

Task: which digits a canvas holds (multi-label presence, one sigmoid per class, binary cross-entropy) from
globally average-pooled features, as a ResNet classifies from its pooled last stage. Image-level labels only, no
boxes, on canvases composed from the train pool's digits with a seed of their own (no val or test digit is seen).
Batch norm trains here, as it did in the ImageNet classifier; detection then freezes it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cvpdl.checkpoint import Checkpoint
from cvpdl.detection.backbone import body_channels, build_body, normalise
from cvpdl.engine import Batch, TrainLoop
from cvpdl.progress import EpochCallback, no_report


@dataclass(frozen=True)
class BackbonePretrainConfig:
    images: int = 4000  # canvases of the pretraining set
    seed: int = 1  # composition seed of those canvases (the detection splits use the world's seed)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4


class PresenceClassifier(nn.Module):
    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.body = build_body(width, frozen_norm=False)
        self.head = nn.Linear(body_channels(width), num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images).mean(dim=(2, 3)))


def presence_labels(labels_per_image: list[np.ndarray], num_classes: int) -> torch.Tensor:
    """(N, classes) 0/1: which classes each image holds."""
    presence = torch.zeros(len(labels_per_image), num_classes)
    for i, labels in enumerate(labels_per_image):
        presence[i, torch.as_tensor(labels, dtype=torch.long)] = 1.0
    return presence


def pretrain_backbone(width: int, images: np.ndarray, presence: torch.Tensor, cfg: BackbonePretrainConfig,
                      generator: torch.Generator, on_epoch: EpochCallback = no_report,
                      checkpoint: Checkpoint | None = None) -> nn.Sequential:
    """Train a presence classifier on ``images`` (uint8 N×H×W×3) and return its body (trainable batch norm; its
    state dict loads into ``build_body(width)``). AdamW with a one-cycle schedule over all steps; every batch,
    the last one the remainder. Every process trains the whole batch (no DDP: it is cached once). With a
    ``checkpoint`` a rerun resumes from the last finished epoch."""
    model = PresenceClassifier(width, presence.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = -(-len(images) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=cfg.epochs * steps)
    loss_fn = nn.BCEWithLogitsLoss()
    loop = TrainLoop("backbone pretraining", model, optimizer, generator, len(images), cfg.batch_size, cfg.epochs,
                     steps_per_epoch=steps, step_scheduler=schedule, checkpoint=checkpoint, on_epoch=on_epoch)

    def step_losses(batch: Batch) -> dict[str, torch.Tensor]:
        return {"presence_bce": loss_fn(model(normalise(torch.from_numpy(images[batch.indices]))),
                                        presence[batch.indices])}

    loop.run(step_losses)
    return model.body.eval()


@torch.no_grad()
def extract_features(body: nn.Module, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """The frozen body's feature maps (N, C, h, w) of uint8 images, in eval mode, computed once per image."""
    body.eval()
    return torch.cat([body(normalise(torch.from_numpy(images[start:start + batch_size])))
                      for start in range(0, len(images), batch_size)])
