"""The tiny interface every kd method implements (after mdistiller's ``Distiller``): named losses from a batch, with
the teacher frozen in eval mode, and ``fit``, how the method is trained (one standard loop unless it overrides it).
Teacher outputs arrive precomputed (no augmentation here, so they are fixed per sample)."""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from cvpdl.checkpoint import Checkpoint
from cvpdl.distill.networks import ConvNet
from cvpdl.distill.training import ClassificationData, KDFit, TrainConfig, train_population
from cvpdl.errors import NonFiniteLossError
from cvpdl.population import Member, member_recipe
from cvpdl.progress import EpochCallback, no_report


class Distiller(nn.Module):
    needs_teacher: ClassVar[bool] = True  # False: ``fit`` hands it no teacher (and no teacher outputs are computed)

    def __init__(self, student: ConvNet, teacher: ConvNet | None = None, cfg: Any = None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.cfg = cfg  # the method's own config dataclass (None for a method without one)
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

    @contextlib.contextmanager
    def configured(self, values: dict[str, Any]):
        """Inside the block ``self.cfg`` holds ``values`` in place of its own: in a population whose members differ in
        a setting, the batched model's one call reads each member's value (a tensor under ``vmap``)."""
        if not values:
            yield
            return
        own = self.cfg
        self.cfg = dataclasses.replace(own, **values)
        try:
            yield
        finally:
            self.cfg = own

    @classmethod
    def fit(cls, cfg: Any, make_student: Callable[[], ConvNet], teachers: list[ConvNet], data: ClassificationData,
            train_cfg: TrainConfig, members: list[Member], checkpoint: Checkpoint | None = None,
            on_epoch: EpochCallback = no_report) -> list[KDFit | NonFiniteLossError]:
        """Train the method from a fresh student per member (one member: a run alone; several: a population,
        ``cvpdl.population``), member i distilling from ``teachers[i]``: this distiller through the standard loop.
        A member whose loss diverged gets its error instead of a fit. Multi-stage methods (reverse feature KD)
        override it."""
        distillers = []
        for member, teacher in zip(members, teachers):
            with member.rng():
                distillers.append(cls(make_student(), teacher if cls.needs_teacher else None,
                                      member_config(cfg, member)))
        return fit_distillers(distillers, data, [member_recipe(train_cfg, member) for member in members], members,
                              checkpoint, on_epoch)


def member_config(cfg: Any, member: Member) -> Any:
    """The method's config with the member's settings in place; a setting may only be a float field (a loss weight or
    temperature: a value the loss multiplies or divides by, never one that shapes the model)."""
    if not member.settings:
        return cfg
    floats = {f.name for f in dataclasses.fields(cfg) if isinstance(getattr(cfg, f.name), float)} if cfg else set()
    if bad := sorted(set(member.settings) - floats):
        raise ValueError(f"a member's settings may vary only the method's float fields ({', '.join(sorted(floats))}),"
                         f" not {', '.join(bad)}")
    return dataclasses.replace(cfg, **{name: float(value) for name, value in member.settings.items()})


def fit_distillers(distillers: list[Distiller], data: ClassificationData, cfgs: list[TrainConfig],
                   members: list[Member], checkpoint: Checkpoint | None = None, on_epoch: EpochCallback = no_report
                   ) -> list[KDFit | NonFiniteLossError]:
    histories, diverged = train_population(distillers, data, cfgs, members, desc=type(distillers[0]).__name__,
                                           checkpoint=checkpoint, on_epoch=on_epoch)
    fits = []
    for index, (distiller, history) in enumerate(zip(distillers, histories)):
        student = {id(p) for p in distiller.student.parameters()}
        extra = sum(p.numel() for p in distiller.trainable_parameters() if id(p) not in student)
        fits.append(diverged.get(index) or KDFit(distiller.student, history, extra_parameters=extra))
    return fits
