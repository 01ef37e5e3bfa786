"""Post-processing pinned for every variant: top-k over queries × classes, boxes to absolute xywh."""
from __future__ import annotations

import torch

from cvpdl.detection.box_ops import cxcywh_to_xyxy


@torch.no_grad()
def top_k_detections(logits: torch.Tensor, boxes: torch.Tensor, focal: bool, image_size: tuple[int, int], k: int
                     ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image: scores, class indices and xyxy boxes (pixels) of the k best (query, class) pairs."""
    probs = logits.sigmoid() if focal else logits.softmax(-1)[..., :-1]
    b, q, c = probs.shape
    scores, flat = probs.flatten(1).topk(min(k, q * c), dim=1)
    query, label = flat // c, flat % c
    h, w = image_size
    xyxy = cxcywh_to_xyxy(boxes) * torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
    return [(scores[i], label[i], xyxy[i, query[i]]) for i in range(b)]
