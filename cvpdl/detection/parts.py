"""What a DETR-family variant is built into, as facebookresearch/detr's ``build`` returns it: the model, its set
criterion and its post-processing.

A variant is one ``nn.Module`` class (``Detr``, ``DabDetr``) with
- ``focal``: a class attribute, sigmoid focal classification (True) or softmax with a "no object" class (False);
- ``build(cfg, num_classes, weights, ...) -> DetectorParts``, a classmethod (a subclass inherits it);
- ``forward(images, targets=None, generator=None)`` -> per decoder layer ``logits``, ``boxes`` (cxcywh in [0, 1]) and
  ``cross_attn`` (weights in eval mode), the feature ``grid``, and ``dn`` when it trains denoising queries;
- ``encoder.position_encoding(h, w, device)`` and ``positional_parts(pe)`` for the positional-attention analysis.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cvpdl.detection.criterion import LossWeights, SetCriterion
from cvpdl.detection.matcher import MatcherCosts
from cvpdl.detection.postprocess import PostProcess


@dataclass
class DetectorParts:
    model: nn.Module
    criterion: SetCriterion
    postprocess: PostProcess

    @classmethod
    def assemble(cls, model: nn.Module, num_classes: int, weights: LossWeights, cost_class: float) -> DetectorParts:
        """Criterion and post-processing for ``model``, following the classification its class declares
        (``focal``); the matcher's box costs are the official 5 (L1) and 2 (GIoU)."""
        costs = MatcherCosts(cost_class=cost_class, focal=model.focal, focal_alpha=weights.focal_alpha,
                             focal_gamma=weights.focal_gamma)
        return cls(model, SetCriterion(num_classes, weights, costs), PostProcess(model.focal))
