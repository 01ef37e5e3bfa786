"""Sine position encodings (DETR / DAB-DETR): one function serves the image grid and the anchor boxes, so a
query's positional part and the keys' encodings live in the same space."""
from __future__ import annotations

import math

import torch


def sine_embed(coords: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """(..., k) coordinates in [0, 1] → (..., k · num_feats): for each coordinate, interleaved sin/cos of
    2π·c / T^(2i / num_feats), concatenated in the order given (DAB-DETR's ``gen_sineembed_for_position``)."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos = coords[..., None] * 2 * math.pi / dim_t  # (..., k, num_feats)
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return pos.flatten(-2)


def image_position_encoding(height: int, width: int, d_model: int, temperature: float = 10000.0, device=None
                            ) -> torch.Tensor:
    """(H·W, d_model) encoding of each cell as (y, x), each with d_model/2 features (DETR's order).

    Cell i of n sits at (i + 1) / (n + 1e-6), as the official ``PositionEmbeddingSine(normalize=True)`` places it
    (cumulative sum of the unpadded mask over its total); DETR uses temperature 10000, DAB/DN-DETR 20.
    """
    ys = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + 1e-6)
    xs = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + 1e-6)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
    return sine_embed(grid, d_model // 2, temperature)
