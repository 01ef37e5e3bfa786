"""DN-DETR (Li et al., CVPR 2022): noised ground truths as extra decoder queries that must reconstruct the
originals without matching, with an attention mask that keeps the matching part blind to them."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DenoisingConfig:
    groups: int = 5
    label_flip: float = 0.2
    box_noise: float = 0.4  # λ: centre shift up to λ·w/2, λ·h/2; width/height scaled in [1−λ, 1+λ]


def _source(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Where to draw: on the generator's device (the runner's generators live on the CPU, a batch may be on
    CUDA); the draws are then moved to the batch."""
    return generator.device if generator is not None else device


def noise_boxes(boxes: torch.Tensor, lam: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """cxcywh boxes in [0, 1] → noised copies, clamped to [0, 1]."""
    u = torch.rand(boxes.shape, generator=generator, device=_source(generator, boxes.device)).to(boxes.device)
    u = u * 2 - 1  # U(-1, 1)
    cx = boxes[:, 0] + u[:, 0] * lam * boxes[:, 2] / 2
    cy = boxes[:, 1] + u[:, 1] * lam * boxes[:, 3] / 2
    w = boxes[:, 2] * (1 + u[:, 2] * lam)
    h = boxes[:, 3] * (1 + u[:, 3] * lam)
    return torch.stack([cx, cy, w, h], dim=1).clamp(0, 1)


def flip_labels(labels: torch.Tensor, p: float, num_classes: int, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    source = _source(generator, labels.device)
    flip = torch.rand(labels.shape, generator=generator, device=source).to(labels.device) < p
    random = torch.randint(0, num_classes, labels.shape, generator=generator, device=source).to(labels.device)
    return torch.where(flip, random, labels)


def attention_mask(groups: int, group_size: int, num_matching: int, device=None) -> torch.Tensor:
    """(T, T) bool mask, True = may not attend; the DN queries come first, group by group.

    Matching queries cannot see any DN query (they would read the answers); a DN group cannot see another group.
    DN queries may see the matching queries.
    """
    pad = groups * group_size
    total = pad + num_matching
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[pad:, :pad] = True
    for g in range(groups):
        rows = slice(g * group_size, (g + 1) * group_size)
        mask[rows, :g * group_size] = True
        mask[rows, (g + 1) * group_size:pad] = True
    return mask


def build_dn_queries(targets: list[dict], cfg: DenoisingConfig, num_classes: int, generator: torch.Generator | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list, int]:
    """Noised labels (B, pad) — ``num_classes`` marks padding — noised boxes (B, pad, 4), a validity mask, the
    (query, target) indices of the reconstruction loss per image, and the group size. The whole batch is noised
    in one go: ground truths padded to the largest image, repeated once per group (group-major)."""
    sizes = [len(t["labels"]) for t in targets]
    group_size, groups, b = max(1, max(sizes)), cfg.groups, len(targets)
    device = targets[0]["boxes"].device
    labels = torch.full((b, group_size), num_classes, dtype=torch.long, device=device)
    boxes = torch.full((b, group_size, 4), 0.5, device=device)
    for i, t in enumerate(targets):
        labels[i, :sizes[i]] = t["labels"]
        boxes[i, :sizes[i]] = t["boxes"]
    valid = (labels != num_classes).repeat(1, groups)
    labels = torch.where(valid, flip_labels(labels.repeat(1, groups), cfg.label_flip, num_classes, generator),
                         num_classes)
    noised = noise_boxes(boxes.repeat(1, groups, 1).reshape(-1, 4), cfg.box_noise, generator).view(b, -1, 4)
    boxes = torch.where(valid[..., None], noised, 0.5)
    indices = [((torch.arange(groups)[:, None] * group_size + torch.arange(n)[None]).flatten(),
                torch.arange(n).repeat(groups)) for n in sizes]
    return labels, boxes, valid, indices, group_size
