"""GAIRAT or MAIL-AT in a PyTorch Lightning ``LightningModule``: the README's three lines in
``__init__``, two in ``training_step``, one in ``on_train_epoch_start``.

    python examples/integrations/lightning_gairat.py                 # a few CPU seconds on toy data
    python examples/integrations/lightning_gairat.py --scheme mail

Lightning switches the module to train mode before every training epoch and to eval mode for
validation. The attack does not fight it: it puts the network in eval mode for its own forward passes
(BatchNorm statistics untouched, dropout off), takes gradients with respect to the input only, and
restores every submodule's own mode and every ``requires_grad`` flag before ``training_step`` runs
the training forward — so Lightning's train mode is what the loss sees. Validation runs under
``torch.inference_mode``; ``ir.evaluation`` re-enables autograd for its attack.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import instance_reweight as ir

sys.path.insert(0, str(Path(__file__).resolve().parent))

from logging_hook import EpochLogger  # noqa: E402
from toy import toy_data  # noqa: E402


class ReweightedModule(L.LightningModule):
    """Adversarial training of ``model`` with GAIRAT (κ) or MAIL-AT (PM_adv) instance weights.

    Args:
        model: the classifier (inputs in [0, 1] unless ``clip`` says otherwise).
        scheme: ``"gairat"`` or ``"mail"``.
        eps, step_size, steps: the attack (ℓ∞ PGD).
        burn_in_epochs: plain AT before reweighting starts (0-based epochs).
        clip: the input box (``None`` for data that are not images).
        lr: SGD learning rate.
        log: a ``log(dict)`` for the per-epoch weight/κ/PM statistics (see ``logging_hook.py``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        scheme: str = "gairat",
        eps: float = 8 / 255,
        step_size: float = 2 / 255,
        steps: int = 10,
        burn_in_epochs: int = 60,
        clip: Optional[Tuple[float, float]] = (0.0, 1.0),
        lr: float = 0.1,
        log: Any = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.scheme = scheme
        self.eps = eps
        self.clip = clip
        start = "uniform" if scheme == "gairat" else "normal"
        params: Dict[str, Any] = (
            dict(steps=steps, lam=-1.0) if scheme == "gairat" else dict(slope=10.0, bias=-0.5)
        )
        # The README's three lines.
        self.attack = ir.GeometryAwareAttack(
            model, eps=eps, step_size=step_size, steps=steps, random_start=start, clip=clip
        )
        self.criterion = ir.InstanceReweightedLoss(
            nn.CrossEntropyLoss(reduction="none"), scheme, **params
        )
        self.burn_in = ir.BurnInScheduler(self.criterion, burn_in_epochs=burn_in_epochs)
        self.hook = EpochLogger(log or self._log_scalars, steps=steps)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def on_train_epoch_start(self) -> None:
        self.burn_in.step(self.current_epoch)  # Lightning's epochs are 0-based too

    def training_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        x_adv, kappa = self.attack(x, y)
        logits = self.model(x_adv)
        if self.scheme == "gairat":
            loss = self.criterion(logits, y, kappa=kappa)
            self.hook.add(loss, self.criterion, kappa=kappa)
        else:
            margin = ir.probabilistic_margin(logits, y)  # PM_adv, detached
            loss = self.criterion(logits, y, margin=margin)
            self.hook.add(loss, self.criterion, margin=margin)
        return loss

    def on_train_epoch_end(self) -> None:
        self.hook.log_epoch(self.current_epoch)

    def validation_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        accuracy = ir.evaluation.evaluate(
            self.model, batch, attacks=("natural", "pgd20"), eps=self.eps, clip=self.clip,
            progress=False,
        )  # fmt: skip
        self.log_dict({f"val_{k}": v for k, v in accuracy.items()}, batch_size=len(batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)

    def _log_scalars(self, record: Dict[str, Any]) -> None:
        scalars = {k: float(v) for k, v in record.items() if isinstance(v, (int, float))}
        print(" | ".join(f"{k} {v:.4g}" for k, v in scalars.items()))


def small_cnn() -> nn.Module:
    """A network with BatchNorm and dropout, the two layers whose mode the attack must respect."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
        nn.Dropout(0.2), nn.Linear(16 * 8 * 8, 10),
    )  # fmt: skip


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheme", choices=("gairat", "mail"), default="gairat")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--burn-in", type=int, default=2, help="0-based epochs of plain AT")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    module = ReweightedModule(
        small_cnn(), scheme=args.scheme, eps=0.1, step_size=0.025, steps=5,
        burn_in_epochs=args.burn_in, lr=0.05,
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        module,
        DataLoader(toy_data(512), batch_size=64, shuffle=True),
        DataLoader(toy_data(256, seed=1), batch_size=256),
    )
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


if __name__ == "__main__":
    print(main())
