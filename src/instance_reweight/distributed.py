"""The little of ``torch.distributed`` that global normalisation needs."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_sum", "world_size"]


def world_size() -> int:
    """Number of processes in the default group, 1 when ``torch.distributed`` is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(*values: Tensor) -> Tuple[Tensor, ...]:
    """Scalars summed over every process of the default group, with one all-reduce.

    Returns the values unchanged when ``torch.distributed`` is not initialised. No gradient flows.

    Example:
        >>> all_reduce_sum(torch.tensor(2.0), torch.tensor(3.0))
        (tensor(2.), tensor(3.))
    """
    if world_size() == 1:
        return values
    stacked = torch.stack([v.detach() for v in values])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return tuple(stacked.unbind())
