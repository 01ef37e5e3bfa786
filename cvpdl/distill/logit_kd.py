"""Hinton et al. 2015: match the teacher's softened class distribution."""
from dataclasses import dataclass

import torch.nn.functional as F

from cvpdl.distill.base import Distiller
from cvpdl.losses import distillation_kl


@dataclass(frozen=True)
class LogitKDConfig:
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    temperature: float = 4.0


class LogitKD(Distiller):
    cfg: LogitKDConfig

    def losses(self, x, y, teacher_out):
        logits = self.student(x)["logits"]
        return {"loss_ce": self.cfg.ce_weight * F.cross_entropy(logits, y),
                "loss_kd": self.cfg.kd_weight * distillation_kl(logits, teacher_out["logits"], self.cfg.temperature)}
