"""Post-processing pinned for every variant: top-k over queries × classes, boxes to absolute xyxy (official DAB-DETR
and DN-DETR ``PostProcess``: ``topk`` over the flattened sigmoid scores, ``num_select`` 100). Official DETR keeps
one detection per query instead, its best class (``prob[..., :-1].max(-1)``): ``one_per_query``."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cvpdl.detection.box_ops import cxcywh_to_xyxy


@dataclass(frozen=True)
class PostProcess:
    """``focal``: the variant scores classes with sigmoids; otherwise with a softmax whose last column is
    "no object" (dropped). ``one_per_query``: every query's best class (k is then unused)."""

    focal: bool
    one_per_query: bool = False

    @torch.no_grad()
    def __call__(self, outputs: dict, image_size: tuple[int, int], k: int
                 ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per image of the last decoder layer: scores, class indices and xyxy boxes (pixels) of the k best
        (query, class) pairs, or of every query with its best class."""
        logits, boxes = outputs["logits"][-1], outputs["boxes"][-1]
        probs = logits.sigmoid() if self.focal else logits.softmax(-1)[..., :-1]
        b, q, c = probs.shape
        if self.one_per_query:
            scores, label = probs.max(-1)
            query = torch.arange(q, device=probs.device).expand(b, q)
        else:
            scores, flat = probs.flatten(1).topk(min(k, q * c), dim=1)
            query, label = flat // c, flat % c
        h, w = image_size
        xyxy = cxcywh_to_xyxy(boxes) * torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        return [(scores[i], label[i], xyxy[i, query[i]]) for i in range(b)]
