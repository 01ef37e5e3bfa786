"""FitNet (Romero et al., ICLR 2015): the student's last feature map, through a learned 1×1 regressor, mimics
the teacher's (same spatial size: both nets downsample equally), on top of cross-entropy."""
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from cvpdl.distill.base import Distiller
from cvpdl.distill.losses import fitnet_hint


@dataclass(frozen=True)
class FitNetConfig:
    hint_weight: float = 100.0
    ce_weight: float = 1.0


class FitNet(Distiller):
    def __init__(self, student, teacher, cfg: FitNetConfig):
        super().__init__(student, teacher)
        self.cfg = cfg
        self.regressor = nn.Sequential(nn.Conv2d(student.feature_channels, teacher.feature_channels, 1, bias=False),
                                       nn.BatchNorm2d(teacher.feature_channels))

    def losses(self, x, y, teacher_out):
        out = self.student(x)
        return {"loss_ce": self.cfg.ce_weight * F.cross_entropy(out["logits"], y),
                "loss_hint": self.cfg.hint_weight * fitnet_hint(self.regressor(out["feature_map"]),
                                                                 teacher_out["feature_map"])}
