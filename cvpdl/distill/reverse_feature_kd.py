"""Reverse feature distillation (Li et al., CVPR 2023, "Rethinking feature-based knowledge distillation for face
recognition"): a large teacher's embedding has a lower intrinsic dimension than a small student can reach, so
plain mimicking is hard. Stage 0 trains the student alone; stage 1 trains the teacher with CE + MSE to the frozen
stage-0 student embedding (shrinking the gap; here a fine-tune of the cached teacher); stage 2 trains a fresh
student on MSE to that teacher's embedding only. The stage-2 student classifies with the stage-1 teacher's
(frozen) classifier: its embedding lives in the teacher's space, and face recognition has no classifier at all.
The paper's "student proxy" (a refinement of the stage-1 target) is not implemented: stage 1 mimics the stage-0
student itself, the paper's plain reverse distillation. The stage-0 student is handed back so that the premise
(teacher intrinsic dimension vs that of a student trained alone) can be measured.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from cvpdl.checkpoint import Checkpoint
from cvpdl.distill.base import Distiller
from cvpdl.distill.networks import ConvNet
from cvpdl.distill.student_baseline import StudentBaseline
from cvpdl.distill.training import ClassificationData, KDFit, TrainConfig, train
from cvpdl.progress import EpochCallback, no_report


@dataclass(frozen=True)
class ReverseKDConfig:
    reverse_weight: float = 1.0  # stage 1: weight of MSE(teacher embedding, stage-0 student embedding)
    teacher_epochs: int = 4  # stage 1 length (fine-tune of the trained teacher)
    feature_weight: float = 1.0  # stage 2: weight of MSE(student embedding, stage-1 teacher embedding)


class EmbeddingMimic(Distiller):
    """CE (optional) + weight · MSE(model embedding, target embedding); used by stages 1 and 2."""

    def __init__(self, model: ConvNet, target: ConvNet, ce_weight: float, feature_weight: float):
        super().__init__(model, target)
        self.ce_weight, self.feature_weight = ce_weight, feature_weight

    def losses(self, x, y, teacher_out):
        out = self.student(x)
        losses = {"loss_feature": self.feature_weight * F.mse_loss(out["embedding"], teacher_out["embedding"])}
        if self.ce_weight:
            losses["loss_ce"] = self.ce_weight * F.cross_entropy(out["logits"], y)
        return losses


class ReverseFeatureKD(EmbeddingMimic):
    """The method: its own losses are stage 2's (feature only, to the reversed teacher); ``fit`` runs stages 0-2."""

    def __init__(self, student: ConvNet, teacher: ConvNet, cfg: ReverseKDConfig):
        super().__init__(student, teacher, ce_weight=0.0, feature_weight=cfg.feature_weight)
        self.cfg = cfg

    @classmethod
    def fit(cls, cfg: ReverseKDConfig, make_student: Callable[[], ConvNet], teacher: ConvNet, data: ClassificationData,
            train_cfg: TrainConfig, generator: torch.Generator, checkpoint: Checkpoint | None = None,
            on_epoch: EpochCallback = no_report) -> KDFit:
        checkpoint = checkpoint or Checkpoint(None, "reverse")
        stage0 = make_student()
        # stages 0 and 1 hand back only their weights: no per-epoch evaluation (it changes no weight)
        train(StudentBaseline(stage0), data, train_cfg, generator, desc="reverse KD stage 0 (student)",
              checkpoint=checkpoint.child("stage0"), evaluate=False,
              on_epoch=on_epoch)
        reversed_teacher = copy.deepcopy(teacher).requires_grad_(True)
        train(EmbeddingMimic(reversed_teacher, stage0, ce_weight=1.0, feature_weight=cfg.reverse_weight), data,
              replace(train_cfg, epochs=cfg.teacher_epochs, lr=train_cfg.lr / 3), generator,
              desc="reverse KD stage 1 (teacher)", checkpoint=checkpoint.child("stage1"), evaluate=False,
              on_epoch=on_epoch)
        reversed_teacher.eval().requires_grad_(False)
        student = make_student()
        student.classifier.load_state_dict(reversed_teacher.classifier.state_dict())
        student.classifier.requires_grad_(False)
        history = train(cls(student, reversed_teacher, cfg), data, train_cfg, generator,
                        desc="reverse KD stage 2 (student)", checkpoint=checkpoint.child("stage2"), on_epoch=on_epoch)
        return KDFit(student, history, teacher_after_reverse=reversed_teacher, student_alone=stage0)
