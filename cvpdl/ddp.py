"""Data parallelism shared by every training loop (``torchrun``: DDP, gloo on CPU, NCCL on CUDA).

The rules, the same in every loop: each step's global batch is drawn from rank 0's seeded order (``global_order``),
each rank trains on every world-th sample of it (``shard``, a DistributedSampler's split), the trained module is
wrapped in ``DistributedDataParallel`` (``wrap``; gradients averaged over ranks), a non-finite loss is agreed across
ranks before anyone raises (``check_finite_on_all_ranks``), and buffers (batch-norm statistics) are rank 0's after
each epoch (``sync_buffers``), so that evaluation agrees on every rank. Contrastive losses gather the embeddings of
every rank with their gradient (``all_gather_with_grad``, as open_clip's ``ClipLoss(gather_with_grad=True)``), so
that every rank computes the loss of the whole global batch.

Without ``torch.distributed`` initialised every helper is the identity (or a no-op), so a single-process run is
plain single-process training.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvpdl.errors import check_finite

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """(this process's rank, number of ranks); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def global_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """A seeded permutation of ``range(n)``: the order of one epoch's global batches. Under DDP it is rank 0's, on
    every rank (a loop whose ranks draw different amounts from ``generator``, e.g. DN-DETR's box noise, would
    otherwise drift apart)."""
    order = torch.randperm(n, generator=generator)
    if rank_world()[1] > 1:
        box = [order]
        dist.broadcast_object_list(box, src=0)
        order = box[0]
    return order


def shard(batch: Sequence[T] | torch.Tensor) -> Sequence[T] | torch.Tensor:
    """This rank's share of a global batch: every world-th item from its rank; the batch itself with one rank."""
    rank, world = rank_world()
    return batch if world == 1 else batch[rank::world]


def gathered(batch: Sequence[T]) -> list[T]:
    """The global batch in the order ``all_gather`` returns the shards (rank 0's, then rank 1's, …); the batch
    itself with one rank. Losses over all shards (contrastive ones) index their targets in this order."""
    world = rank_world()[1]
    if world == 1:
        return batch
    return [item for r in range(world) for item in batch[r::world]]


def shard_weight(local: int, total: int) -> float:
    """The factor that makes DDP's average of per-rank mean losses the mean over the global batch when shards
    are unequal (a batch size not divisible by the world size): ``local · world / total``; 1 with equal shards."""
    return local * rank_world()[1] / total


def wrap(module: nn.Module, forward: Callable | None = None, find_unused_parameters: bool = False) -> Callable:
    """What a training loop calls for its forward pass: ``forward`` (default: ``module`` itself) run through
    ``DistributedDataParallel`` over ``module``'s trainable parameters under DDP; ``forward`` or ``module``
    unchanged otherwise. ``forward`` must compute everything that has a gradient from ``module`` in one call."""
    if rank_world()[1] == 1:
        return forward or module
    return DistributedDataParallel(module if forward is None else _Forward(module, forward),
                                   find_unused_parameters=find_unused_parameters)


class _Forward(nn.Module):
    """``module``'s parameters with another function as ``forward`` (DDP only wraps a module's ``forward``)."""

    def __init__(self, module: nn.Module, forward: Callable):
        super().__init__()
        self.module, self.function = module, forward

    def forward(self, *args, **kwargs):
        return self.function(*args, **kwargs)


def check_finite_on_all_ranks(value: torch.Tensor, where: str, what: str = "loss") -> None:
    """``check_finite``, agreed across DDP ranks: one rank raising alone would leave the others in an all-reduce."""
    if rank_world()[1] > 1:
        bad = (~value.detach().isfinite()).any().float().reshape(1)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            value = torch.full_like(value.detach(), float("nan"))
    check_finite(value, where, what)


@torch.no_grad()
def sync_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics, which each rank updates from its own shard) on every rank."""
    if rank_world()[1] > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def global_mean(values: torch.Tensor, local: int, total: int) -> torch.Tensor:
    """Per-rank means of ``local`` samples (detached) → their mean over the ``total`` samples of the global batch,
    on every rank (for logging the loss of the global batch); ``values`` itself with one rank."""
    if rank_world()[1] == 1:
        return values
    weighted = values.detach() * local
    dist.all_reduce(weighted)
    return weighted / total


def _sizes(tensor: torch.Tensor) -> list[int]:
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(rank_world()[1])]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _padded(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([tensor, tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))])


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 (rank order; sizes may differ), with the gradient flowing
    back to each rank's own rows (``torch.distributed.nn.functional.all_gather``, whose backward sums the gradients
    of every rank's loss). Every rank then computes the loss of the whole global batch, so DDP's average of the
    parameter gradients is the single-process gradient of that loss. The tensor itself with one rank."""
    if rank_world()[1] == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    sizes = _sizes(tensor)
    parts = all_gather(_padded(tensor, max(sizes)))
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


@torch.no_grad()
def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """``all_gather_with_grad`` without the gradient (pseudo-labels, teacher outputs)."""
    if rank_world()[1] == 1:
        return tensor
    sizes = _sizes(tensor)
    parts = [torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
             for _ in sizes]
    dist.all_gather(parts, _padded(tensor, max(sizes)).contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()
