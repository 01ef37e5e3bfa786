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

import torch.nn.functional as F

from cvpdl.checkpoint import Checkpoint
from cvpdl.distill.base import Distiller, member_config
from cvpdl.distill.networks import ConvNet
from cvpdl.distill.student_baseline import StudentBaseline
from cvpdl.distill.training import ClassificationData, KDFit, TrainConfig, train_population
from cvpdl.errors import NonFiniteLossError
from cvpdl.population import Member, member_recipe
from cvpdl.progress import EpochCallback, no_report


@dataclass(frozen=True)
class ReverseKDConfig:
    reverse_weight: float = 1.0  # stage 1: weight of MSE(teacher embedding, stage-0 student embedding)
    teacher_epochs: int = 4  # stage 1 length (fine-tune of the trained teacher)
    feature_weight: float = 1.0  # stage 2: weight of MSE(student embedding, stage-1 teacher embedding)


@dataclass(frozen=True)
class MimicConfig:
    ce_weight: float  # 0: no task loss (stage 2)
    feature_weight: float


class EmbeddingMimic(Distiller):
    """CE (optional) + weight · MSE(model embedding, target embedding); used by stages 1 and 2."""

    cfg: MimicConfig

    def __init__(self, model: ConvNet, target: ConvNet, ce_weight: float, feature_weight: float):
        super().__init__(model, target, MimicConfig(ce_weight, feature_weight))

    def losses(self, x, y, teacher_out):
        out = self.student(x)
        losses = {"loss_feature": self.cfg.feature_weight * F.mse_loss(out["embedding"], teacher_out["embedding"])}
        if self.cfg.ce_weight:  # a stage's constant, never a member's setting
            losses["loss_ce"] = self.cfg.ce_weight * F.cross_entropy(out["logits"], y)
        return losses


class ReverseFeatureKD(EmbeddingMimic):
    """The method: its own losses are stage 2's (feature only, to the reversed teacher); ``fit`` runs stages 0-2."""

    def __init__(self, student: ConvNet, teacher: ConvNet, cfg: ReverseKDConfig):
        super().__init__(student, teacher, ce_weight=0.0, feature_weight=cfg.feature_weight)

    @classmethod
    def fit(cls, cfg: ReverseKDConfig, make_student: Callable[[], ConvNet], teachers: list[ConvNet],
            data: ClassificationData, train_cfg: TrainConfig, members: list[Member],
            checkpoint: Checkpoint | None = None, on_epoch: EpochCallback = no_report
            ) -> list[KDFit | NonFiniteLossError]:
        """Stages 0-2, each member's stage trained with the other members' (a population) or alone (one member)."""
        checkpoint = checkpoint or Checkpoint(None, "reverse")
        diverged: dict[int, NonFiniteLossError] = {}

        def stage(distillers, recipes, desc, name, evaluate=False):
            histories, failed = train_population(distillers, data, recipes, members, desc,
                                                 checkpoint.child(name), evaluate, on_epoch)
            for index, err in failed.items():
                diverged.setdefault(index, err)
            return histories

        def fresh_students() -> list[ConvNet]:
            students = []
            for member in members:
                with member.rng():
                    students.append(make_student())
            return students

        # stages 0 and 1 hand back only their weights: no per-epoch evaluation (it changes no weight)
        configs = [member_config(cfg, member) for member in members]  # each member's weights
        recipes = [member_recipe(train_cfg, member) for member in members]  # and its lr and weight decay
        stage0 = fresh_students()
        stage([StudentBaseline(s) for s in stage0], recipes, "reverse KD stage 0 (student)", "stage0")
        reversed_teachers = [copy.deepcopy(teacher).requires_grad_(True) for teacher in teachers]
        stage([EmbeddingMimic(t, s, ce_weight=1.0, feature_weight=c.reverse_weight)
               for t, s, c in zip(reversed_teachers, stage0, configs)],
              [replace(recipe, epochs=cfg.teacher_epochs, lr=recipe.lr / 3) for recipe in recipes],
              "reverse KD stage 1 (teacher)", "stage1")
        students = fresh_students()
        for student, teacher in zip(students, reversed_teachers):
            teacher.eval().requires_grad_(False)
            student.classifier.load_state_dict(teacher.classifier.state_dict())
            student.classifier.requires_grad_(False)
        histories = stage([cls(s, t, c) for s, t, c in zip(students, reversed_teachers, configs)], recipes,
                          "reverse KD stage 2 (student)", "stage2", evaluate=True)
        return [diverged.get(index) or KDFit(student, history, teacher_after_reverse=teacher, student_alone=alone)
                for index, (student, history, teacher, alone)
                in enumerate(zip(students, histories, reversed_teachers, stage0))]
