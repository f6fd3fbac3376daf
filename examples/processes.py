"""This process's place under ``torchrun``: rank, world size, and the few collectives the loop needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from config import resolve_device
from torch import Tensor


@dataclass
class Processes:
    """This process's place under ``torchrun`` (rank 0 of 1 without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_max(self, value: float, device: torch.device) -> float:
        """The largest ``value`` over the processes (the same answer everywhere)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def gather(self, tensor: Tensor) -> Tensor:
        """Every process's equally shaped ``tensor``, concatenated along dimension 0."""
        if self.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)


def init_processes(device: Optional[str]) -> Processes:
    """Joins the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return Processes(rank, world_size, local_rank)
    use_nccl = resolve_device(device, local_rank).type == "cuda"
    if use_nccl:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_nccl else "gloo")
    return Processes(rank, world_size, local_rank, started_here=True)
