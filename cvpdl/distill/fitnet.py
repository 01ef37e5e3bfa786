"""FitNet (Romero et al., ICLR 2015) as mdistiller trains it: on top of cross-entropy, the student's hint stage,
through a learned regressor (mdistiller's ``ConvReg``: conv + BatchNorm + ReLU), mimics the teacher's same stage
by MSE. mdistiller hints at the middle stage (``HINT_LAYER`` 2 of stem + three stages); here stage 1 of three.
Both nets downsample equally, so the regressor's conv is 1×1 (``ConvReg``'s ``1 + s_H - t_H`` kernel)."""
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from cvpdl.distill.base import Distiller
from cvpdl.distill.losses import fitnet_hint
from cvpdl.distill.config_checks import check_hint_stage


@dataclass(frozen=True)
class FitNetConfig:
    hint_weight: float = 100.0  # mdistiller FITNET.LOSS.FEAT_WEIGHT
    ce_weight: float = 1.0
    hint_stage: int = 1  # 0-based stage index; 1 = the middle of three stages (mdistiller's middle hint)
    regressor_relu: bool = True  # mdistiller ConvReg(use_relu=True): the target is a post-ReLU map


def conv_regressor(in_channels: int, out_channels: int, relu: bool) -> nn.Sequential:
    """mdistiller ``ConvReg`` for equal spatial sizes: 1×1 conv (with bias) → BatchNorm2d → ReLU."""
    layers = [nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class FitNet(Distiller):
    cfg: FitNetConfig

    def __init__(self, student, teacher, cfg: FitNetConfig):
        super().__init__(student, teacher, cfg)
        check_hint_stage(cfg.hint_stage, len(student.stages), len(teacher.stages))
        self.regressor = conv_regressor(student.stage_channels[cfg.hint_stage], teacher.stage_channels[cfg.hint_stage],
                                        relu=cfg.regressor_relu)

    def teacher_outputs(self, x):
        return {"stage_map": self.teacher(x, stage=self.cfg.hint_stage)["stage_map"]}

    def losses(self, x, y, teacher_out):
        out = self.student(x, stage=self.cfg.hint_stage)
        return {"loss_ce": self.cfg.ce_weight * F.cross_entropy(out["logits"], y),
                "loss_hint": self.cfg.hint_weight * fitnet_hint(self.regressor(out["stage_map"]),
                                                                 teacher_out["stage_map"])}
