"""The little of ``torch.distributed`` that global normalisation needs."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["global_logsumexp", "world_size"]


def world_size() -> int:
    """Number of processes in the default group, 1 when ``torch.distributed`` is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_logsumexp(lse: Tensor, count: int) -> Tuple[Tensor, Tensor]:
    """A local ``log Σ ω`` and batch size combined over every process, with one collective.

    Gathering the logarithms (rather than summing the ω) keeps the sum free of underflow and overflow.
    Returns ``(log Σ_global ω, global batch size)`` as float64 scalars; the local values when
    ``torch.distributed`` is not initialised. No gradient flows.

    Example:
        >>> global_logsumexp(torch.tensor(0.5, dtype=torch.float64), 3)
        (tensor(0.5000, dtype=torch.float64), tensor(3., dtype=torch.float64))
    """
    lse = lse.detach().double()
    # a fill kernel, not ``new_tensor``: no host-to-device copy on CUDA
    local = torch.stack([lse, torch.full_like(lse, float(count))])
    if world_size() == 1:
        return local[0], local[1]
    gathered = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    stacked = torch.stack(gathered)
    return torch.logsumexp(stacked[:, 0], 0), stacked[:, 1].sum()
