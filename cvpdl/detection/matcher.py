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
def match_cost_blocks(logits: list[torch.Tensor], boxes: list[torch.Tensor], targets: list[dict],
                      costs: MatcherCosts) -> torch.Tensor:
    """The cost matrices of several decoder layers against the same targets, only each image's own block:
    (layers, B, Q, G) with G the largest target count (padding columns repeat a real target; cut them).

    Every entry is exactly the one ``match_costs`` gives over the whole batch (B·Q × all targets), as DETR
    computes it: the class cost is taken from that whole-batch matrix (its sigmoid/log, whose last digit may depend
    on an element's place in the tensor, see the same tensors), the box costs (sums, products, quotients and
    extrema, exact wherever they are computed) per image block, batched over layers and images.
    """
    b, q = logits[0].shape[:2]
    sizes = [len(t["labels"]) for t in targets]
    device, width = logits[0].device, max(sizes)
    labels = torch.cat([t["labels"] for t in targets])
    gt = torch.cat([t["boxes"] for t in targets])
    start = torch.tensor([0, *sizes[:-1]], device=device).cumsum(0)
    slot = torch.arange(width, device=device)
    columns = torch.where(slot < torch.tensor(sizes, device=device)[:, None], start[:, None] + slot, 0)  # B, G
    layers = len(logits)
    pred = torch.stack(boxes).flatten(0, 1)  # layers·B, Q, 4
    gt_blocks = gt[columns].repeat(layers, 1, 1)  # layers·B, G, 4
    c_bbox = torch.cdist(pred, gt_blocks, p=1)
    c_giou = -generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(gt_blocks))
    c_class = torch.stack([class_cost(x.flatten(0, 1), labels, costs).view(b, q, -1) for x in logits])
    c_class = c_class.gather(-1, columns[None, :, None, :].expand(layers, b, q, width)).flatten(0, 1)
    cost = costs.cost_class * c_class + costs.cost_bbox * c_bbox + costs.cost_giou * c_giou
    return cost.view(layers, b, q, width)


@torch.no_grad()
def hungarian_match_layers(logits: list[torch.Tensor], boxes: list[torch.Tensor], targets: list[dict],
                           costs: MatcherCosts) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """``hungarian_match`` of several decoder layers against the same targets in one go (the costs of
    ``match_cost_blocks``, one transfer to the CPU): per layer, per image, (query indices, target indices)."""
    sizes = [len(t["labels"]) for t in targets]
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    if sum(sizes) == 0:
        return [[empty for _ in targets] for _ in logits]
    out = []
    for blocks in match_cost_blocks(logits, boxes, targets, costs).cpu():
        layer = []
        for block, n in zip(blocks, sizes):
            rows, cols = linear_sum_assignment(block[:, :n].numpy()) if n else ([], [])
            layer.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        out.append(layer)
    return out


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict], costs: MatcherCosts
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: (query indices, target indices) of the minimum-cost one-to-one assignment.

    ``logits`` (B, Q, C), ``boxes`` (B, Q, 4); each target has ``labels`` (N,) and ``boxes`` (N, 4) cxcywh.
    The costs of the whole batch are computed in one go (as DETR does), then solved image by image.
    """
    return hungarian_match_layers([logits], [boxes], targets, costs)[0]
