"""The training loop of ``train.py`` and ``reproduce.py``: epochs of ``method.training_step`` and SGD
(or Adam).

A run lives in one folder (``run_files``: ``config.json``, ``checkpoint.pt``, ``best.pt``,
``log.jsonl``, ``status.json``); its settings are a ``config.TrainConfig``, how it executes a
``config.Runtime``.

Exactness. Every random stream of epoch ``e`` is seeded from ``(seed, e, rank)`` at the start of the
epoch: the global generator (the attacks' random starts, dropout) and the augmentation generator; the
data order comes from ``seed + e`` (:class:`data.DeviceLoader`). The learning rate is a function of
the epoch and the burn-in state is saved, so a run stopped after any epoch and resumed draws the same
numbers as a straight run, and on a CPU in float32 ends with bit-identical parameters; no generator
state needs saving. A branch (``init_from``) starts from another run's checkpoint with another method:
it keeps that run's parameters, BatchNorm statistics, optimiser state (momentum), epoch and hence
learning-rate position and random streams, and records the change in ``lineage``.

An ε ramp (``eps_ramp_epochs``) moves per batch: the loop calls ``method.set_epoch(epoch + i /
steps)`` before batch ``i`` of the epoch's ``steps``, so ε is a function of the position in the run
and a resumed run continues the ramp exactly; without a ramp ``set_epoch(epoch)`` runs once per epoch.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, cast

import numpy as np
import run_files
import torch
import torch.distributed as dist
from config import (
    Runtime,
    TrainConfig,
    device_name,
    make_method,
    make_optimizer,
    resolve_device,
)
from data import DeviceLoader, dataset_info, load_dataset
from models import build_model
from monitoring import EpochStats, monitor, monitor_subsets, one_line, progress
from processes import Processes, init_processes
from torch import Tensor, nn

import instance_reweight as ir


@dataclass
class RunResult:
    out: Path
    epochs_done: int
    complete: bool
    log: List[Dict[str, Any]]


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
        end = config.epochs if stop_after is None else min(stop_after, config.epochs)
        start = run_files.start(config, Path(out), resume, init_from)
        if start.resumed and start.epoch >= end:
            if log_to is not None:
                print(_finished_message(out, start.epoch, config.epochs), file=log_to, flush=True)
            return RunResult(out, start.epoch, start.epoch >= config.epochs, start.log)
        processes.barrier()  # every process has read the folder before rank 0 rewrites it
        run = _Run.build(config, runtime, processes, start)
        return _epochs(run, Path(out), start, end, log_to, start_time)
    finally:
        if processes.started_here:
            dist.destroy_process_group()


def _epochs(
    run: _Run, out: Path, start: run_files.Start, end: int, log_to: Any, start_time: float
) -> RunResult:
    """The epochs from ``start.epoch`` to ``end``: train, monitor, save, print."""
    config, processes = run.config, run.processes
    # Created only now: a run that fails to start (data, settings) leaves no folder behind.
    out.mkdir(parents=True, exist_ok=True)
    if processes.main:
        run.write_start(out, start)
    budget = _Budget(run.runtime.max_minutes, start_time, start.log)
    records, best, done = list(start.log), start.best, start.epoch
    for epoch in range(start.epoch, end):
        if not budget.allows_another_epoch(processes, run.device):
            break
        record = run.train_epoch(epoch, end)
        if processes.main:
            record.update(run.monitor())
            best = run_files.save_epoch(out, config, record, run.training_state(start), best)
            if log_to is not None:
                print(one_line(record), file=log_to, flush=True)
        budget.add(record)
        records.append(record)
        done = epoch + 1
    processes.barrier()  # rank 0 has written the last checkpoint before any process leaves
    return RunResult(out, done, done >= config.epochs, records)


def train_step(
    method: ir.methods.Method,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    autocast: torch.autocast,
) -> Tensor:
    """One step of the loop: the method's block under ``autocast`` (bf16 on the fast path), the backward
    and the optimiser step in full precision inside it; returns the loss.

    An AWP method perturbs the weights for the body of the block and restores them after it.
    """
    with autocast, method.training_step(x, y) as loss:
        with torch.autocast(x.device.type, enabled=False):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return loss


def epoch_seeds(seed: int, epoch: int, rank: int) -> Tuple[int, int]:
    """Two independent 63-bit seeds for epoch ``epoch`` of process ``rank``."""
    words = np.random.SeedSequence([seed, epoch, rank]).generate_state(2, dtype=np.uint64)
    return int(words[0] >> np.uint64(1)), int(words[1] >> np.uint64(1))


@dataclass
class _Run:
    """What the loop works with: the data, the network, its optimiser and the method, on a device."""

    config: TrainConfig
    runtime: Runtime
    processes: Processes
    device: torch.device
    channels_last: bool
    loader: DeviceLoader
    augment_generator: torch.Generator
    subsets: Dict[str, Tuple[Tensor, Tensor]]  # monitored (rank 0 only)
    module: nn.Module  # the network whose state is saved
    forward: nn.Module  # what the batches go through: ``module`` compiled and/or under DDP
    optimizer: torch.optim.Optimizer
    method: ir.methods.Method

    @classmethod
    def build(
        cls, config: TrainConfig, runtime: Runtime, processes: Processes, start: run_files.Start
    ) -> _Run:
        device, channels_last = _set_up_device(config, runtime, processes)
        loader, generator, subsets = _data(config, runtime, processes, device)
        torch.manual_seed(config.seed)
        module, optimizer = _network(config, device, channels_last, start.checkpoint)
        forward = cast(nn.Module, torch.compile(module)) if runtime.compile else module
        if processes.world_size > 1:
            forward = nn.parallel.DistributedDataParallel(
                forward, device_ids=[device.index] if device.type == "cuda" else None
            )
        method = make_method(config, forward)
        if method.burn_in is not None and start.burn_in:
            method.burn_in.load_state_dict(start.burn_in)
        return cls(
            config=config,
            runtime=runtime,
            processes=processes,
            device=device,
            channels_last=channels_last,
            loader=loader,
            augment_generator=generator,
            subsets=subsets,
            module=module,
            forward=forward,
            optimizer=optimizer,
            method=method,
        )

    def write_start(self, out: Path, start: run_files.Start) -> None:
        run_files.write_start(
            out,
            self.config,
            start.lineage,
            start.log,
            data_root=self.runtime.data_root,
            method=repr(self.method),
            device=device_name(self.device),
            processes=self.processes.world_size,
            compile=self.runtime.compile,
            channels_last=self.channels_last,
        )

    def train_epoch(self, epoch: int, end: int) -> Dict[str, Any]:
        """One epoch of ``method.training_step`` and the optimiser; returns its log record (timed)."""
        config, method, optimizer = self.config, self.method, self.optimizer
        torch_seed, augment_seed = epoch_seeds(config.seed, epoch, self.processes.rank)
        torch.manual_seed(torch_seed)
        self.augment_generator.manual_seed(augment_seed)
        lr = config.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        method.set_epoch(epoch)
        self.loader.set_epoch(epoch)
        stats = EpochStats(method.params["steps"])
        tic = time.perf_counter()
        self.forward.train()
        autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"
        )
        steps = self._steps()
        for i, (x, y) in enumerate(self._batches(epoch, end)):
            if method.eps_scheduler is not None:
                method.set_epoch(epoch + i / steps)
            stats.add(train_step(method, optimizer, x, y, autocast), method)
        record: Dict[str, Any] = {
            "epoch": epoch,
            "method": config.method,
            "reweighting": method.reweighting,
            "lr": lr,
            **stats.summary(self.processes),
        }
        if method.eps_scheduler is not None:
            record["eps"] = method.attack.eps  # the ramp's ε at the epoch's last batch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        record["seconds"] = time.perf_counter() - tic
        return record

    def _steps(self) -> int:
        """Batches per epoch: the loader's, or the first ``max_steps_per_epoch``."""
        return min(self.config.max_steps_per_epoch or len(self.loader), len(self.loader))

    def _batches(self, epoch: int, end: int) -> Iterator[Tuple[Tensor, Tensor]]:
        """The epoch's batches (the first ``max_steps_per_epoch``), channels-last if asked."""
        steps = self._steps()
        batches = progress(
            itertools.islice(self.loader, steps),
            steps,
            f"epoch {epoch} (0-based, last {end - 1})",
            self.runtime.progress and self.processes.main,
        )
        for x, y in batches:
            yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y

    def monitor(self) -> Dict[str, float]:
        """The monitored accuracies in the ball the run trains against, timed."""
        tic = time.perf_counter()
        params = self.method.params
        record: Dict[str, float] = monitor(
            self.module, self.subsets, eps=params["eps"], clip=params["clip"], norm=params["norm"]
        )
        record["seconds_monitor"] = time.perf_counter() - tic
        return record

    def training_state(self, start: run_files.Start) -> Dict[str, Any]:
        """What the checkpoint needs to continue the run."""
        burn_in = self.method.burn_in
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "burn_in": burn_in.state_dict() if burn_in is not None else None,
            "lineage": start.lineage,
        }


def _set_up_device(
    config: TrainConfig, runtime: Runtime, processes: Processes
) -> Tuple[torch.device, bool]:
    """This process's device, with the float settings of the run's precision; and channels-last."""
    device = resolve_device(runtime.device, processes.local_rank)
    fast = config.precision == "bf16"
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
    channels_last = runtime.channels_last
    if channels_last is None:
        channels_last = fast and device.type == "cuda"
    return device, channels_last


def _data(
    config: TrainConfig, runtime: Runtime, processes: Processes, device: torch.device
) -> Tuple[DeviceLoader, torch.Generator, Dict[str, Tuple[Tensor, Tensor]]]:
    """This process's share of the training set, its augmentation generator, and (on rank 0) the
    monitored subsets."""
    images, labels = load_dataset(
        config.data, runtime.data_root, train=True, size=config.train_size
    )
    generator = torch.Generator(device=device)
    loader = DeviceLoader(
        images,
        labels,
        batch_size=config.batch_size // processes.world_size,
        shuffle=True,
        augment=dataset_info(config.data).augment,
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
    return loader, generator, subsets


def _network(
    config: TrainConfig,
    device: torch.device,
    channels_last: bool,
    checkpoint: Optional[Dict[str, Any]],
) -> Tuple[nn.Module, torch.optim.Optimizer]:
    """The network and its optimiser, from ``checkpoint`` when the run continues one."""
    info = dataset_info(config.data)
    module = build_model(config.model, info.num_classes, info.in_channels).to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = make_optimizer(config, module.parameters())
    if checkpoint is not None:
        module.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        for group in optimizer.param_groups:  # a branch may use other optimiser settings
            group["weight_decay"] = config.weight_decay
            if config.optimizer == "sgd":
                group["momentum"] = config.momentum
    return module, optimizer


class _Budget:
    """``--max-minutes``: the loop stops before an epoch that would not end in time, judged by the
    longest epoch so far (the last one logged before a resume included)."""

    def __init__(
        self, max_minutes: Optional[float], start_time: float, log: List[Dict[str, Any]]
    ) -> None:
        self.max_minutes = max_minutes
        self.start_time = start_time
        self.longest = max((_seconds(r) for r in log[-1:]), default=0.0)

    def add(self, record: Dict[str, Any]) -> None:
        self.longest = max(self.longest, _seconds(record))

    def allows_another_epoch(self, processes: Processes, device: torch.device) -> bool:
        if self.max_minutes is None:
            return True
        expected = time.perf_counter() - self.start_time + self.longest
        late = processes.main and expected > 60 * self.max_minutes
        return not processes.all_max(float(late), device)  # every process takes rank 0's view


def _seconds(record: Dict[str, Any]) -> float:
    """An epoch's training and monitoring seconds."""
    return float(record["seconds"] + record.get("seconds_monitor", 0.0))


def _finished_message(out: Path, done: int, epochs: int) -> str:
    if done >= epochs:
        return (
            f"the run in {out} is finished: all {epochs} epochs (0..{epochs - 1}) are done, nothing "
            "to train. Evaluate it with examples/evaluate.py, or resume with a larger --epochs."
        )
    return f"the run in {out} already has {done} epochs (0..{done - 1}), as --stop-after asks."
