"""PyTorch DDP through ``torchrun``: process-group set-up from the environment.

Launch multi-GPU training with ``torchrun --nproc_per_node=N ...``; torchrun sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``. With ``WORLD_SIZE`` unset or 1 everything runs in one process
and no process group is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job.

    Attributes:
        rank: global rank (0 writes files and prints).
        local_rank: rank on this node (selects the CUDA device).
        world_size: number of processes.
        device: the device this process trains on.
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def world_size_from_env() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str | torch.device) -> DistInfo:
    """Initialise the process group when ``WORLD_SIZE > 1`` (``init_method="env://"``).

    ``device`` is the requested device (``"cuda"``, ``"cuda:0"``, ``"cpu"``); under DDP on CUDA
    each process takes ``cuda:LOCAL_RANK``. The backend is NCCL on CUDA and Gloo on CPU.
    """
    device = torch.device(device)
    world = world_size_from_env()
    if world <= 1:
        return DistInfo(0, 0, 1, device)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(rank, local, world, device)


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op in one process)."""
    if info.distributed and dist.is_initialized():
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.local_rank])
        else:
            dist.barrier()


def broadcast_flag(info: DistInfo, value: bool) -> bool:
    """Rank 0's ``value`` on every process (e.g. "stop now")."""
    if not info.distributed:
        return value
    t = torch.tensor([1 if value else 0], device=info.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def cleanup(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup` created one."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
