"""What a run computes (:class:`TrainConfig`) and how it executes (:class:`Runtime`)."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from arguments import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Bounds
from data import dataset_info
from torch import nn

import instance_reweight as ir

PRECISIONS = ("bf16", "fp32")
MOMENTUM = Bounds(0, 1, open_high=True)
OPTIMIZERS = ("sgd", "adam")
# Method hyper-parameters that may be a schedule over epochs (a callable in ir.methods), written as
# data here since config.json is JSON: [[epoch, value], ...] or "EPOCH:VALUE,...".
SCHEDULED = ("tau",)


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
    optimizer: str = "sgd"  # absent from configs written before Adam: those are SGD runs
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
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Expected --optimizer in {OPTIMIZERS}, got {self.optimizer!r}.")
        if self.optimizer == "adam" and self.momentum != 0:
            raise ValueError(
                f"Expected no momentum with Adam (its betas, the defaults (0.9, 0.999), play that "
                f"part), got momentum={self.momentum}. Leave --momentum out with --optimizer adam."
            )
        self._check_numbers()
        # Plain lists and JSON values only: comparable after a save/load, weights_only safe.
        self.lr_schedule = [[int(e), float(lr)] for e, lr in self.lr_schedule]
        if self.best_window is not None:
            self.best_window = [int(e) for e in self.best_window]
        self.overrides = {
            key: epoch_schedule(value, key)
            if key in SCHEDULED and isinstance(value, (str, list, tuple))
            else value
            for key, value in self.overrides.items()
        }
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

    def _check_numbers(self) -> None:
        """Every number finite and in range, before anything is read or computed."""
        for name, bounds in (("epochs", AT_LEAST_ONE), ("batch_size", AT_LEAST_ONE)):
            bounds.check(getattr(self, name), name, integer=True)
        NON_NEGATIVE.check(self.seed, "seed", integer=True)
        NON_NEGATIVE.check(self.monitor_size, "monitor_size", integer=True)
        for name in ("train_size", "test_size", "max_steps_per_epoch"):
            if getattr(self, name) is not None:
                AT_LEAST_ONE.check(
                    getattr(self, name), f"{name} (or none for the whole split)", True
                )
        POSITIVE.check(self.lr, "lr")
        MOMENTUM.check(self.momentum, "momentum")
        NON_NEGATIVE.check(self.weight_decay, "weight_decay")
        for epoch, lr in self.lr_schedule:
            NON_NEGATIVE.check(epoch, "an lr schedule's epoch", integer=True)
            POSITIVE.check(lr, f"the lr schedule's rate from epoch {epoch}")
        info = dataset_info(self.data)
        for name, split in (("train_size", info.train_examples), ("test_size", info.test_examples)):
            size = getattr(self, name)
            if size is not None and size > split:
                raise ValueError(
                    f"Expected {name} at most the {split} images of {self.data}'s "
                    f"{name.split('_')[0]} split, got {size}. Leave it out for the whole split."
                )
        if self.best_window is not None:
            window = list(self.best_window) if isinstance(self.best_window, (list, tuple)) else []
            for epoch in window:
                NON_NEGATIVE.check(epoch, "best_window's epochs", integer=True)
            if len(window) != 2 or window[0] > window[1]:
                raise ValueError(
                    f"Expected best_window as FIRST LAST with FIRST <= LAST, got {self.best_window}."
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
    """``ir.methods.get`` with the run's method, variant and hyper-parameters (a schedule of
    ``SCHEDULED`` as the callable ``epoch -> value`` the method takes)."""
    overrides = {
        key: StepSchedule(value) if key in SCHEDULED and isinstance(value, list) else value
        for key, value in config.overrides.items()
    }
    return ir.methods.get(config.method, model, variant=config.variant, **overrides)


def make_optimizer(
    config: TrainConfig, parameters: Iterable[nn.Parameter]
) -> torch.optim.Optimizer:
    """The run's optimiser: SGD (lr, momentum, weight decay) or Adam (lr, weight decay, default betas)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def parse_schedule(
    text: str, option: str, value: Callable[[str], Any], example: str, what: str = "VALUE"
) -> List[List[Any]]:
    """``"60:0.01,90:0.001"`` -> ``[[60, 0.01], [90, 0.001]]``: 0-based epoch, then the value from it
    on, read with ``value`` (``float``, ``int``); ``option``, ``what`` and ``example`` word the error."""
    if not text.strip():
        return []
    schedule = []
    for part in text.split(","):
        epoch, sep, item = part.partition(":")
        try:
            schedule.append([int(epoch), value(item)])
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(
                f"Expected {option} as EPOCH:{what} pairs separated by commas (e.g. {example}), "
                f"got {text!r}."
            )
    return schedule


def epoch_schedule(value: Any, key: str) -> List[List[int]]:
    """A schedule of the integer hyper-parameter ``key`` (FAT's τ) as ``[[epoch, value], ...]`` from
    that list or from ``"EPOCH:VALUE,..."``; the first entry at epoch 0, epochs increasing, values
    non-negative integers.

    Example:
        >>> epoch_schedule("0:0,7:3,12:6", "tau")
        [[0, 0], [7, 3], [12, 6]]
    """
    pairs = (
        parse_schedule(value, f"--set {key}=...", int, "0:0,7:3,12:6")
        if isinstance(value, str)
        else value
    )
    ok = all(
        isinstance(p, (list, tuple))
        and len(p) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in p)
        for p in pairs
    )
    epochs = [p[0] for p in pairs] if ok else []
    if not ok or not epochs or epochs[0] != 0 or epochs != sorted(set(epochs)):
        raise ValueError(
            f"Expected {key} as a schedule [[0, value], [epoch, value], ...] (or '0:0,7:3,12:6'): "
            f"non-negative integers, the first at epoch 0, epochs increasing; got {value!r}."
        )
    return [[int(e), int(v)] for e, v in pairs]


class StepSchedule:
    """``epoch -> value`` of a ``[[epoch, value], ...]`` schedule: the last entry at or before
    ``epoch``.

    Example:
        >>> [StepSchedule([[0, 0], [7, 3], [12, 6]])(e) for e in (0, 6, 7, 11, 12, 19)]
        [0, 0, 3, 3, 6, 6]
    """

    def __init__(self, pairs: List[List[Any]]) -> None:
        self.pairs = pairs

    def __call__(self, epoch: int) -> Any:
        return [v for e, v in self.pairs if e <= epoch][-1]

    def __repr__(self) -> str:
        return f"StepSchedule({self.pairs})"


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
