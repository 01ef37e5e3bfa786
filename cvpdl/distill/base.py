"""The tiny interface every distiller implements (after mdistiller): named losses from a batch, with the teacher
frozen in eval mode. Teacher outputs arrive precomputed (no augmentation here, so they are fixed per sample)."""
from __future__ import annotations

import torch
from torch import nn

from cvpdl.distill.networks import ConvNet


class Distiller(nn.Module):
    def __init__(self, student: ConvNet, teacher: ConvNet | None = None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: its batch-norm statistics never move
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student plus the distiller's own modules (e.g. a FitNet regressor), never the teacher's."""
        teacher = {id(p) for p in self.teacher.parameters()} if self.teacher is not None else set()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in teacher]

    def teacher_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What ``losses`` reads from the teacher, for one batch (precomputed once over the training set)."""
        return self.teacher(x)

    def losses(self, x: torch.Tensor, y: torch.Tensor, teacher_out: dict[str, torch.Tensor] | None
               ) -> dict[str, torch.Tensor]:
        """Weighted loss terms by name (``loss_*``); the optimiser minimises their sum. Subclasses define it."""
        raise TypeError(f"{type(self).__name__} does not define its losses")
