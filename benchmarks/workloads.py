"""What the benchmarks time: the library's attack and training steps, and the loops they are compared with.

Three reference loops, written here from their descriptions (the official GAIRAT and MAIL code carries
no licence and is not copied):

- :func:`plain_pgd` — the PGD-K of :class:`~instance_reweight.GeometryAwareAttack` reduced to its
  maths (uniform start, summed float32 CE, input-only gradient, signed step, projection, clip),
  without κ and without the library's input checks; ``count_kappa=True`` adds back the two κ lines
  only. With one seed it returns the attack's exact iterates, which :func:`same_result` checks.
- :func:`official_style_attack` — the same PGD-K written as the official codes write it: parameters
  keep ``requires_grad``, each step's ``loss.backward()`` also writes every parameter's gradient
  (cleared by ``model.zero_grad()``), and κ is counted by a loop over the examples that reads each
  prediction on the host.
- :func:`official_gairat_loss` — GAIRAT's Eq. 6 weights normalised over the batch, written inline.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import instance_reweight as ir
from instance_reweight.attack import frozen_for_attack

Attack = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
Step = Callable[[Tensor, Tensor], None]

EPS = 8 / 255
STEP_SIZE = 2 / 255


def library_attack(model: nn.Module, steps: int, random_start: str = "uniform") -> Attack:
    """The library's GA-PGD-K at the papers' threat model (ε = 8/255, α = 2/255)."""
    return ir.GeometryAwareAttack(
        model, eps=EPS, step_size=STEP_SIZE, steps=steps, random_start=random_start
    )


def _uniform_start(x: Tensor) -> Tensor:
    return (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0.0, 1.0)


def _signed_step(x_adv: Tensor, grad: Tensor, x: Tensor) -> Tensor:
    stepped = x_adv.detach() + STEP_SIZE * grad.sign()
    return torch.min(torch.max(stepped, x - EPS), x + EPS).clamp(0.0, 1.0)


def plain_pgd(
    model: nn.Module, x: Tensor, y: Tensor, *, steps: int, count_kappa: bool = False
) -> Tuple[Tensor, Optional[Tensor]]:
    """PGD-K as :class:`~instance_reweight.GeometryAwareAttack` computes it, κ only if asked.

    Args:
        model: the classifier; run in eval mode with frozen parameters like the library's attack.
        x: images in [0, 1].
        y: labels.
        steps: K.
        count_kappa: add the library's κ bookkeeping (one argmax, compare and add per step).

    Returns:
        ``(x_adv, kappa)``, ``kappa`` None unless ``count_kappa``.
    """
    kappa = torch.zeros_like(y) if count_kappa else None
    with torch.enable_grad(), frozen_for_attack(model):
        x_adv = _uniform_start(x)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            if kappa is not None:
                kappa += logits.argmax(dim=1) == y
            loss = F.cross_entropy(logits.float(), y, reduction="none").sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = _signed_step(x_adv, grad, x)
    return x_adv.detach(), kappa


def official_style_attack(
    model: nn.Module, x: Tensor, y: Tensor, *, steps: int
) -> Tuple[Tensor, Tensor]:
    """The same PGD-K in the official codes' style: full backward, κ by a per-example host loop.

    Returns:
        ``(x_adv, kappa)`` with ``kappa`` on ``x.device``.
    """
    n = x.shape[0]
    kappa = torch.zeros(n, dtype=torch.long)  # on the host, one read of the device per example
    was_training = model.training
    model.eval()
    x_adv = _uniform_start(x).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        model.zero_grad()
        pred = logits.argmax(dim=1)
        for i in range(n):
            if pred[i] == y[i]:
                kappa[i] += 1
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        x_adv = _signed_step(x_adv, x_adv.grad, x)
    model.train(was_training)
    return x_adv.detach(), kappa.to(x.device)


def same_result(a: Tuple[Tensor, Optional[Tensor]], b: Tuple[Tensor, Optional[Tensor]]) -> bool:
    """Whether two attacks gave the same iterates and, where both count it, the same κ."""
    kappa_same = a[1] is None or b[1] is None or torch.equal(a[1], b[1])
    return bool(torch.equal(a[0], b[0]) and kappa_same)


def mean_ce(logits: Tensor, y: Tensor, kappa: Tensor) -> Tensor:
    """Plain AT's loss: mean cross-entropy, no weights."""
    return F.cross_entropy(logits, y)


def gairat_loss(steps: int, lam: float = -1.0) -> LossFn:
    """The library's GAIRAT loss: ``InstanceReweightedLoss`` on κ (Eq. 6, normalised over the batch)."""
    criterion = ir.InstanceReweightedLoss(
        nn.CrossEntropyLoss(reduction="none"), "gairat", steps=steps, lam=lam
    )
    return lambda logits, y, kappa: criterion(logits, y, kappa=kappa)


def mail_loss(slope: float = 10.0, bias: float = -0.5) -> LossFn:
    """The library's MAIL-AT loss: ``InstanceReweightedLoss`` on PM_adv of the training forward."""
    criterion = ir.InstanceReweightedLoss(
        nn.CrossEntropyLoss(reduction="none"), "mail", slope=slope, bias=bias
    )
    return lambda logits, y, kappa: criterion(logits, y, margin=ir.probabilistic_margin(logits, y))


def official_gairat_loss(steps: int, lam: float = -1.0) -> LossFn:
    """GAIRAT's Eq. 6 written inline: ω = (1 + tanh(λ + 5(1 − 2κ/K)))/2, Σωℓ / Σω."""

    def loss(logits: Tensor, y: Tensor, kappa: Tensor) -> Tensor:
        omega = (1 + torch.tanh(lam + 5 * (1 - 2 * kappa.float() / steps))) / 2
        return (omega * F.cross_entropy(logits, y, reduction="none")).sum() / omega.sum()

    return loss


def trainer(
    model: nn.Module,
    attack: Attack,
    loss_fn: LossFn,
    *,
    autocast: Callable[[], ContextManager[object]] = contextlib.nullcontext,
) -> Step:
    """One adversarial training step ``(x, y) -> None``: attack, train-mode forward, loss, SGD step.

    The optimiser is MAIL's ResNet-18 recipe (SGD, lr 0.01, momentum 0.9, weight decay 3.5e-3); the
    backward runs outside ``autocast``, as PyTorch recommends.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=3.5e-3)
    model.train()

    def step(x: Tensor, y: Tensor) -> None:
        with autocast():
            x_adv, kappa = attack(x, y)
            loss = loss_fn(model(x_adv), y, kappa)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step
