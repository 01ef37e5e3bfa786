"""``torchrun --nproc_per_node N -m benchmark run …``: every rank trains each cell (DDP: gloo on CPU, NCCL on
CUDA; the training loops' side is ``cvpdl.ddp``), rank 0 alone writes results, cached models and tracks runs. A
plain ``python -m benchmark`` never touches ``torch.distributed``."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device) from torchrun's environment; (0, 1, device) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def agree(value):
    """Rank 0's ``value`` on every rank (e.g. whether a cell finished before)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def close() -> None:
    if active():
        dist.destroy_process_group()
