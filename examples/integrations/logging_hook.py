"""A logging hook: the per-epoch instance-weight, κ and PM statistics of any training loop, sent to any
``log(dict)`` callable or to TensorBoard.

Add two lines to the README's loop::

    hook = EpochLogger(print)                      # or tensorboard_log(SummaryWriter("runs/x")), wandb.log, ...
    for epoch in range(epochs):
        burn_in.step(epoch)
        for x, y in loader:
            x_adv, kappa = attack(x, y)
            loss = criterion(model(x_adv), y, kappa=kappa)
            ...
            hook.add(loss, criterion, kappa=kappa)     # no host synchronisation: tensors are kept
        hook.log_epoch(epoch)                          # one dict per epoch: weight_*, kappa_*, loss, ...

The statistics are those ``train.py`` writes to ``log.jsonl`` (one implementation,
:class:`monitoring.EpochStats`): ``loss``, ``examples``, ``kappa_mean``, ``kappa_median``, ``kappa_hist``
(κ = 0..K) or ``margin_mean``, ``margin_median``, ``margin_hist`` (PM in 20 bins on [−1, 1]), and while
reweighting ``weight_min``, ``weight_mean``, ``weight_max``, ``weight_std``, ``weight_hist`` (log10 w).
Under ``torch.distributed`` (DDP, Accelerate) every process's examples are gathered; call
:meth:`EpochLogger.log_epoch` on every process, it logs on rank 0 only.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, Optional

import torch.distributed as dist
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/, for monitoring.py

from monitoring import EpochStats  # noqa: E402
from processes import Processes  # noqa: E402

Log = Callable[[Dict[str, Any]], Any]


class EpochLogger:
    """Collects one epoch's losses, signals (κ or PM) and weights; logs their summary once per epoch.

    Args:
        log: called with one dict per epoch (``{"epoch": e, "reweighting": bool, ...}``).
        steps: K, the attack's steps (the κ histogram has K + 1 bins).

    Example:
        >>> import torch
        >>> records = []
        >>> hook = EpochLogger(records.append, steps=2)
        >>> criterion = SimpleNamespace(last_weights=torch.tensor([0.5, 1.5]), active=True)
        >>> hook.add(torch.tensor(0.7), criterion, kappa=torch.tensor([0, 2]))
        >>> hook.log_epoch(0)
        >>> records[0]["kappa_hist"], records[0]["weight_max"], records[0]["reweighting"]
        ([1, 0, 1], 1.5, True)
    """

    def __init__(self, log: Log, *, steps: int = 10) -> None:
        self.log = log
        self.steps = steps
        self._stats = EpochStats(steps)
        self._reweighting = False

    def add(
        self,
        loss: Tensor,
        criterion: Any,
        *,
        kappa: Optional[Tensor] = None,
        margin: Optional[Tensor] = None,
    ) -> None:
        """Keeps one batch: its loss, κ or PM, and ``criterion.last_weights`` while reweighting.

        ``criterion`` is an ``ir.InstanceReweightedLoss``, an ``ir.InstanceWeighting`` or an
        ``ir.methods`` method: anything with ``last_weights`` (and ``active`` or ``reweighting``).
        """
        signal = {k: v for k, v in (("kappa", kappa), ("margin", margin)) if v is not None}
        active = bool(getattr(criterion, "reweighting", getattr(criterion, "active", True)))
        self._reweighting = active
        weights = criterion.last_weights if active else None
        self._stats.add(loss, SimpleNamespace(last_signal=signal, last_weights=weights))

    def log_epoch(self, epoch: int) -> Optional[Dict[str, Any]]:
        """Summarises the epoch (gathering every process's examples), logs it on rank 0, starts afresh.

        Returns:
            The logged dict on rank 0, else None.
        """
        processes = (
            Processes(dist.get_rank(), dist.get_world_size())
            if dist.is_available() and dist.is_initialized()
            else Processes()
        )
        record = {"epoch": epoch, "reweighting": self._reweighting}
        record.update(self._stats.summary(processes))
        self._stats = EpochStats(self.steps)
        if not processes.main:
            return None
        self.log(record)
        return record


def tensorboard_log(writer: Any) -> Log:
    """A ``log(dict)`` for :class:`EpochLogger` that writes every number as a TensorBoard scalar
    (``writer`` is a ``torch.utils.tensorboard.SummaryWriter``) and each histogram as a histogram."""

    def log(record: Dict[str, Any]) -> None:
        epoch = record["epoch"]
        for key, value in record.items():
            if key == "epoch":
                continue
            if isinstance(value, list):
                writer.add_histogram_raw(
                    key,
                    min=0,
                    max=len(value) - 1,
                    num=sum(value),
                    sum=float(sum(i * c for i, c in enumerate(value))),
                    sum_squares=float(sum(i * i * c for i, c in enumerate(value))),
                    bucket_limits=[float(i) for i in range(len(value))],
                    bucket_counts=value,
                    global_step=epoch,
                )
            else:
                writer.add_scalar(key, float(value), epoch)
        writer.flush()

    return log
