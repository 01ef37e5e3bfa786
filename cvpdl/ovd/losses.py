"""Contrastive losses of CLIP training and RegionCLIP pretraining (RegionCLIP's distillation term is Hinton's KL,
``cvpdl.losses.distillation_kl``, shared with ``distill``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F



def multi_positive_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a uniform target over each row's positives (rows without a positive are skipped).

    With exactly one positive per row this is the usual InfoNCE / CLIP loss; with several (duplicate captions,
    regions sharing a concept) none of the true matches is pushed away as a negative.
    """
    positives = positives.float()
    counts = positives.sum(dim=1)
    keep = counts > 0
    targets = positives[keep] / counts[keep, None]
    return -(targets * F.log_softmax(logits[keep], dim=1)).sum(dim=1).mean()


def image_text_contrastive(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                           same_text: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss on normalised embeddings; ``same_text[i, j]`` marks pairs with equal captions."""
    logits = logit_scale * image_emb @ text_emb.T
    return 0.5 * (multi_positive_cross_entropy(logits, same_text) + multi_positive_cross_entropy(logits.T, same_text.T))


def mil_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """RegionCLIP's ``MILCrossEntropy`` (``avg_positives=False``): per row, -log of the summed softmax probability
    of its positives, averaged over rows. Rows without a positive are skipped."""
    keep = positives.any(dim=1)
    logits, positives = logits[keep], positives[keep].bool()
    return (logits.logsumexp(dim=1) - logits.masked_fill(~positives, float("-inf")).logsumexp(dim=1)).mean()


def region_concept_contrastive(region_emb: torch.Tensor, concept_emb: torch.Tensor, labels: torch.Tensor,
                               logit_scale: float | torch.Tensor) -> torch.Tensor:
    """RegionCLIP's region-concept contrastive loss (``region_concept_matching`` in the official ``clip_rcnn.py``):
    one way, each kept region against the pseudo-label embeddings of all kept regions of the batch (so only the
    concepts present in the batch, once per region that carries them); positives are the columns with its label."""
    targets = concept_emb[labels]
    positives = labels[:, None] == labels[None, :]
    return mil_cross_entropy(logit_scale * region_emb @ targets.T, positives)


def same_caption_mask(captions: list[str]) -> torch.Tensor:
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    index = torch.tensor([ids[c] for c in captions])
    return index[:, None] == index[None, :]
