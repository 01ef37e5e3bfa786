"""The small interface every ``ovd`` method implements: embed regions (and whole images) into CLIP's space.

Methods differ only in how a region is turned into an embedding; zero-shot classification against the prompt
embeddings of all class names, the shared localizer and the evaluation are common (``protocol.py``).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.models.detection import FCOS

from cvpdl.checkpoint import Checkpoint
from cvpdl.data.detection_split import DetectionSplit
from cvpdl.errors import NonFiniteLossError
from cvpdl.ovd.clip_model import ClipEncoder
from cvpdl.population import Member
from cvpdl.progress import EpochCallback, no_report


@dataclass
class OvdContext:
    """What the suite shares with every cell: the (teacher) CLIP, the training split, the
    class-agnostic localizer trained on its base boxes, the class names (prompts) and the batch size for inference."""

    clip: ClipEncoder
    train: DetectionSplit
    localizer: FCOS
    class_names: list[str]
    batch_size: int = 128


@torch.no_grad()
def embed_images(encoder: ClipEncoder, images: np.ndarray, batch_size: int) -> torch.Tensor:
    """L2-normalised whole-image embeddings, in batches."""
    return torch.cat([encoder.encode_image(encoder.to_tensor(images[i:i + batch_size])).cpu()
                      for i in range(0, len(images), batch_size)]) if len(images) else torch.zeros(0)


class RegionClassifier(abc.ABC):
    """Base class: ``fit`` (optional training, resumable from a per-epoch ``checkpoint``; returns per-epoch losses
    by name) and two embedding functions."""

    def fit(self, ctx: OvdContext, generator: torch.Generator, checkpoint: Checkpoint | None = None,
            on_epoch: EpochCallback = no_report) -> dict[str, list[float]]:
        return {}

    @classmethod
    def fit_population(cls, methods: list[RegionClassifier], ctx: OvdContext, members: list[Member],
                       checkpoint: Checkpoint | None = None, on_epoch: EpochCallback = no_report
                       ) -> list[dict[str, list[float]] | NonFiniteLossError]:
        """``fit`` of method i with member i's generator, for each (a method that trains batched overrides it)."""
        return [method.fit(ctx, member.generator, checkpoint, on_epoch) for method, member in zip(methods, members)]

    def encoder(self, ctx: OvdContext) -> ClipEncoder:
        """The visual encoder used for whole images (the CLIP itself unless the method trains its own)."""
        return ctx.clip

    def embed_images(self, ctx: OvdContext, images: np.ndarray) -> torch.Tensor:
        return embed_images(self.encoder(ctx), images, ctx.batch_size)

    @abc.abstractmethod
    def embed_regions(self, ctx: OvdContext, images: np.ndarray, boxes: list[np.ndarray]) -> torch.Tensor:
        """L2-normalised embeddings of every box (xyxy px) of every image, concatenated in order."""
