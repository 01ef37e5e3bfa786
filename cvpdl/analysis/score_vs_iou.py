"""RegionCLIP Fig. 1(a): does CLIP's score of a proposal track how well the proposal fits the object?

Proposals of every quality are made by jittering ground-truth boxes; the analysis correlates each proposal's
classification score with its IoU to the best-matching ground truth (Spearman rho).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from torchvision.ops import box_iou


def jitter_boxes(gt: np.ndarray, per_box: int, size: int, generator: torch.Generator) -> np.ndarray:
    """Proposals of every quality around each GT box: a random strength t ~ U(0, 1) per proposal shifts the
    centre by up to ±0.6·t of the box size and scales width and height by up to 2^(±t)."""
    gt = torch.as_tensor(gt, dtype=torch.float32).reshape(-1, 4)
    if len(gt) == 0:
        return np.zeros((0, 4), np.float32)
    centre = ((gt[:, :2] + gt[:, 2:]) / 2).repeat_interleave(per_box, 0)
    wh = (gt[:, 2:] - gt[:, :2]).repeat_interleave(per_box, 0)
    strength = torch.rand(len(centre), 1, generator=generator)
    centre = centre + (torch.rand(len(centre), 2, generator=generator) - 0.5) * 1.2 * strength * wh
    wh = wh * torch.exp((torch.rand(len(wh), 2, generator=generator) - 0.5) * 2 * np.log(2) * strength)
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], dim=1).clamp(0, size)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return boxes.numpy()


def best_iou(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    if len(gt) == 0:
        return np.zeros(len(boxes), np.float32)
    return box_iou(torch.as_tensor(boxes), torch.as_tensor(gt)).max(dim=1).values.numpy()


def score_iou_spearman(scores: np.ndarray, ious: np.ndarray) -> float:
    """Spearman rank correlation (NaN when either side is constant or fewer than 3 points)."""
    if len(scores) < 3 or np.ptp(scores) == 0 or np.ptp(ious) == 0:
        return float("nan")
    return float(stats.spearmanr(scores, ious).statistic)
