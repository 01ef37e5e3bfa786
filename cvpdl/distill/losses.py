"""Distillation losses of GLD (standardised global/local logits + relation) and FitNet hints; Hinton's KL, shared
with RegionCLIP, is ``cvpdl.losses.distillation_kl``."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-row z-score of the logits (GLD): removes each row's scale and offset before the softmax."""
    return (logits - logits.mean(dim=-1, keepdim=True)) / (logits.std(dim=-1, keepdim=True) + eps)


def relation_matrix(logits: torch.Tensor) -> torch.Tensor:
    """GLD's D(Z): pairwise squared Euclidean distances between all rows, each row divided by its L2 norm
    (``F.normalize``, as the official ``dist_preserve_loss``), N × N."""
    return F.normalize(torch.cdist(logits, logits).pow(2), dim=1)


def gld_relation(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Densely connected relations: D(Z) of all global + local logits of the batch (within and across images),
    teacher vs student, squared differences averaged over the N² entries."""
    return F.mse_loss(relation_matrix(student_logits), relation_matrix(teacher_logits))


def fitnet_hint(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """FitNet: MSE between the regressed student hint and the teacher's guided layer (same shape)."""
    return F.mse_loss(student_features, teacher_features)
