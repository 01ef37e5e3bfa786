"""Training and evaluation loops shared by the teacher, the student baseline and every distiller (the loop; the
method, ``Distiller`` and ``fit_distiller``, is ``cvpdl.distill.base``)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cvpdl import ddp
from cvpdl.checkpoint import Checkpoint
from cvpdl.engine import Batch, EpochEnd, EpochStats, TrainLoop
from cvpdl.errors import NonFiniteLossError
from cvpdl.population import Member, Population, PopulationLoop, recipe_optimizer, shared_recipe
from cvpdl.progress import EpochCallback, no_report


@dataclass(frozen=True)
class TrainConfig:
    """mdistiller's CIFAR-100 recipe (``configs/cifar100/*.yaml`` SOLVER): SGD, momentum 0.9, lr 0.05 at batch 64,
    weight decay 5e-4, the lr × 0.1 after epochs 150, 180 and 210 of 240 (here the same fractions of ``epochs``)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_stages: tuple[float, ...] = (0.625, 0.75, 0.875)  # fractions of the epochs
    lr_decay_rate: float = 0.1


@dataclass
class ClassificationData:
    """Image tensors (N, 3, H, W, normalised) and labels of the three splits."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


@dataclass
class TrainHistory:
    per_epoch: dict[str, list[float]] = field(default_factory=dict)  # val top1 and each loss term
    test_top1: list[float] = field(default_factory=list)  # per epoch; read only at the last and best-val epoch

    @property
    def top1_last(self) -> float:
        return self.test_top1[-1]

    @property
    def top1_best(self) -> float:
        """Test top-1 at the epoch with the best validation top-1 (model selection never sees the test set)."""
        return self.test_top1[int(np.argmax(self.per_epoch["top1"]))]


@dataclass
class KDFit:
    """What a kd method hands back: the trained student, its history, extra trainable parameters (FitNet's
    regressor) and, for reverse distillation, the teacher after stage 1 and the stage-0 student trained alone."""

    student: nn.Module
    history: TrainHistory
    extra_parameters: int = 0
    teacher_after_reverse: nn.Module | None = None
    student_alone: nn.Module | None = None


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512,
            forward: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
    """All outputs of ``model`` (or of ``forward``, a call into it) in eval mode over ``x``, concatenated."""
    was_training = model.training
    model.eval()
    forward = forward or model
    outs = [forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(model, x)["logits"].argmax(1) == y).float().mean().item()


def step_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
                  ) -> torch.optim.lr_scheduler.MultiStepLR:
    """mdistiller's ``adjust_learning_rate``, stepped once per batch: in epoch e (1-based) the lr is
    lr · rate^(number of decay stages s with e > s · epochs)."""
    milestones = [int(stage * cfg.epochs) * steps_per_epoch for stage in cfg.lr_decay_stages]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg.lr_decay_rate)


def train(distiller: nn.Module, data: ClassificationData, cfg: TrainConfig, generator: torch.Generator,
          desc: str = "train", checkpoint: Checkpoint | None = None, evaluate: bool = True,
          on_epoch: EpochCallback = no_report) -> TrainHistory:
    """SGD with mdistiller's step schedule (``TrainConfig``); teacher outputs are computed once (no augmentation:
    they are fixed).
    ``distiller`` is a ``cvpdl.distill.base.Distiller`` (its ``losses``, ``teacher_outputs``, trainable parameters).
    With a ``checkpoint``, the state is saved after every epoch and a saved one is resumed from. ``evaluate``
    False skips the per-epoch val/test top-1 (the history then holds the loss terms only): for a caller that
    discards the history (the cached teacher, reverse KD's stages 0 and 1). Evaluation runs in eval mode without
    gradients and draws no random numbers, so the trained weights are the same either way.

    Under torchrun (``cvpdl.ddp``) each rank trains on its shard of every global batch, the distiller's trainable
    parameters wrapped in DDP; with unequal shards each rank's mean loss is weighted by its share, so that DDP's
    gradient average is that of the global batch's mean loss. The logged losses are the global batch's; batch-norm
    statistics are each shard's during an epoch (no SyncBatchNorm) and rank 0's after it."""
    teacher_out = (predict(distiller.teacher, data.x_train, forward=distiller.teacher_outputs)
                   if distiller.teacher is not None else None)
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    steps = max(1, len(data.x_train) // cfg.batch_size)
    loop = TrainLoop(desc, distiller, optimizer, generator, len(data.x_train), cfg.batch_size, cfg.epochs,
                     step_scheduler=step_schedule(optimizer, cfg, steps), shard_means=True, checkpoint=checkpoint,
                     on_epoch=on_epoch)
    losses_of = ddp.wrap(distiller, distiller.losses)

    def step_losses(batch: Batch) -> dict[str, torch.Tensor]:
        idx = batch.mine
        return losses_of(data.x_train[idx], data.y_train[idx],
                         {k: v[idx] for k, v in teacher_out.items()} if teacher_out else None)

    end_epoch = _epoch_end(distiller, data, evaluate)
    state = loop.run(step_losses, end_epoch, {"per_epoch": {}, "test_top1": []})
    return TrainHistory(state["per_epoch"], state["test_top1"])


def _epoch_end(distiller: nn.Module, data: ClassificationData, evaluate: bool) -> EpochEnd:
    """What the end of an epoch records for one distiller: val top-1, each loss term and its share, test top-1."""
    def end_epoch(epoch: int, stats: EpochStats, state: dict) -> dict[str, float]:
        per_epoch = state["per_epoch"]
        distiller.eval()
        if evaluate:
            per_epoch.setdefault("top1", []).append(top1(distiller.student, data.x_val, data.y_val))
        for name, value in stats.losses.items():
            per_epoch.setdefault(name, []).append(value)
        if len(stats.losses) > 1:  # each weighted term's share of the epoch's mean total: which term drives training
            total_mean = sum(stats.losses.values())
            for name, value in stats.losses.items():
                per_epoch.setdefault(f"loss_share_{name.removeprefix('loss_')}", []).append(
                    value / total_mean if total_mean else float("nan"))
        if evaluate:
            state["test_top1"].append(top1(distiller.student, data.x_test, data.y_test))
        return {f"{'val' if name == 'top1' else 'train'}/{name}": values[-1] for name, values in per_epoch.items()}
    return end_epoch


def train_population(distillers: list[nn.Module], data: ClassificationData, cfgs: list[TrainConfig],
                     members: list[Member], desc: str = "train", checkpoint: Checkpoint | None = None,
                     evaluate: bool = True, on_epoch: EpochCallback = no_report
                     ) -> tuple[list[TrainHistory], dict[int, NonFiniteLossError]]:
    """``train`` for a population: distiller i is member i's (its own initialisation, teacher and batch order), all
    trained as one batched model (``cvpdl.population``) with ``train``'s optimiser and schedule, member i with
    recipe ``cfgs[i]``; the recipes may differ in lr and weight decay (``member_slices``), the distillers' configs in
    float loss settings (``member_settings``). One distiller goes through ``train`` itself. Returns every member's
    history and the members whose loss diverged (index → error)."""
    if len(distillers) == 1:
        return [train(distillers[0], data, cfgs[0], members[0].generator, desc, checkpoint, evaluate, on_epoch)], {}
    cfg = shared_recipe(cfgs)
    teacher_out = None
    if distillers[0].teacher is not None:
        outputs = [predict(d.teacher, data.x_train, forward=d.teacher_outputs) for d in distillers]
        teacher_out = {key: torch.stack([out[key] for out in outputs]) for key in outputs[0]}
    settings = {name: values.to(data.x_train.device) for name, values in member_settings(distillers).items()}

    def losses(distiller, x, y, t, values):
        with distiller.configured(values):
            return distiller.losses(x, y, t)

    population = Population(distillers, losses)
    optimizer = recipe_optimizer(
        population, cfgs, lambda named, recipe: [{"params": [value for _, value in named], "lr": recipe.lr,
                                                  "weight_decay": recipe.weight_decay}],
        lambda groups: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum))
    steps = max(1, len(data.x_train) // cfg.batch_size)
    loop = PopulationLoop(desc, population, optimizer, members, len(data.x_train), cfg.batch_size, cfg.epochs,
                          step_scheduler=step_schedule(optimizer, cfg, steps), checkpoint=checkpoint,
                          on_epoch=on_epoch)

    def step_losses(batches: list[Batch]) -> dict[str, torch.Tensor]:
        idx = torch.stack([torch.as_tensor(batch.mine) for batch in batches])  # P, B
        # no teacher: {} (vmap maps tensors, not None), which a teacher-free method ignores as it ignores None
        return population(data.x_train[idx], data.y_train[idx],
                          {k: torch.stack([v[i][row] for i, row in enumerate(idx)]) for k, v in teacher_out.items()}
                          if teacher_out else {}, settings)

    end_epochs = [_epoch_end(distiller, data, evaluate) for distiller in distillers]
    states = loop.run(step_losses, lambda index, *args: end_epochs[index](*args),
                      [{"per_epoch": {}, "test_top1": []} for _ in distillers])
    return [TrainHistory(state["per_epoch"], state["test_top1"]) for state in states], loop.diverged


def member_settings(distillers: list[nn.Module]) -> dict[str, torch.Tensor]:
    """The config fields in which the members differ, one value per member (shape (P,)); each must be a float (a
    loss weight or temperature), read by the loss, never a value that shapes the model."""
    configs = [distiller.cfg for distiller in distillers]
    if configs[0] is None:
        return {}
    if len({type(cfg) for cfg in configs}) > 1:
        raise ValueError("a population's members are one method: their configs must be of one type")
    differing = sorted(f.name for f in dataclasses.fields(configs[0])
                       if len({getattr(cfg, f.name) for cfg in configs}) > 1)
    if shaping := [name for name in differing if not all(isinstance(getattr(cfg, name), float) for cfg in configs)]:
        raise ValueError(f"the members differ in {', '.join(shaping)}, which is not a float loss setting: they "
                         "cannot train as one population")
    return {name: torch.tensor([getattr(cfg, name) for cfg in configs]) for name in differing}
