"""The CLIP used by the ``ovd`` suite: open_clip's own ``CLIP`` class, tokenizer and preprocessing constants.

On the digits world it is a tiny ModifiedResNet CLIP trained here (``tiny_clip_training.py``); with real data it is
any open_clip architecture loaded from a local checkpoint file. Region features for ``clip_roi`` / ``regionclip``
follow RegionCLIP: RoIAlign on the stride-16 map (after ``layer3``), then ``layer4`` and the attention pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from torchvision.ops import roi_align

from cvpdl.errors import UserInputError


@dataclass(frozen=True)
class TinyClipConfig:
    embed_dim: int = 64
    vision_layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    vision_width: int = 32
    image_size: int = 64
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = 24
    # training on the caption corpus (the design's measured recipe: one-cycle warm-up, lr 5e-4, batch 256)
    epochs: int = 15
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_frac: float = 0.15
    augment: bool = True  # open_clip's training transform on every image
    augment_scale: tuple[float, float] = (0.9, 1.0)  # its RandomResizedCrop scale (open_clip AugmentationCfg default)
    seed: int = 0


def build_tiny_clip(cfg: TinyClipConfig) -> open_clip.CLIP:
    vision = open_clip.model.CLIPVisionCfg(layers=list(cfg.vision_layers), width=cfg.vision_width,
                                           image_size=cfg.image_size, head_width=32)
    text = open_clip.model.CLIPTextCfg(context_length=cfg.context_length, width=cfg.text_width,
                                       heads=cfg.text_heads, layers=cfg.text_layers)
    return open_clip.CLIP(cfg.embed_dim, vision, text)


def load_pretrained_clip(arch: str, weights: str | Path) -> open_clip.CLIP:
    """Any open_clip architecture from a local checkpoint; nothing is downloaded."""
    if arch not in open_clip.list_models():
        raise UserInputError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
    if not Path(weights).is_file():
        raise UserInputError(f"CLIP checkpoint not found: {weights} (pass a local file with --clip-weights)")
    try:
        torch.load(weights, map_location="cpu", weights_only=True)  # tensors only: never unpickle code from a file
        return open_clip.create_model(arch, pretrained=str(weights))
    except Exception as err:  # truncated file, another architecture's weights, not a checkpoint at all
        detail = str(err).splitlines()[0][:120] if str(err) else "no detail"
        raise UserInputError(f"CLIP checkpoint {weights} cannot be loaded as {arch} ({type(err).__name__}: "
                             f"{detail})") from None


class ClipEncoder:
    """Image, text and region embeddings (L2-normalised) of an open_clip model."""

    def __init__(self, model: open_clip.CLIP, context_length: int | None = None):
        self.model = model
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length or model.context_length)
        size = model.visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else size
        mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to_tensor(self, images: np.ndarray | torch.Tensor, size: int | None = None) -> torch.Tensor:
        """uint8 NHWC → normalised float NCHW on the model's device, resized to ``size`` (default: model input)."""
        x = torch.as_tensor(images).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        size = size or self.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(tokens), dim=-1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(pixels), dim=-1)

    def encode_regions(self, pixels: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """RoIAlign region embeddings: ``boxes`` per image in the pixel coordinates of ``pixels`` (xyxy)."""
        visual = self.model.visual
        if not isinstance(visual, ModifiedResNet):
            raise UserInputError("RoIAlign region features need a ModifiedResNet CLIP (e.g. RN50); "
                                 f"got {type(visual).__name__}")
        return visual_region_embeddings(visual, pixels, boxes)


def visual_region_embeddings(visual: ModifiedResNet, pixels: torch.Tensor, boxes: list[torch.Tensor] | torch.Tensor
                             ) -> torch.Tensor:
    """A ModifiedResNet's RoIAlign region embeddings, L2-normalised: ``boxes`` per image (xyxy, in the pixel
    coordinates of ``pixels``) or as one (K, 5) tensor of (image index, x1, y1, x2, y2), as ``roi_align`` takes them."""
    x = visual.stem(pixels.to(visual.conv1.weight.dtype))
    x = visual.layer3(visual.layer2(visual.layer1(x)))  # stride 16
    grid = visual.attnpool.positional_embedding.shape[0] - 1
    side = int(round(grid ** 0.5)) * 2  # layer4 halves it back to the attention pool's grid
    boxes = boxes.to(x.dtype) if isinstance(boxes, torch.Tensor) else [b.to(x.dtype) for b in boxes]
    regions = region_features(x, boxes, side, stride=16)
    return F.normalize(visual.attnpool(visual.layer4(regions)), dim=-1)


def region_features(feature_map: torch.Tensor, boxes: list[torch.Tensor] | torch.Tensor, side: int, stride: int
                    ) -> torch.Tensor:
    """RoIAlign of xyxy pixel boxes on a stride-``stride`` feature map: pixel-aligned, with an adaptive number of
    samples per bin (``sampling_ratio=0``, detectron2's ``POOLER_SAMPLING_RATIO`` default that RegionCLIP uses)."""
    return roi_align(feature_map, boxes, output_size=(side, side), spatial_scale=1 / stride, sampling_ratio=0,
                     aligned=True)
