"""What the loop measures and shows each epoch: the batches' statistics (:class:`EpochStats`), the
natural/PGD-20 accuracy on fixed subsets (:func:`monitor`), a progress bar and the printed line."""

from __future__ import annotations

import sys
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Protocol, Tuple, TypeVar

import torch
from config import TrainConfig
from data import load_dataset
from processes import Processes
from torch import Tensor, nn

from instance_reweight import evaluation

T = TypeVar("T")

MARGIN_BINS = 20  # PM histogram: 20 bins of width 0.1 on [-1, 1]
WEIGHT_BINS = (-4.0, 2.0, 24)  # log10 of the normalised weight: 24 bins of a quarter decade


class Signals(Protocol):
    """What a batch leaves on an ``ir.methods`` method: its signal (κ or PM) and weights."""

    last_signal: Dict[str, Tensor]
    last_weights: Optional[Tensor]


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

    def add(self, loss: Tensor, method: Signals) -> None:
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


def progress(items: Iterable[T], total: int, desc: str, enabled: bool) -> Iterator[T]:
    """A tqdm bar if tqdm is installed and stderr is a terminal, else a line on stderr about every
    10 % of the way (a log file gets lines, not carriage returns)."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm.auto import tqdm

        if not sys.stderr.isatty():
            raise ImportError("a bar needs a terminal")
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


def one_line(record: Dict[str, Any]) -> str:
    """The epoch's record as the one line printed after it."""
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
