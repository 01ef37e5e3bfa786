"""GLD (Kim et al., ICCV 2021): global and local logits with densely connected relations, as the official code
(github.com/Youmin-Kim/GLD, ``gld.py``) computes them.

The final feature map is pooled into L = grid² regions; each region goes through the network's own head → local
logits. Global and local logits are divided by their row standard deviation before the softmax (the row mean
cancels in it). Loss = (1−α)·CE + α·KL_global + Σ_regions KL_local + β·relation, the relation comparing the
row-L2-normalised squared-distance matrices of all global + local raw logits of the batch (within and across
images), teacher vs student.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cvpdl.distill.base import Distiller
from cvpdl.distill.losses import gld_relation, standardize
from cvpdl.losses import distillation_kl


@dataclass(frozen=True)
class GLDConfig:
    alpha: float = 0.7
    beta: float = 500.0
    grid: int = 2  # the official ``div``
    temperature: float = 1.0  # on standardised logits, whose scale is already fixed (official: none)


class GLD(Distiller):
    cfg: GLDConfig

    def losses(self, x, y, teacher_out):
        cfg = self.cfg
        out = self.student(x)
        raw_local_s = self.student.local_logits(out["feature_map"], cfg.grid)  # B, L, K
        raw_local_t = self.teacher.local_logits(teacher_out["feature_map"], cfg.grid)
        global_s, global_t = standardize(out["logits"]), standardize(teacher_out["logits"])
        local_s, local_t = standardize(raw_local_s), standardize(raw_local_t)
        local = sum(distillation_kl(local_s[:, r], local_t[:, r], cfg.temperature) for r in range(local_s.shape[1]))
        # the relation sees the raw logits (official ``dist_preserve_loss(t_logits, s_logits)``)
        all_s = torch.cat([out["logits"], raw_local_s.flatten(0, 1)])
        all_t = torch.cat([teacher_out["logits"], raw_local_t.flatten(0, 1)])
        return {"loss_ce": (1 - cfg.alpha) * F.cross_entropy(out["logits"], y),
                "loss_global": cfg.alpha * distillation_kl(global_s, global_t, cfg.temperature),
                "loss_local": local,
                "loss_relation": cfg.beta * gld_relation(all_s, all_t)}
