"""Population training: P members of one method, each with its own seed, initialisation and data order, trained as
one batched model (PyTorch's model-ensembling recipe: ``torch.func.stack_module_state``, ``vmap``,
``functional_call``). On a GPU one small model per process leaves the device nearly idle; P members per step fill it.

A member's numbers equal the same seed trained alone (``cvpdl.engine.TrainLoop``) up to floating-point summation
order: the batched kernels add in another order (``docs/performance.md`` gives the measured difference and the
tolerance the tests hold it to). A member is a seed and its settings: members may differ in the float values the
method's loss reads (loss weights, temperatures: ``Member.settings``), so a sweep of 3 values × 8 seeds is one
population of 24; members may also differ in their recipe's learning rate and weight decay (``Member.recipe``: each
member's slices of the stacked parameters in param groups of their own, ``member_slices``), so a batch of tuning
trials is one population too. What a population does not do yet: DDP, and randomness inside a step (``vmap``'s
``randomness="different"`` draws every member's dropout from the one global generator, so with dropout a member's
masks differ from its run alone: the same distribution, another draw).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from cvpdl import ddp
from cvpdl.checkpoint import Checkpoint
from cvpdl.engine import Batch, EpochStats
from cvpdl.errors import NonFiniteLossError
from cvpdl.progress import EpochCallback, no_report


@dataclass
class Member:
    """One member's own randomness: its batch-order generator and the global torch RNG state it is built under (the
    state a run of this seed alone would have at the same point); and its settings, the method-config values it
    trains with in place of the method's (float fields its loss reads, e.g. ``{"hint_weight": 10.0}``); and its
    recipe, the training-recipe values it trains with in place of the shared recipe's (``{"lr": 0.1}``)."""

    generator: torch.Generator
    rng_state: torch.Tensor = field(default_factory=torch.get_rng_state)
    settings: dict[str, float] = field(default_factory=dict)
    recipe: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def rng(self):
        """The global torch RNG is this member's inside the block (and advances as it would alone)."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            yield
            self.rng_state = torch.get_rng_state()


class _Call(nn.Module):
    """``call(member, *args)`` as a module's forward, so that ``functional_call`` can run any method of a member."""

    def __init__(self, member: nn.Module, call: Callable[..., Any]):
        super().__init__()
        self.member, self.call = member, call

    def forward(self, *args):
        return self.call(self.member, *args)


class Population:
    """P modules of one architecture as stacked tensors (leading dimension P); ``__call__`` runs ``call(member,
    *args)`` for every member at once, each on its slice of ``args``. The modules themselves hold their own values
    again after ``write_back`` (for evaluation and saving)."""

    def __init__(self, modules: Sequence[nn.Module], call: Callable[..., Any]):
        self.modules = list(modules)
        params, self.buffers = stack_module_state(self.modules)
        trainable = {name for name, p in self.modules[0].named_parameters() if p.requires_grad}
        self.params = {name: value.detach().requires_grad_(name in trainable) for name, value in params.items()}
        self.base = _Call(copy.deepcopy(self.modules[0]).to("meta"), call)

        def one(params, buffers, *args):
            return functional_call(self.base, ({f"member.{k}": v for k, v in params.items()},
                                               {f"member.{k}": v for k, v in buffers.items()}), args)

        self.batched = vmap(one, randomness="different")
        # ops without a batching rule (torchvision's roi_align, CPU attention) run member by member under vmap, and
        # their backward would warn so at every step: the cost is measured (``perf --population``), not warned of
        torch._C._functorch._set_vmap_fallback_warning_enabled(False)

    def __len__(self) -> int:
        return len(self.modules)

    def __call__(self, *args):
        return self.batched(self.params, self.buffers, *args)

    @property
    def template(self) -> nn.Module:
        """The module every member's call runs as (on the meta device, its values swapped in): its modes and
        switches are every member's."""
        return self.base.member

    def train(self, mode: bool = True) -> None:
        self.template.train(mode)  # the modes the members' calls run in (e.g. a distiller's frozen teacher)

    def trainable(self) -> list[torch.Tensor]:
        return [value for value in self.params.values() if value.requires_grad]

    @torch.no_grad()
    def write_back(self) -> None:
        for index, module in enumerate(self.modules):
            for name, value in [*module.named_parameters(), *module.named_buffers()]:
                value.copy_((self.params if name in self.params else self.buffers)[name][index])

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"params": {k: v.detach() for k, v in self.params.items()}, "buffers": dict(self.buffers)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for part, saved in (("params", state["params"]), ("buffers", state["buffers"])):
            for name, value in getattr(self, part).items():
                value.copy_(saved[name])


# (every member's batch, in member order) → each loss term, one value per member (shape (P,)); the total is their
# sum (weighted by ``PopulationLoop.weights``)
PopulationLosses = Callable[[list[Batch]], dict[str, torch.Tensor]]
# (member index, epoch, its stats, its bookkeeping) → the values reported for the epoch (``cvpdl.engine.EpochEnd``
# per member; the members' modules hold their trained values when it is called)
MemberEpochEnd = Callable[[int, int, EpochStats, dict[str, Any]], dict[str, float]]


@dataclass
class PopulationLoop:
    """``cvpdl.engine.TrainLoop`` for a population: each member's seeded batch order, its loss terms, its divergence
    (a member whose total stops being finite is recorded in ``diverged`` and no longer trained or evaluated; the
    others go on), one backward and one optimiser step over the stacked parameters (SGD and Adam act element-wise,
    so every member's update is its own), the members' epoch ends and one checkpoint of the whole population."""

    name: str
    population: Population
    optimizer: torch.optim.Optimizer  # over ``population.trainable()``
    members: list[Member]
    dataset_size: int
    batch_size: int
    epochs: int
    steps_per_epoch: int | None = None  # default: full batches only, at least one
    step_scheduler: Any = None
    epoch_scheduler: Any = None
    clip_norm: float | None = None  # each member's total gradient norm is clipped to this (``clip_grad_norm_``)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # total = Σ weight · term, one weight per member
    train_mode: bool = True  # False: the members train in eval mode (RegionCLIP's frozen batch norm)
    checkpoint: Checkpoint | None = None
    on_epoch: EpochCallback = no_report
    diverged: dict[int, NonFiniteLossError] = field(default_factory=dict)

    def __post_init__(self):
        if ddp.rank_world()[1] > 1:
            raise NotImplementedError("a population trains in one process: run it without torchrun")

    @property
    def steps(self) -> int:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        return max(1, self.dataset_size // self.batch_size)

    def stateful(self) -> dict[str, Any]:
        parts = {"population": self.population, "optimizer": self.optimizer, "step_scheduler": self.step_scheduler,
                 "epoch_scheduler": self.epoch_scheduler}
        return {name: part for name, part in parts.items() if part is not None}

    def train_one_epoch(self, step_losses: PopulationLosses, epoch: int) -> list[EpochStats]:
        started = time.perf_counter()
        self.population.train(self.train_mode)
        orders = [ddp.global_order(self.dataset_size, member.generator).tolist() for member in self.members]
        count = len(self.members)
        sums: dict[str, torch.Tensor] = {}
        for step in range(self.steps):
            where = f"{self.name} epoch {epoch}, step {step + 1}"
            window = slice(step * self.batch_size, (step + 1) * self.batch_size)
            terms = step_losses([Batch(order[window], order[window], where) for order in orders])
            totals = sum(self.weights[name] * value if name in self.weights else value for name, value in terms.items())
            for index in torch.nonzero(~totals.detach().isfinite()).flatten().tolist():
                if index not in self.diverged:
                    self.diverged[index] = NonFiniteLossError(f"non-finite loss at {where} (a population member)")
            alive = torch.tensor([index not in self.diverged for index in range(count)])
            self.optimizer.zero_grad(set_to_none=True)
            if alive.any():
                totals[alive.to(totals.device)].sum().backward()
                grads = [value.grad for value in self.population.trainable() if value.grad is not None]
                if not alive.all():  # a diverged member's gradients are NaN: they must not reach the optimiser state
                    for grad in grads:
                        grad[~alive.to(grad.device)] = 0.0
                if self.clip_norm is not None:
                    _clip_each_member(grads, self.clip_norm)
                self.optimizer.step()
            if self.step_scheduler is not None:
                self.step_scheduler.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.detach() / self.steps
        if self.epoch_scheduler is not None:
            self.epoch_scheduler.step()
        seconds = time.perf_counter() - started
        return [EpochStats({name: value[index].item() for name, value in sums.items()}, seconds / count,
                           self.steps * self.batch_size) for index in range(count)]

    def run(self, step_losses: PopulationLosses, end_epoch: MemberEpochEnd, states: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
        """Train ``epochs`` epochs (from the checkpoint's last, if it holds one); each member's bookkeeping."""
        checkpoint = self.checkpoint or Checkpoint(None, self.name)
        stateful, first = self.stateful(), self.members[0].generator
        done = 0
        if (progress := checkpoint.restore(stateful, first)) is not None:
            done = progress["epoch"]
            for member, generator, rng, state, saved in zip(self.members, progress["generators"], progress["rngs"],
                                                            states, progress["states"]):
                member.generator.set_state(generator)
                member.rng_state = rng
                state.clear()
                state.update(saved)
            self.diverged = {index: NonFiniteLossError(message) for index, message in progress["diverged"].items()}
        for epoch in tqdm(range(done + 1, self.epochs + 1), desc=f"{self.name} ×{len(self.members)}", unit="epoch",
                          leave=False, initial=done, total=self.epochs):
            stats = self.train_one_epoch(step_losses, epoch)
            self.population.write_back()
            for index, state in enumerate(states):
                if index not in self.diverged:
                    self.on_epoch(f"{self.name} member {index}", epoch, self.epochs,
                                  end_epoch(index, epoch, stats[index], state))
            checkpoint.save(stateful, first, epoch=epoch, states=states,
                            generators=[member.generator.get_state() for member in self.members],
                            rngs=[member.rng_state for member in self.members],
                            diverged={index: str(err) for index, err in self.diverged.items()})
        return states


RECIPE = ("lr", "weight_decay")  # the recipe values a member may have of its own


def member_recipe(cfg: Any, member: Member) -> Any:
    """The shared training recipe (a dataclass with ``lr`` and ``weight_decay``) with the member's own values in
    place (``Member.recipe``)."""
    if bad := sorted(set(member.recipe) - set(RECIPE)):
        raise ValueError(f"a member's recipe may vary only {' and '.join(RECIPE)}, not {', '.join(bad)}")
    return dataclasses.replace(cfg, **{name: float(value) for name, value in member.recipe.items()})


def shared_recipe(cfgs: Sequence[Any]) -> Any:
    """The members' shared recipe (the first's), once their recipes are checked to differ in ``RECIPE`` only."""
    cfg = cfgs[0]
    if any(dataclasses.replace(other, **{name: getattr(cfg, name) for name in RECIPE}) != cfg for other in cfgs):
        raise ValueError("a population's members may differ in their recipe's lr and weight decay only")
    return cfg


def recipe_optimizer(population: Population, cfgs: Sequence[Any],
                     groups: Callable[[Iterable[tuple[str, torch.Tensor]], Any], list[dict]],
                     optimizer: Callable[[list[dict]], torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """The population's optimiser, ``optimizer`` over ``groups(named trainable parameters, recipe)``: over the
    stacked parameters where every member has one recipe (``cfgs[i]``), else over each member's slices
    (``member_slices``) in groups of its own recipe, linked to the stacked gradients by ``share_gradients``."""
    if len({tuple(getattr(cfg, name) for name in RECIPE) for cfg in cfgs}) == 1:
        return optimizer(groups([(name, value) for name, value in population.params.items() if value.requires_grad],
                                cfgs[0]))
    slices = member_slices(population)
    return share_gradients(optimizer([group for own, cfg in zip(slices, cfgs) for group in groups(own.items(), cfg)]),
                           population, slices)


def member_slices(population: Population) -> list[dict[str, torch.Tensor]]:
    """Member i's slices of the stacked trainable tensors, by name: tensors of their own that share the stacked
    storage, so an optimiser over them updates the population in place, each member in param groups of its own (its
    own lr and weight decay; a scheduler then sets every member's lr as it sets its run alone's). Give that optimiser
    to ``share_gradients``. The update is elementwise, so it is the stacked optimiser's, member by member."""
    return [{name: value.detach()[index] for name, value in population.params.items() if value.requires_grad}
            for index in range(len(population))]


def share_gradients(optimizer: torch.optim.Optimizer, population: Population,
                    slices: list[dict[str, torch.Tensor]]) -> torch.optim.Optimizer:
    """Hand ``optimizer`` (over ``member_slices``) each member's slice of the stacked gradients before every step,
    and clear the stacked gradients after it (the loop's ``zero_grad`` reaches only the slices)."""
    def link(*_):
        for index, named in enumerate(slices):
            for name, value in named.items():
                stacked = population.params[name].grad
                value.grad = None if stacked is None else stacked[index]

    def clear(*_):
        for value in population.trainable():
            value.grad = None

    optimizer.register_step_pre_hook(link)
    optimizer.register_step_post_hook(clear)
    return optimizer


@torch.no_grad()
def _clip_each_member(grads: list[torch.Tensor], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` for each member alone: its total norm over all its gradients, scaled by
    max_norm / (norm + 1e-6) where that is below 1 (the same formula, on each member's slice)."""
    norms = torch.stack([grad.flatten(1).pow(2).sum(1) for grad in grads]).sum(0).sqrt()  # (P,)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for grad in grads:
        grad.mul_(scale.view(-1, *[1] * (grad.dim() - 1)))
