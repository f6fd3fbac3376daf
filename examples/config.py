"""What a run computes (:class:`TrainConfig`) and how it executes (:class:`Runtime`)."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

import torch
from data import dataset_info
from torch import nn

import instance_reweight as ir

PRECISIONS = ("bf16", "fp32")


@dataclass
class TrainConfig:
    """Everything that decides what a run computes (plain values: JSON and ``weights_only`` safe).

    How a run is executed (device, ``torch.compile``, channels-last, progress, time budget, data
    folder) is not part of it: it may differ between the pieces of one run.
    """

    method: str
    data: str = "cifar10"
    model: str = "resnet18"
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    lr_schedule: List[List[float]] = field(default_factory=list)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    variant: str = "paper"
    overrides: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    precision: str = "fp32"
    monitor_size: int = 1000
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    max_steps_per_epoch: Optional[int] = None
    best_window: Optional[List[int]] = None
    preset: Optional[str] = None

    def __post_init__(self) -> None:
        dataset_info(self.data)
        if self.method not in ir.methods.names():
            raise ValueError(
                f"Expected --method to be one of {', '.join(ir.methods.names())}, got {self.method!r}."
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"Expected precision in {PRECISIONS}, got {self.precision!r}.")
        self._check_sizes()
        # Plain lists and JSON values only: comparable after a save/load, weights_only safe.
        self.lr_schedule = [[int(e), float(lr)] for e, lr in self.lr_schedule]
        if self.best_window is not None:
            self.best_window = [int(e) for e in self.best_window]
        try:
            self.overrides = json.loads(json.dumps(self.overrides))
        except TypeError as err:
            raise ValueError(
                f"Expected method hyper-parameters as numbers, strings, lists or None, got "
                f"{self.overrides!r} ({err})."
            ) from err
        # Unknown or invalid hyper-parameters fail here, before any data is read or file written.
        make_method(self, nn.Linear(1, 1))
        epochs = [e for e, _ in self.lr_schedule]
        if epochs != sorted(epochs) or any(e < 0 for e in epochs):
            raise ValueError(
                f"Expected the lr schedule's epochs non-negative and increasing, got {epochs}."
            )

    def _check_sizes(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected {name} >= 1, got {getattr(self, name)}.")
        if self.monitor_size < 0:
            raise ValueError(f"Expected monitor_size >= 0, got {self.monitor_size}.")
        for name in ("train_size", "test_size", "max_steps_per_epoch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(
                    f"Expected {name} >= 1 (or none for the whole split), got {getattr(self, name)}."
                )

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Expected settings among {sorted(names)}, got {unknown}.")
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of a 0-based epoch: the last schedule entry at or before it."""
        lr = self.lr
        for start, value in self.lr_schedule:
            if epoch >= start:
                lr = value
        return lr


def make_method(config: TrainConfig, model: nn.Module) -> ir.methods.Method:
    """``ir.methods.get`` with the run's method, variant and hyper-parameters."""
    return ir.methods.get(config.method, model, variant=config.variant, **config.overrides)


def accepted_overrides(method: str, variant: str = "paper") -> Tuple[str, ...]:
    """The hyper-parameter names ``ir.methods.get(method, ...)`` takes."""
    return tuple(ir.methods.get(method, nn.Linear(1, 1), variant=variant).params)


@dataclass
class Runtime:
    """How a run executes; none of it changes what is computed beyond float rounding."""

    data_root: str = "data"
    device: Optional[str] = None
    channels_last: Optional[bool] = None
    compile: bool = False
    progress: bool = True
    max_minutes: Optional[float] = None


def resolve_device(device: Optional[str], local_rank: int = 0) -> torch.device:
    """``device`` if given (``"cuda"`` meaning this process's GPU), else ``cuda:<local_rank>`` when
    CUDA is available, else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(f"cuda:{local_rank}" if device == "cuda" else device)


def device_name(device: torch.device) -> str:
    """The accelerator's name, or the CPU's, with the thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
