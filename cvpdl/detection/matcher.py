"""Hungarian matching of predictions to ground truth (DETR): cost = class 1 · C_cls + L1 5 · C_L1 + GIoU 2 · C_GIoU,
solved per image with scipy's ``linear_sum_assignment``."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou

from cvpdl.detection.box_ops import cxcywh_to_xyxy


@dataclass(frozen=True)
class MatcherCosts:
    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    focal: bool = False  # DAB/DN-DETR: the class cost of a sigmoid focal loss (alpha 0.25, gamma 2)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def class_cost(logits: torch.Tensor, labels: torch.Tensor, costs: MatcherCosts) -> torch.Tensor:
    """(queries × targets) classification cost."""
    if not costs.focal:
        return -logits.softmax(-1)[:, labels]
    p = logits.sigmoid()[:, labels]
    a, g = costs.focal_alpha, costs.focal_gamma
    positive = a * (1 - p) ** g * -(p + 1e-8).log()
    negative = (1 - a) * p ** g * -(1 - p + 1e-8).log()
    return positive - negative


@torch.no_grad()
def match_costs(logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, gt_boxes: torch.Tensor,
                costs: MatcherCosts) -> torch.Tensor:
    """The (queries × targets) cost matrix of one image; boxes are normalised cxcywh."""
    c_bbox = torch.cdist(boxes, gt_boxes, p=1)
    c_giou = -generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt_boxes))
    return costs.cost_class * class_cost(logits, labels, costs) + costs.cost_bbox * c_bbox + costs.cost_giou * c_giou


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict], costs: MatcherCosts
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: (query indices, target indices) of the minimum-cost one-to-one assignment.

    ``logits`` (B, Q, C), ``boxes`` (B, Q, 4); each target has ``labels`` (N,) and ``boxes`` (N, 4) cxcywh.
    The costs of the whole batch are computed in one go (as DETR does), then solved image by image.
    """
    b, q = logits.shape[:2]
    sizes = [len(t["labels"]) for t in targets]
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    if sum(sizes) == 0:
        return [empty for _ in targets]
    labels = torch.cat([t["labels"] for t in targets])
    gt = torch.cat([t["boxes"] for t in targets])
    cost = match_costs(logits.flatten(0, 1), boxes.flatten(0, 1), labels, gt, costs).view(b, q, -1).cpu()
    out = []
    for i, block in enumerate(cost.split(sizes, dim=-1)):
        rows, cols = linear_sum_assignment(block[i].numpy()) if sizes[i] else ([], [])
        out.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
    return out
