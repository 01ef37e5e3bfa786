"""The analyses behind "why does DETR converge slowly": matching instability (DN-DETR §3), cross-attention
sparsity (Sun et al. 2020) and the positional attention of learned queries (DAB-DETR)."""
from __future__ import annotations

import numpy as np
import torch


def assignment_vector(indices: tuple[torch.Tensor, torch.Tensor], num_queries: int) -> torch.Tensor:
    """Per query, the index of its matched ground truth, or -1."""
    v = torch.full((num_queries,), -1, dtype=torch.long)
    v[indices[0]] = indices[1]
    return v


def matching_instability(previous: list[torch.Tensor], current: list[torch.Tensor], num_gt: int) -> float:
    """Number of queries whose matched GT index changed between two epochs, divided by the number of GT."""
    changed = sum(int((p != c).sum()) for p, c in zip(previous, current))
    return changed / max(1, num_gt)


def negative_entropy(attention: torch.Tensor) -> float:
    """Mean of Σ p log p over the last axis (each attention distribution over keys); higher = sparser."""
    p = attention.clamp_min(1e-12)
    return float((p * p.log()).sum(-1).mean())


def positional_attention(query_pos: torch.Tensor, key_pos: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q_pos · k_pos / √d_h) of each query's positional part against the image PE, as the first decoder
    layer's cross-attention projects them, per head, then averaged over heads: (Q, HW)."""
    q = query_pos.view(query_pos.shape[0], heads, -1).transpose(0, 1)  # heads, Q, d_h
    k = key_pos.view(key_pos.shape[0], heads, -1).transpose(0, 1)  # heads, HW, d_h
    return (q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).softmax(dim=-1).mean(dim=0)


def entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp_min(1e-12)
    return -(p * p.log()).sum(-1)


def count_modes(attention_map: np.ndarray, rel_threshold: float = 0.5) -> int:
    """Local maxima (8-neighbourhood, plateau-safe) that reach ``rel_threshold`` × the global maximum."""
    a = np.asarray(attention_map, dtype=np.float64)
    padded = np.pad(a, 1, constant_values=-np.inf)
    h, w = a.shape
    neighbours = np.stack([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                           for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    peaks = (a > neighbours.max(axis=0)) & (a >= rel_threshold * a.max())
    return int(peaks.sum())
