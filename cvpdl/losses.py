"""Losses shared by the subpackages: Hinton's distillation KL (logit KD and GLD in ``distill``, RegionCLIP's
region-score distillation in ``ovd``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
                    ) -> torch.Tensor:
    """KL(softmax(z_t/T) ‖ softmax(z_s/T)) · T², summed over the classes (last dim), averaged over the batch
    (``batchmean``), as Hinton et al. define it."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    p_t = F.softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature ** 2
