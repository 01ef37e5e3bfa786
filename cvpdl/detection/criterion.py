"""The set criterion of DETR-family models: a dict of named losses over the last layer and every auxiliary layer.

Classification: softmax cross-entropy with no-object weight 0.1 (DETR) or sigmoid focal loss, α 0.25, γ 2
(DAB/DN-DETR); boxes: L1 (weight 5) and GIoU (weight 2) on matched pairs, normalised by the number of boxes.
Denoising queries (DN-DETR) have fixed targets: their losses need no matching.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from cvpdl.detection.box_ops import cxcywh_to_xyxy
from cvpdl.detection.matcher import MatcherCosts, hungarian_match_layers


@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    bbox: float = 5.0
    giou: float = 2.0
    no_object: float = 0.1  # softmax CE weight of the "no object" class
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits.transpose(1, 2), target, weight=weight)`` (class axis last) without NLLLoss, whose
    CUDA kernel has no deterministic mode."""
    log_p = F.log_softmax(logits, -1).gather(-1, target[..., None]).squeeze(-1)
    w_target = weight[target]
    return -(log_p * w_target).sum() / w_target.sum()


class SetCriterion:
    def __init__(self, num_classes: int, weights: LossWeights, costs: MatcherCosts):
        self.num_classes = num_classes
        self.weights = weights
        self.costs = costs

    def class_loss(self, logits: torch.Tensor, target_classes: torch.Tensor, num_boxes: float) -> torch.Tensor:
        """``target_classes`` (B, Q) holds ``num_classes`` for unmatched queries ("no object")."""
        w = self.weights
        if self.costs.focal:
            onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1].to(logits.dtype)
            return sigmoid_focal_loss(logits, onehot, w.focal_alpha, w.focal_gamma, reduction="sum") / num_boxes
        empty = torch.ones(self.num_classes + 1, device=logits.device)
        empty[-1] = w.no_object
        if logits.is_cuda:  # CUDA's NLLLoss reduces with atomics (nondeterministic); CPU keeps the official call
            return weighted_cross_entropy(logits, target_classes, empty)
        return F.cross_entropy(logits.transpose(1, 2), target_classes, weight=empty)

    def box_losses(self, pred: torch.Tensor, gt: torch.Tensor, num_boxes: float) -> tuple[torch.Tensor, torch.Tensor]:
        l1 = F.l1_loss(pred, gt, reduction="sum") / num_boxes
        # pairwise (not the N × N matrix): the DN part has groups × targets pairs per layer
        giou = generalized_box_iou_loss(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(gt), reduction="sum") / num_boxes
        return l1, giou

    def layer_losses(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict],
                     indices: list[tuple[torch.Tensor, torch.Tensor]], num_boxes: float, only_indexed: bool = False
                     ) -> dict[str, torch.Tensor]:
        """Losses of one layer. ``only_indexed``: score only the indexed queries (DN-DETR's ``tgt_loss_labels``:
        its padding slots have no target and are not "no object"); otherwise every other query is "no object"."""
        batch = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
        query = torch.cat([q for q, _ in indices])
        labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        if only_indexed:
            loss_ce = self.class_loss(logits[batch, query][None], labels[None], num_boxes)
        else:
            target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
            target_classes[batch, query] = labels
            loss_ce = self.class_loss(logits, target_classes, num_boxes)
        gt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
        l1, giou = self.box_losses(boxes[batch, query], gt, num_boxes)
        w = self.weights
        return {"loss_ce": w.ce * loss_ce, "loss_bbox": w.bbox * l1, "loss_giou": w.giou * giou}

    def __call__(self, outputs: dict, targets: list[dict]) -> tuple[dict[str, torch.Tensor], list]:
        """Named losses summed over decoder layers (``loss_*``, plus ``loss_dn_*`` for denoising queries) and the
        last layer's matching (for the instability analysis)."""
        num_boxes = float(sum(len(t["labels"]) for t in targets))
        if dist.is_initialized():  # DDP: normalise by the mean box count over ranks, as DETR does
            total = torch.tensor([num_boxes], device=outputs["logits"][0].device)
            dist.all_reduce(total)
            num_boxes = total.item() / dist.get_world_size()
        num_boxes = max(1.0, num_boxes)
        losses: dict[str, torch.Tensor] = {}
        last_indices = None
        matches = hungarian_match_layers(outputs["logits"], outputs["boxes"], targets, self.costs)
        for logits, boxes, indices in zip(outputs["logits"], outputs["boxes"], matches):  # one per decoder layer
            last_indices = indices
            for name, value in self.layer_losses(logits, boxes, targets, indices, num_boxes).items():
                losses[name] = losses.get(name, 0) + value
        dn = outputs.get("dn")
        if dn is not None:
            for logits, boxes in zip(dn["logits"], dn["boxes"]):
                for name, value in self.layer_losses(logits, boxes, dn["targets"], dn["indices"],
                                                     num_boxes * dn["groups"], only_indexed=True).items():
                    key = name.replace("loss_", "loss_dn_")
                    losses[key] = losses.get(key, 0) + value
        return losses, last_indices
