"""The integrations' toy data: ten learnable classes of 1×8×8 images, shared by every example here."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def toy_data(n: int, seed: int = 0) -> TensorDataset:
    """Ten classes of 1×8×8 images in [0, 1]: a fixed class pattern plus noise drawn from ``seed``
    (learnable in seconds)."""
    patterns = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = (0.5 * patterns[y] + 0.5 * torch.rand(n, 1, 8, 8, generator=generator)).clamp(0, 1)
    return TensorDataset(x, y)
