"""The training loop of ``train.py`` and ``reproduce.py``: epochs, checkpoints, branching, logs, DDP.

One run lives in one folder::

    OUT/config.json      the resolved settings (also inside every checkpoint)
    OUT/checkpoint.pt    written atomically after every epoch; ``--resume`` continues from it
    OUT/best.pt          the best epoch of the preset's window on the monitored test PGD accuracy
    OUT/log.jsonl        one JSON object per epoch (see :class:`EpochStats` and :func:`monitor`)
    OUT/status.json      epochs done, whether the run is complete

Exactness. Every random stream of epoch ``e`` is seeded from ``(seed, e, rank)`` at the start of the
epoch: the global generator (the attacks' random starts, dropout) and the augmentation generator; the
data order comes from ``seed + e`` (:class:`data.DeviceLoader`). The learning rate is a function of
the epoch and the burn-in state is saved, so a run stopped after any epoch and resumed draws the same
numbers as a straight run, and on a CPU in float32 ends with bit-identical parameters; no generator
state needs saving. A branch (``init_from``) starts from another run's checkpoint with another method:
it keeps that run's parameters, BatchNorm statistics, optimiser state (momentum), epoch and hence
learning-rate position and random streams, and records the change in ``lineage``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import pickle
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
)

import numpy as np
import torch
import torch.distributed as dist
from data import DeviceLoader, dataset_info, load_dataset
from models import build_model
from torch import Tensor, nn

import instance_reweight as ir
from instance_reweight import evaluation

CHECKPOINT_FORMAT = "instance_reweight-examples/1"
PRECISIONS = ("bf16", "fp32")
# Settings a branch must share with the run it starts from: the same network on the same data.
BRANCH_FIXED = ("data", "model", "batch_size", "seed")
# Settings a resumed run may change: only how long it runs.
RESUME_MUTABLE = ("epochs",)

T = TypeVar("T")


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
        ir.methods.get(self.method, nn.Linear(1, 1), variant=self.variant, **self.overrides)
        epochs = [e for e, _ in self.lr_schedule]
        if epochs != sorted(epochs) or any(e < 0 for e in epochs):
            raise ValueError(
                f"Expected the lr schedule's epochs non-negative and increasing, got {epochs}."
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


def make_method(config: TrainConfig, model: nn.Module) -> ir.methods.Method:
    """``ir.methods.get`` with the run's method, variant and hyper-parameters."""
    return ir.methods.get(config.method, model, variant=config.variant, **config.overrides)


def accepted_overrides(method: str, variant: str = "paper") -> Tuple[str, ...]:
    """The hyper-parameter names ``ir.methods.get(method, ...)`` takes."""
    return tuple(ir.methods.get(method, nn.Linear(1, 1), variant=variant).params)


# --- checkpoints ------------------------------------------------------------------------------


def state_digest(state: Any) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes, every other value's
    ``repr``, in order (lists and tuples alike, as a save/load may turn one into the other)."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"tensor {t.dtype} {tuple(value.shape)};".encode())
            digest.update(t.view(torch.uint8).numpy())
        elif isinstance(value, dict):
            digest.update(f"dict {len(value)};".encode())
            for key, item in value.items():
                feed(key)
                feed(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"seq {len(value)};".encode())
            for item in value:
                feed(item)
        else:
            digest.update(f"{value!r};".encode())

    feed(state)
    return digest.hexdigest()


def _write_replace(data: bytes, path: Path, verify: Optional[Callable[[Path], Any]] = None) -> None:
    """Writes ``data`` to a temporary file beside ``path``, fsyncs it, runs ``verify`` on it, then
    renames it over ``path`` and fsyncs the folder: ``path`` is always the old or the new whole file,
    and the old one stays until the new one is on disk and verified."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def save_atomic(state: Dict[str, Any], path: Path) -> None:
    """``torch.save`` of ``state`` with its :func:`state_digest` under ``"sha256"``, written by
    :func:`_write_replace` and verified with :func:`load_checkpoint` before it replaces ``path``."""
    buffer = io.BytesIO()
    torch.save({**state, "sha256": state_digest(state)}, buffer)
    _write_replace(buffer.getvalue(), path, verify=load_checkpoint)


def write_json_atomic(obj: Any, path: Path) -> None:
    _write_replace((json.dumps(obj, indent=2) + "\n").encode(), path)


_UNREADABLE = (RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """A checkpoint written by :func:`train`, loaded with ``weights_only=True`` onto the CPU, its
    checksum verified (checkpoints written before checksums were stored load unverified).

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: for an empty, truncated or corrupted file (the checksum of its content differs
            from the one stored in it) or one not written by ``train.py``; the message names the
            file and what to do.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"Expected a checkpoint at '{path}', got no such file.")
    fix = (
        "Restore it from a copy, or delete it and train again (train.py --resume restarts a run "
        "whose checkpoint.pt is missing)."
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as err:
        size = Path(path).stat().st_size
        raise ValueError(
            f"Expected a complete checkpoint at '{path}', got a file of {size} bytes that torch.load "
            f"cannot read ({type(err).__name__}: {str(err)[:200]}). It is truncated or corrupted. {fix}"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"Expected a checkpoint written by examples/train.py ({CHECKPOINT_FORMAT}) at '{path}', "
            f"got {state.get('format') if isinstance(state, dict) else type(state).__name__}."
        )
    stored = state.pop("sha256", None)
    if stored is not None and stored != state_digest(state):
        raise ValueError(
            f"Expected the content of '{path}' to match the checksum stored with it, got a "
            f"different one: the file is corrupted (flipped bytes). {fix}"
        )
    return state


def model_from_checkpoint(state: Dict[str, Any]) -> nn.Module:
    """The network of a checkpoint, parameters loaded, float32, on the CPU."""
    config = TrainConfig.from_dict(state["config"])
    info = dataset_info(config.data)
    model = build_model(config.model, info.num_classes, info.in_channels)
    model.load_state_dict(state["model"])
    return model


def read_log(path: Path) -> List[Dict[str, Any]]:
    """The per-epoch records of a ``log.jsonl`` (empty if there is none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- distributed ------------------------------------------------------------------------------


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


# --- per-epoch statistics ---------------------------------------------------------------------

MARGIN_BINS = 20  # PM histogram: 20 bins of width 0.1 on [-1, 1]
WEIGHT_BINS = (-4.0, 2.0, 24)  # log10 of the normalised weight: 24 bins of a quarter decade


def epoch_seeds(seed: int, epoch: int, rank: int) -> Tuple[int, int]:
    """Two independent 63-bit seeds for epoch ``epoch`` of process ``rank``."""
    words = np.random.SeedSequence([seed, epoch, rank]).generate_state(2, dtype=np.uint64)
    return int(words[0] >> np.uint64(1)), int(words[1] >> np.uint64(1))


class EpochStats:
    """Collects, without host synchronisation, what one epoch's batches say; summarises at the end.

    The summary (one JSON-ready dict): ``loss`` (mean training loss), ``examples``; for methods whose
    signal is κ (GAIRAT family and the baselines) ``kappa_mean``, ``kappa_median`` (GAIRAT Figure 4)
    and ``kappa_hist`` (counts of κ = 0..K); for the MAIL family ``margin_mean``, ``margin_median``
    and ``margin_hist`` (PM_adv in 20 bins on [-1, 1]); for reweighting methods ``weight_min``,
    ``weight_mean``, ``weight_max``, ``weight_std`` and ``weight_hist`` (log10 w in 24 bins on
    [-4, 2], values outside counted in the end bins). All over every training example of the epoch
    (every process's under DDP).
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.losses: List[Tensor] = []
        self.signals: Dict[str, List[Tensor]] = {}
        self.weights: List[Tensor] = []

    def add(self, loss: Tensor, method: ir.methods.Method) -> None:
        self.losses.append(loss.detach().float())
        for key, value in method.last_signal.items():
            self.signals.setdefault(key, []).append(value.detach())
        if method.last_weights is not None:
            self.weights.append(method.last_weights.detach())

    def summary(self, processes: Processes) -> Dict[str, Any]:
        if not self.losses:
            return {}
        losses = processes.gather(torch.stack(self.losses))
        out: Dict[str, Any] = {"loss": float(losses.mean())}
        for key, parts in self.signals.items():
            values = processes.gather(torch.cat(parts))
            out["examples"] = int(values.numel())
            as_float = values.float()
            out[f"{key}_mean"] = float(as_float.mean())
            out[f"{key}_median"] = float(as_float.quantile(0.5))
            if key == "kappa":
                hist = torch.bincount(values.long().clamp(0, self.steps), minlength=self.steps + 1)
            else:
                hist = torch.histc(as_float.clamp(-1, 1), bins=MARGIN_BINS, min=-1.0, max=1.0)
            out[f"{key}_hist"] = [int(v) for v in hist.tolist()]
        if self.weights:
            w = processes.gather(torch.cat(self.weights)).float()
            low, high, bins = WEIGHT_BINS
            log_w = w.clamp_min(1e-30).log10().clamp(low, high)
            out.update(
                weight_min=float(w.min()),
                weight_mean=float(w.mean()),
                weight_max=float(w.max()),
                weight_std=float(w.std()) if w.numel() > 1 else 0.0,
                weight_hist=[int(v) for v in torch.histc(log_w, bins, low, high).tolist()],
            )
        return out


def monitor(
    model: nn.Module,
    subsets: Dict[str, Tuple[Tensor, Tensor]],
    *,
    eps: float,
    clip: Optional[Tuple[float, float]],
    norm: str = "linf",
) -> Dict[str, float]:
    """Natural and PGD-20 accuracy (step ε/4, uniform start; GAIRAT Appendix C.1) on fixed subsets,
    in the ball the run trains against.

    Runs through ``ir.evaluation`` (eval mode, float32); the global random state is restored after,
    so monitoring never changes what training draws.

    Returns:
        ``{"<subset>_nat_acc": ..., "<subset>_pgd_acc": ...}`` in [0, 1] for each subset.
    """
    out: Dict[str, float] = {}
    devices = [model_device(model)] if model_device(model).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for name, (x, y) in subsets.items():
            acc = evaluation.evaluate(
                model,
                (x, y),
                attacks=("natural", "pgd20"),
                eps=eps,
                norm=norm,
                clip=clip,
                batch_size=500,
                progress=False,
            )
            out[f"{name}_nat_acc"] = acc["natural"]
            out[f"{name}_pgd_acc"] = acc["pgd20"]
    return out


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def monitor_subsets(
    config: TrainConfig, data_root: str, train_set: Tuple[Tensor, Tensor], device: torch.device
) -> Dict[str, Tuple[Tensor, Tensor]]:
    """The first ``monitor_size`` examples of a seeded permutation of the training and test sets."""
    if config.monitor_size == 0:
        return {}
    subsets = {}
    for name, (images, labels) in (
        ("train", train_set),
        ("test", load_dataset(config.data, data_root, train=False, size=config.test_size)),
    ):
        generator = torch.Generator().manual_seed(config.seed)
        pick = torch.randperm(images.shape[0], generator=generator)[: config.monitor_size]
        subsets[name] = (
            images[pick.to(images.device)].to(device, torch.float32) / 255,
            labels[pick.to(labels.device)].to(device),
        )
    return subsets


# --- progress ---------------------------------------------------------------------------------


def progress(items: Iterable[T], total: int, desc: str, enabled: bool) -> Iterator[T]:
    """A tqdm bar if tqdm is installed, else a line on stderr about every 10 % of the way."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        every = max(1, total // 10)
        start = time.perf_counter()
        for done, item in enumerate(items, 1):
            yield item
            if done % every == 0 or done == total:
                rate = done / max(time.perf_counter() - start, 1e-9)
                print(
                    f"{desc}: {done}/{total} batches, {rate:.1f} it/s", file=sys.stderr, flush=True
                )
        return
    yield from tqdm(items, total=total, desc=desc, unit="batch", leave=False)


# --- the loop ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    out: Path
    epochs_done: int
    complete: bool
    log: List[Dict[str, Any]]


def _check_same(
    old: Dict[str, Any], new: Dict[str, Any], keys: Sequence[str], what: str, fix: str
) -> None:
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    if diff:
        raise ValueError(f"Expected the same {what}, got {'; '.join(diff)}. {fix}")


def _start_state(
    config: TrainConfig, out: Path, resume: bool, init_from: Optional[Path]
) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]], List[Dict[str, Any]]]:
    """``(checkpoint to load or None, lineage, log records kept)`` for a new, resumed or branched
    run."""
    checkpoint = out / "checkpoint.pt"
    segment = {"method": config.method, "variant": config.variant, "overrides": config.overrides}
    if resume and checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        saved = state["config"]
        mutable = set(RESUME_MUTABLE)
        keys = [k for k in saved if k not in mutable]
        _check_same(
            saved,
            config.to_dict(),
            keys,
            "settings as the run being resumed",
            "Resume with the run's own settings (train.py --out OUT --resume alone reads them), or "
            "branch a new run with --init-from.",
        )
        kept = [r for r in read_log(out / "log.jsonl") if r["epoch"] < state["epoch"]]
        return state, list(state["lineage"]), kept
    if checkpoint.is_file():
        raise ValueError(
            f"Expected an empty run folder, got a checkpoint in '{out}'. Pass --resume to continue "
            "that run, or choose another --out."
        )
    if init_from is None:
        return None, [{**segment, "first_epoch": 0}], []
    state = load_checkpoint(init_from)
    _check_same(
        state["config"],
        config.to_dict(),
        BRANCH_FIXED,
        "data, model, batch size and seed as the checkpoint branched from",
        "Branch with the prefix's settings (the same --preset).",
    )
    kept = [r for r in read_log(init_from.parent / "log.jsonl") if r["epoch"] < state["epoch"]]
    lineage = list(state["lineage"]) + [{**segment, "first_epoch": int(state["epoch"])}]
    return state, lineage, kept


def saved_config(out: Path) -> Optional[Dict[str, Any]]:
    """The settings of the run in ``out`` (from its checkpoint), or None if it has none yet."""
    checkpoint = out / "checkpoint.pt"
    return load_checkpoint(checkpoint)["config"] if checkpoint.is_file() else None


def train(
    config: TrainConfig,
    out: Path,
    runtime: Runtime,
    *,
    resume: bool = False,
    init_from: Optional[Path] = None,
    stop_after: Optional[int] = None,
    log_to: Any = sys.stdout,
) -> RunResult:
    """Trains (or continues, or branches) one run in ``out``; see the module docstring.

    Args:
        config: what to compute.
        out: the run's folder (created if needed).
        runtime: how to execute it.
        resume: continue the run in ``out`` from its checkpoint (start fresh if there is none).
        init_from: start from another run's checkpoint (a shared prefix) with ``config.method``.
        stop_after: stop once this many epochs are done (write a prefix for branching).
        log_to: where one line per epoch is printed (``None`` for silence).

    Returns:
        :class:`RunResult` with the epochs done and whether the run reached ``config.epochs``.
    """
    start_time = time.perf_counter()
    processes = init_processes(runtime.device)
    try:
        return _train(
            config, Path(out), runtime, processes, resume, init_from, stop_after, log_to, start_time
        )
    finally:
        if processes.started_here:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    out: Path,
    runtime: Runtime,
    processes: Processes,
    resume: bool,
    init_from: Optional[Path],
    stop_after: Optional[int],
    log_to: Any,
    start_time: float,
) -> RunResult:
    device = resolve_device(runtime.device, processes.local_rank)
    fast = config.precision == "bf16"
    channels_last = (
        runtime.channels_last
        if runtime.channels_last is not None
        else fast and device.type == "cuda"
    )
    if device.type == "cuda":
        # The exact float32 path also turns TF32 off; the fast path allows it for what bf16 leaves.
        torch.backends.cuda.matmul.allow_tf32 = fast
        torch.backends.cudnn.allow_tf32 = fast
        torch.backends.cudnn.benchmark = fast
    if config.batch_size % processes.world_size:
        raise ValueError(
            f"Expected --batch-size divisible by the {processes.world_size} processes, got "
            f"{config.batch_size}."
        )
    state, lineage, kept_log = _start_state(config, out, resume, init_from)
    end = config.epochs if stop_after is None else min(stop_after, config.epochs)
    if state is not None and resume and int(state["epoch"]) >= end:
        done = int(state["epoch"])
        if log_to is not None:
            print(_finished_message(out, done, config.epochs), file=log_to, flush=True)
        return RunResult(out, done, done >= config.epochs, kept_log)
    processes.barrier()  # every process has read the folder before rank 0 rewrites it
    info = dataset_info(config.data)

    images, labels = load_dataset(
        config.data, runtime.data_root, train=True, size=config.train_size
    )
    generator = torch.Generator(device=device)
    loader = DeviceLoader(
        images,
        labels,
        batch_size=config.batch_size // processes.world_size,
        shuffle=True,
        augment=info.augment,
        generator=generator,
        device=device,
        seed=config.seed,
        rank=processes.rank,
        world_size=processes.world_size,
    )
    subsets = (
        monitor_subsets(config, runtime.data_root, (images, labels), device)
        if processes.main
        else {}
    )

    torch.manual_seed(config.seed)
    module = build_model(config.model, info.num_classes, info.in_channels).to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        module.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    first_epoch, best = 0, None
    if state is not None:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # a branch may use other optimiser settings
            group.update(momentum=config.momentum, weight_decay=config.weight_decay)
        first_epoch = int(state["epoch"])
        best = state.get("best") if resume else None
    forward: nn.Module = torch.compile(module) if runtime.compile else module
    if processes.world_size > 1:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )
    method = make_method(config, forward)
    if state is not None and resume and method.burn_in is not None and state["burn_in"]:
        method.burn_in.load_state_dict(state["burn_in"])

    # Created only now: a run that fails to start (data, settings) leaves no folder behind.
    out.mkdir(parents=True, exist_ok=True)
    if processes.main:
        write_json_atomic(
            {
                "config": config.to_dict(),
                "data_root": runtime.data_root,
                "lineage": lineage,
                "method": repr(method),
                "device": device_name(device),
                "processes": processes.world_size,
                "torch": torch.__version__,
                "compile": runtime.compile,
                "channels_last": channels_last,
            },
            out / "config.json",
        )
        with open(out / "log.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept_log)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast)
    durations = [r["seconds"] + r.get("seconds_monitor", 0.0) for r in kept_log[-1:]]
    records = list(kept_log)
    done = first_epoch
    for epoch in range(first_epoch, end):
        if runtime.max_minutes is not None:
            # Stop before an epoch that would not end in time; every process takes rank 0's view.
            expected = time.perf_counter() - start_time + (max(durations) if durations else 0.0)
            late = processes.main and expected > 60 * runtime.max_minutes
            if processes.all_max(float(late), device):
                break
        torch_seed, augment_seed = epoch_seeds(config.seed, epoch, processes.rank)
        torch.manual_seed(torch_seed)
        generator.manual_seed(augment_seed)
        lr = config.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        method.set_epoch(epoch)
        loader.set_epoch(epoch)
        stats = EpochStats(method.params["steps"])
        tic = time.perf_counter()
        forward.train()
        steps = len(loader) if config.max_steps_per_epoch is None else config.max_steps_per_epoch
        batches = progress(
            itertools.islice(loader, steps),
            min(steps, len(loader)),
            f"epoch {epoch} (0-based, last {end - 1})",
            runtime.progress and processes.main,
        )
        for x, y in batches:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            # An AWP method perturbs the weights for the body of the block and restores them after it.
            with autocast, method.training_step(x, y) as loss:
                with torch.autocast(device.type, enabled=False):
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            stats.add(loss, method)
        record: Dict[str, Any] = {
            "epoch": epoch,
            "method": config.method,
            "reweighting": method.reweighting,
            "lr": lr,
            **stats.summary(processes),
        }
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        record["seconds"] = time.perf_counter() - tic
        if processes.main:
            tic = time.perf_counter()
            record.update(
                monitor(
                    module,
                    subsets,
                    eps=method.params["eps"],
                    clip=method.params["clip"],
                    norm=method.params["norm"],
                )
            )
            record["seconds_monitor"] = time.perf_counter() - tic
            best = _save_epoch(out, config, module, optimizer, method, lineage, epoch, record, best)
            if log_to is not None:
                print(_one_line(record), file=log_to, flush=True)
        durations.append(record["seconds"] + record.get("seconds_monitor", 0.0))
        records.append(record)
        done = epoch + 1
    processes.barrier()  # rank 0 has written the last checkpoint before any process leaves
    return RunResult(out, done, done >= config.epochs, records)


def _save_epoch(
    out: Path,
    config: TrainConfig,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: ir.methods.Method,
    lineage: List[Dict[str, Any]],
    epoch: int,
    record: Dict[str, Any],
    best: Optional[Dict[str, Any]],
) -> Optional[Dict[str, Any]]:
    """Appends the log record, then writes best.pt (if improved), checkpoint.pt and status.json."""
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    window = config.best_window
    score = record.get("test_pgd_acc")
    if window and score is not None and window[0] <= epoch <= window[1]:
        if best is None or score > best["test_pgd_acc"]:
            best = {"epoch": epoch, "test_pgd_acc": score}
            save_atomic(
                {
                    "format": CHECKPOINT_FORMAT,
                    "config": config.to_dict(),
                    "epoch": epoch + 1,
                    "model": module.state_dict(),
                    "best": best,
                },
                out / "best.pt",
            )
    save_atomic(
        {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "epoch": epoch + 1,
            "model": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "burn_in": method.burn_in.state_dict() if method.burn_in is not None else None,
            "lineage": lineage,
            "best": best,
        },
        out / "checkpoint.pt",
    )
    write_json_atomic(
        {
            "epochs_done": epoch + 1,
            "epochs": config.epochs,
            "complete": epoch + 1 >= config.epochs,
            "best": best,
        },
        out / "status.json",
    )
    return best


def _one_line(record: Dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}", f"lr {record['lr']:g}", f"loss {record['loss']:.4f}"]
    for key, label in (
        ("kappa_mean", "κ mean"),
        ("kappa_median", "κ median"),
        ("margin_mean", "PM mean"),
        ("weight_max", "w max"),
    ):
        if key in record:
            parts.append(f"{label} {record[key]:.3g}")
    for key, label in (("test_nat_acc", "test nat"), ("test_pgd_acc", "test PGD-20")):
        if key in record:
            parts.append(f"{label} {100 * record[key]:.2f}%")
    parts.append(f"{record['seconds']:.1f} s")
    return " | ".join(parts)


def _finished_message(out: Path, done: int, epochs: int) -> str:
    if done >= epochs:
        return (
            f"the run in {out} is finished: all {epochs} epochs (0..{epochs - 1}) are done, nothing "
            "to train. Evaluate it with examples/evaluate.py, or resume with a larger --epochs."
        )
    return f"the run in {out} already has {done} epochs (0..{done - 1}), as --stop-after asks."


def read_json(path: Path) -> Dict[str, Any]:
    """A JSON object written by these scripts, empty if the file does not exist (yet)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def read_status(out: Path) -> Dict[str, Any]:
    """The run's ``status.json`` (epochs done, complete, best), empty if it has none yet."""
    return read_json(Path(out) / "status.json")


def recorded_data_root(out: Path) -> Optional[str]:
    """The ``--data-root`` the run in ``out`` was started with (its ``config.json``), if any."""
    return read_json(Path(out) / "config.json").get("data_root")


def mean_epoch_seconds(log: Sequence[Dict[str, Any]]) -> float:
    """Mean training seconds per epoch (monitoring excluded) of a log, NaN if empty."""
    seconds = [r["seconds"] for r in log if "seconds" in r]
    return sum(seconds) / len(seconds) if seconds else math.nan
