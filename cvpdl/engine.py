"""The one training loop every trainer of the library runs: the detectors, the kd teacher, student and distillers,
the tiny CLIP, the localizer, RegionCLIP and backbone pretraining (after facebookresearch/detr's
``engine.train_one_epoch`` and mmengine's ``EpochBasedTrainLoop``).

A method supplies one step's named loss terms and what happens when an epoch ends (evaluation, probes, its own
history). The loop owns the rest: the seeded global batch order and this rank's share of each batch
(``cvpdl.ddp``), the divergence check, backward, gradient clipping, the optimiser and its schedulers, the epoch's
mean losses, buffer synchronisation, progress, the per-epoch callback, and the checkpoint (every RNG state and the
method's bookkeeping) that a rerun resumes from to the same result. The method keeps one line of DDP: wrapping its
own forward (``ddp.wrap``), since only it knows which call computes its gradients.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cvpdl import ddp
from cvpdl.checkpoint import Checkpoint
from cvpdl.progress import EpochCallback, no_report



@dataclass(frozen=True)
class Batch:
    """One step's global batch (dataset indices, in the epoch's seeded order), this rank's share of it (the batch
    itself with one process) and where it is, for error messages ("detr epoch 3, step 12")."""

    indices: list[int]
    mine: list[int]
    where: str


# one step → its named loss terms, unweighted (``TrainLoop.weights`` weighs them into the total)
StepLosses = Callable[[Batch], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class EpochStats:
    """What an epoch's training steps measured, handed to the method's epoch end."""

    losses: dict[str, float]  # each term's mean over the epoch's steps (the global batch's under DDP)
    seconds: float  # wall time of the steps, schedulers and buffer synchronisation
    samples: int  # samples trained on (all ranks)


# (epoch, 1-based; its stats; the method's bookkeeping, which it updates in place) → the values reported for the epoch
EpochEnd = Callable[[int, EpochStats, dict[str, Any]], dict[str, float]]


@dataclass
class TrainLoop:
    """One training run's constants. ``model`` is the module whose state the checkpoint holds, whose mode is set at
    each epoch's start (``train_mode``) and whose buffers are rank 0's after each epoch."""

    name: str  # the progress bar's, the callback's and the divergence message's stage name
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the batch order's (and whatever else the method draws from it)
    dataset_size: int
    batch_size: int
    epochs: int
    steps_per_epoch: int | None = None  # default: full batches only, at least one
    step_scheduler: Any = None  # stepped after every optimiser step
    epoch_scheduler: Any = None  # stepped after every epoch
    clip_parameters: Iterable[nn.Parameter] | None = None
    clip_norm: float | None = None  # the total gradient norm of ``clip_parameters`` is clipped to this
    weights: Mapping[str, float] = field(default_factory=dict)  # total loss = Σ weight · term (default weight 1)
    # True: the terms are means over this rank's shard, so the backward is weighted by the shard's share of the
    # global batch (DDP's average is then the global batch's mean) and the logged terms are all-reduced
    shard_means: bool = False
    train_mode: bool = True  # False: the model trains in eval mode (frozen batch norm, RegionCLIP's FrozenBN)
    after_step: Callable[[], None] | None = None  # e.g. clamping a parameter after the optimiser step
    checkpoint: Checkpoint | None = None
    on_epoch: EpochCallback = no_report

    @property
    def steps(self) -> int:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        return max(1, self.dataset_size // self.batch_size)

    def stateful(self) -> dict[str, Any]:
        parts = {"model": self.model, "optimizer": self.optimizer, "step_scheduler": self.step_scheduler,
                 "epoch_scheduler": self.epoch_scheduler}
        return {name: part for name, part in parts.items() if part is not None}

    def train_one_epoch(self, step_losses: StepLosses, epoch: int = 1) -> EpochStats:
        """One pass over the seeded order: forward, divergence check, backward, clipping, optimiser and schedulers."""
        started = time.perf_counter()
        self.model.train(self.train_mode)
        order = ddp.global_order(self.dataset_size, self.generator).tolist()
        world = ddp.rank_world()[1]
        sums: dict[str, float] = {}
        samples = 0
        for step in range(self.steps):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            mine = ddp.shard(batch)
            where = f"{self.name} epoch {epoch}, step {step + 1}"
            terms = step_losses(Batch(batch, mine, where))
            total = sum(self.weights[name] * value if name in self.weights else value for name, value in terms.items())
            ddp.check_finite_on_all_ranks(total, where)
            self.optimizer.zero_grad(set_to_none=True)
            (total * ddp.shard_weight(len(mine), len(batch)) if self.shard_means and world > 1 else total).backward()
            if self.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.clip_parameters, self.clip_norm)
            self.optimizer.step()
            if self.step_scheduler is not None:
                self.step_scheduler.step()
            if self.after_step is not None:
                self.after_step()
            logged = terms if not (self.shard_means and world > 1) else dict(zip(terms, ddp.global_mean(
                torch.stack([value.detach() for value in terms.values()]), len(mine), len(batch))))
            for name, value in logged.items():
                sums[name] = sums.get(name, 0.0) + value.item() / self.steps
            samples += len(batch)
        if self.epoch_scheduler is not None:
            self.epoch_scheduler.step()
        ddp.sync_buffers(self.model)  # rank 0's batch-norm statistics on every rank, so evaluation agrees
        return EpochStats(sums, time.perf_counter() - started, samples)

    def run(self, step_losses: StepLosses, end_epoch: EpochEnd | None = None,
            state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train ``epochs`` epochs (from the checkpoint's last, if it holds one) and return the method's
        bookkeeping ``state`` (plain containers: the checkpoint holds it under ``weights_only``). Without
        ``end_epoch`` the reported values are the epoch's mean loss terms (``train/<term>``), kept per epoch in
        ``state["losses"]``."""
        state = {} if state is None else state
        if end_epoch is None:
            end_epoch = log_losses
            state.setdefault("losses", {})
        checkpoint = self.checkpoint or Checkpoint(None, self.name)
        stateful = self.stateful()
        done = 0
        if (progress := checkpoint.restore(stateful, self.generator)) is not None:
            done = progress.pop("epoch")
            state.clear()
            state.update(progress)
        for epoch in tqdm(range(done + 1, self.epochs + 1), desc=self.name, unit="epoch", leave=False, initial=done,
                          total=self.epochs):
            values = end_epoch(epoch, self.train_one_epoch(step_losses, epoch), state)
            self.on_epoch(self.name, epoch, self.epochs, values)
            checkpoint.save(stateful, self.generator, epoch=epoch, **state)
        return state


def log_losses(epoch: int, stats: EpochStats, state: dict[str, Any]) -> dict[str, float]:
    """The default epoch end: each mean loss term kept in ``state["losses"]`` and reported as ``train/<term>``."""
    for name, value in stats.losses.items():
        state["losses"].setdefault(name, []).append(value)
    return {f"train/{name}": value for name, value in stats.losses.items()}
