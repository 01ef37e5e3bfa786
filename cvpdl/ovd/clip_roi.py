"""CLIP with RoIAlign: one pass over the whole image, RoIAlign on the stride-16 feature map, then CLIP's own
``layer4`` and attention pool per region (RegionCLIP's region encoder, without region-text pretraining)."""
from __future__ import annotations

import numpy as np
import torch

from cvpdl.ovd.clip_model import ClipEncoder
from cvpdl.ovd.region_classifier import OvdContext, RegionClassifier


def embed_regions_roi(enc: ClipEncoder, images: np.ndarray, boxes: list[np.ndarray], scale: float,
                      batch_size: int) -> torch.Tensor:
    """Images are resized by ``scale`` × CLIP's input size so small objects span a few positions of the stride-16
    feature map."""
    size = int(round(enc.image_size * scale))
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pixels = enc.to_tensor(chunk, size=size)
        factor = size / chunk.shape[1]
        rois = [torch.as_tensor(b, dtype=torch.float32, device=pixels.device).reshape(-1, 4) * factor
                for b in boxes[start:start + batch_size]]
        if sum(len(r) for r in rois):
            out.append(enc.encode_regions(pixels, rois))
    return torch.cat(out) if out else torch.zeros(0)


class ClipRoi(RegionClassifier):
    def __init__(self, image_scale: float = 2.0):
        self.image_scale = image_scale

    @torch.no_grad()
    def embed_regions(self, ctx: OvdContext, images: np.ndarray, boxes: list[np.ndarray]) -> torch.Tensor:
        return embed_regions_roi(self.encoder(ctx), images, boxes, self.image_scale, ctx.batch_size).cpu()
