"""CLIP on crops: cut each region out of the pixels, resize it to CLIP's input, classify it zero-shot.

The "locate, then classify the crop" baseline of RegionCLIP Fig. 1: the crop loses context and changes scale.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cvpdl.ovd.region_classifier import OvdContext, RegionClassifier


def crop_bounds(box, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds (col0, row0, col1, row1), end-exclusive, of every pixel the xyxy box touches
    (floor of the start, ceil of the end), clipped to the image and at least one pixel wide and high."""
    x0, y0, x1, y1 = (float(v) for v in box)
    c0, r0 = int(np.clip(np.floor(x0), 0, width - 1)), int(np.clip(np.floor(y0), 0, height - 1))
    c1, r1 = int(np.clip(np.ceil(x1), c0 + 1, width)), int(np.clip(np.ceil(y1), r0 + 1, height))
    return c0, r0, c1, r1


def crop_and_resize(image: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """Pixel crops (CHW float image, xyxy px boxes) → (N, C, size, size)."""
    _, h, w = image.shape
    crops = []
    for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        c0, r0, c1, r1 = crop_bounds(box, w, h)
        patch = image[:, r0:r1, c0:c1][None]
        crops.append(F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(crops) if crops else image.new_zeros((0, image.shape[0], size, size))


class ClipCrop(RegionClassifier):
    @torch.no_grad()
    def embed_regions(self, ctx: OvdContext, images: np.ndarray, boxes: list[np.ndarray]) -> torch.Tensor:
        enc = self.encoder(ctx)
        crops = []
        for image, image_boxes in zip(images, boxes):
            # normalise at full resolution, then crop: the same pixels CLIP would see for the whole image
            pixels = enc.to_tensor(image[None], size=image.shape[0])[0]
            crops.append(crop_and_resize(pixels, image_boxes, enc.image_size))
        crops = torch.cat(crops)
        return torch.cat([enc.encode_image(crops[i:i + ctx.batch_size]).cpu()
                          for i in range(0, len(crops), ctx.batch_size)]) if len(crops) else torch.zeros(0)
