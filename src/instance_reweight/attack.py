"""Geometry-aware PGD (GAIRAT Algorithms 1, 3 and 4): adversarial data and the geometry value κ."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import (
    at_least_float32,
    check_choice,
    check_clip,
    check_finite,
    check_int,
    check_labels,
    check_logits,
    check_number,
    check_tensor,
    labels_in_range,
    raise_if_invalid,
)
from .losses import cw_margin, trades_kl

__all__ = ["AttackOutput", "GeometryAwareAttack", "frozen_for_attack"]

AttackLoss = Union[str, Callable[[Tensor, Tensor], Tensor]]
Objective = Callable[[Tensor, Tensor], Tensor]
Step = Callable[[int, Tensor, Tensor, Tensor], Tensor]

_LOSSES = ("ce", "kl", "cw")
_STARTS = ("uniform", "normal")


class AttackOutput(NamedTuple):
    """What :class:`GeometryAwareAttack` returns: ``x_adv, kappa = attack(x, y)``."""

    adv: Tensor
    """Adversarial inputs, detached, same shape, dtype and device as ``x``."""
    kappa: Tensor
    """Geometry value κ per example, ``int64``, shape ``(N,)``, on ``x.device``."""


@contextlib.contextmanager
def frozen_for_attack(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode with frozen parameters, then restore it exactly.

    Every submodule's own ``training`` flag and every parameter's ``requires_grad`` are restored on
    exit, also when the body raises; BatchNorm running statistics are untouched (eval mode) and no
    parameter ``.grad`` is written (gradients are taken with respect to the input only).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
        >>> with frozen_for_attack(net):
        ...     net[1].training, net[0].weight.requires_grad
        (False, False)
        >>> net[1].training, net[0].weight.requires_grad
        (True, True)
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


class GeometryAwareAttack:
    r"""Geometry-aware PGD: the ℓ∞ PGD attack that also returns each example's geometry value κ.

    Starting from :math:`x^{(0)}` (see ``random_start``), each step is

    .. math::
        x^{(t+1)} = \mathrm{clip}\Bigl(\Pi_{B_\epsilon[x]}\bigl(x^{(t)} + \alpha\,
        \mathrm{sign}\,\nabla_{x^{(t)}} \ell(f(x^{(t)}), y)\bigr)\Bigr),
        \qquad
        \kappa = \#\{t \in 0..K-1 : \arg\max f(x^{(t)}) = y\}.

    Every correct check counts (GAIRAT Algorithm 1 counts, it does not stop at the first miss) and
    the final iterate :math:`x^{(K)}` is never checked, so a misclassified natural point gets κ near 0
    and the largest GAIRAT weight. The check reuses the forward pass of each step: κ is free.

    With ``tau`` (FAT's early-stopped PGD-K-τ, GAIRAT Algorithm 3) every example carries a budget;
    at each check a misclassified example with budget 0 stops for good (keeping that iterate), one
    with budget > 0 spends 1 and goes on, and a correct one adds 1 to κ.

    The model runs in eval mode with its parameters frozen (:func:`frozen_for_attack`); the loop
    does no host synchronisation and no per-example Python. Inside ``torch.autocast`` the model
    runs in the autocast dtype; the attack loss is taken in float32 (float64 for a float64 model) and
    κ counts the model's own predictions.

    Args:
        model: classifier returning logits ``(N, C)``; a ``DistributedDataParallel`` model is
            attacked through its ``.module`` (no gradient synchronisation during the attack).
        eps: ℓ∞ radius ε (``0`` gives κ of the natural point only).
        step_size: step α.
        steps: number of steps K (``0`` returns the start point and κ = 0).
        loss: ``"ce"`` (AT, GAIRAT, MART, MAIL-AT), ``"kl"`` (TRADES: KL between natural and
            adversarial predictions, natural probabilities computed once), ``"cw"`` (CW margin,
            confidence 50), or a callable ``(logits_adv, y) -> (N,)`` or scalar to maximise.
        random_start: ``"uniform"`` (x + U(−ε, ε), clipped; GAIRAT), ``"normal"``
            (x + 0.001·N(0, 1), not clipped before the first step; TRADES, MART, MAIL) or ``None``
            (start at x; GAIRAT Algorithm 1).
        tau: early-stop budget τ, an int or a per-example integer tensor ``(N,)``; ``None`` for
            plain PGD.
        clip: ``(low, high)`` box for the inputs, ``None`` for inputs that are not images.

    Shape:
        - x: ``(N, *)`` floating point, inside ``clip``.
        - y: ``(N,)`` integer class indices.
        - Output: :class:`AttackOutput` ``(adv (N, *), kappa (N,) int64)``.

    Raises:
        ValueError: on a negative ``eps``/``steps``/``tau``, a non-positive ``step_size``, inputs
            outside ``clip`` or non-finite, labels out of range, a model output that is not
            ``(N, C)`` or that turns non-finite, a model on another device than ``x``.
        TypeError: on non-tensor inputs or float labels.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> attack = GeometryAwareAttack(model, eps=0.1, step_size=0.05, steps=5)
        >>> x_adv, kappa = attack(torch.rand(8, 4), torch.randint(0, 3, (8,)))
        >>> x_adv.shape, kappa.dtype, bool((kappa >= 0).all() and (kappa <= 5).all())
        (torch.Size([8, 4]), torch.int64, True)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        step_size: float,
        steps: int,
        loss: AttackLoss = "ce",
        random_start: Optional[str] = "uniform",
        tau: Union[int, Tensor, None] = None,
        clip: Optional[Tuple[float, float]] = (0.0, 1.0),
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Expected `model` to be a torch.nn.Module, got {type(model).__name__}."
            )
        # The attack needs no gradient synchronisation: run DDP's wrapped module directly.
        self.model = (
            model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        )
        self.eps = check_number(eps, "eps", minimum=0.0)
        self.step_size = check_number(step_size, "step_size", minimum=0.0, strict=True)
        self.steps = check_int(steps, "steps", 0)
        if not callable(loss):
            check_choice(loss, "loss", _LOSSES + ("<callable (logits_adv, y) -> loss>",))
        self.loss = loss
        if random_start is not None:
            check_choice(random_start, "random_start", _STARTS + ("None",))
        self.random_start = random_start
        self.tau = tau
        self.clip = check_clip(clip)

    @property
    def tau(self) -> Union[int, Tensor, None]:
        """FAT's early-stop budget: an int, a per-example integer tensor ``(N,)``, or ``None``.

        Settable, e.g. per epoch for FAT's τ schedule; checked on assignment.
        """
        return self._tau

    @tau.setter
    def tau(self, value: Union[int, Tensor, None]) -> None:
        self._tau = _check_tau(value)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps:.6g}, step_size={self.step_size:.6g}, "
            f"steps={self.steps}, loss={self.loss!r}, random_start={self.random_start!r}, "
            f"tau={self.tau!r}, clip={self.clip})"
        )

    def __call__(self, x: Tensor, y: Tensor) -> AttackOutput:
        x = self._check_input(x)
        y = check_labels(y, x.shape[0])
        if y.device != x.device:
            raise ValueError(
                f"Expected `y` on {x.device} like `x`, got {y.device}; move it with `.to(x.device)`."
            )
        with torch.enable_grad(), frozen_for_attack(self.model):
            return self._run(x, y.long())

    def _check_input(self, x: object) -> Tensor:
        x = check_tensor(x, "x")
        if not x.is_floating_point() or x.dim() < 1:
            raise TypeError(
                f"Expected `x` to be a floating-point tensor (N, *), got {x.dtype} of shape {tuple(x.shape)}; "
                "convert uint8 images with `x.float() / 255`."
            )
        param = next(self.model.parameters(), None)
        if param is not None and param.device != x.device:
            raise ValueError(
                f"Expected the model and `x` on the same device, got model on {param.device} and "
                f"x on {x.device}; call `model.to(x.device)` or move the data."
            )
        return x

    def _report(
        self, x: Tensor, y: Tensor, labels_ok: Tensor, finite: Tensor, num_classes: int
    ) -> None:
        """Raise for a bad input, label or logit, from device flags: the attack's one synchronisation.

        Checking after the loop rather than before it keeps the host from waiting on the device
        while the attack is being queued; a bad input only costs the wasted attack.
        """
        x_finite = torch.isfinite(x).all()
        in_clip = (
            torch.ones_like(x_finite)
            if self.clip is None
            else ((x >= self.clip[0]) & (x <= self.clip[1])).all()
        )
        x_fine, clip_fine, labels_fine, logits_fine = torch.stack(
            [x_finite, in_clip, labels_ok, finite]
        ).tolist()
        if not x_fine:
            check_finite(x, "x")
        if not clip_fine:
            low, high = self.clip  # type: ignore[misc]
            raise ValueError(
                f"Expected `x` inside clip=({low:g}, {high:g}), got values in "
                f"[{float(x.min()):.4g}, {float(x.max()):.4g}]; feed unnormalised inputs (put the "
                "normalisation inside the model) or pass `clip=None` for inputs that are not images."
            )
        if not (labels_fine and logits_fine):
            raise_if_invalid(labels_ok, finite, y, num_classes, "logits during the attack")

    def _start(self, x: Tensor) -> Tensor:
        if self.random_start == "uniform":
            return self._clip(x + torch.empty_like(x).uniform_(-self.eps, self.eps))
        if self.random_start == "normal":
            return x + 0.001 * torch.randn_like(x)
        return x.clone()

    def _clip(self, x: Tensor) -> Tensor:
        return x if self.clip is None else x.clamp(*self.clip)

    def _objective(self, x: Tensor) -> Objective:
        if callable(self.loss):
            return self.loss
        if self.loss == "ce":
            return lambda logits, y: F.cross_entropy(at_least_float32(logits), y, reduction="none")
        if self.loss == "cw":
            return cw_margin
        with torch.no_grad():  # TRADES: natural predictions once, not once per step
            logits_nat = self.model(x).detach()
        return lambda logits, y: trades_kl(logits, logits_nat)

    def _forward(self, x_adv: Tensor, n: int) -> Tensor:
        logits = self.model(x_adv)
        if not isinstance(logits, Tensor):
            raise TypeError(
                f"Expected the model to return a logits tensor (N, C), got {type(logits).__name__}; "
                "return raw class scores (no tuple or dict) from `forward`."
            )
        return check_logits(logits, n, name="model output")

    def _stepper(self, x: Tensor, objective: Objective) -> Step:
        """The update ``(t, x⁽ᵗ⁾, ∇ℓ, y) -> x⁽ᵗ⁺¹⁾`` of one attack call: a signed-gradient step, then
        the projection onto the ε-ball and ``clip``. Subclasses change the step rule here only."""
        ball = (x - self.eps, x + self.eps)
        return lambda t, x_adv, grad, y: self._project(x_adv + self.step_size * grad.sign(), ball)

    def _project(self, x_adv: Tensor, ball: Tuple[Tensor, Tensor]) -> Tensor:
        return self._clip(torch.min(torch.max(x_adv, ball[0]), ball[1]))

    def _run(self, x: Tensor, y: Tensor) -> AttackOutput:
        n = x.shape[0]
        kappa = torch.zeros(n, dtype=torch.long, device=x.device)
        x_adv = self._start(x).detach()
        # Inputs, labels and logits are checked on the device and reported once, after the loop: no
        # host synchronisation per step. Clamped labels keep the objective defined until then.
        finite = labels_ok = torch.ones((), dtype=torch.bool, device=x.device)
        if self.steps == 0:
            self._report(x, y, labels_ok, finite, 0)
            return AttackOutput(x_adv, kappa)
        objective = self._objective(x)
        step = self._stepper(x, objective)
        budget = _budget(self.tau, n, x.device)
        active = None if budget is None else torch.ones(n, dtype=torch.bool, device=x.device)
        y_safe = y
        for t in range(self.steps):
            x_adv.requires_grad_(True)
            logits = self._forward(x_adv, n)
            if t == 0:
                labels_ok = labels_in_range(y, logits.shape[1])
                y_safe = y.clamp(0, logits.shape[1] - 1)
            finite = finite & torch.isfinite(logits).all()
            correct = logits.argmax(dim=1) == y
            if budget is None or active is None:
                kappa += correct
            else:
                kappa += correct & active
                stop = active & ~correct & (budget == 0)
                budget -= (active & ~correct & (budget > 0)).long()
                active &= ~stop
            value = objective(logits, y_safe).sum()
            # A model whose output does not depend on the input gives nothing to climb: zero gradient.
            grad = (
                torch.autograd.grad(value, x_adv)[0] if value.requires_grad else torch.zeros_like(x)
            )
            x_adv = x_adv.detach()
            stepped = step(t, x_adv, grad, y_safe)
            x_adv = stepped if active is None else torch.where(_expand(active, x), stepped, x_adv)
        self._report(x, y, labels_ok, finite, logits.shape[1])
        return AttackOutput(x_adv.detach(), kappa)


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _check_tau(tau: Union[int, Tensor, None]) -> Union[int, Tensor, None]:
    if tau is None:
        return None
    if isinstance(tau, Tensor):
        if tau.dtype.is_floating_point or tau.dim() != 1:
            raise TypeError(
                f"Expected `tau` as an int or an integer tensor of shape (N,), got {tau.dtype} {tuple(tau.shape)}."
            )
        if tau.numel() and bool((tau < 0).any()):
            raise ValueError(f"Expected `tau` >= 0, got a minimum of {int(tau.min())}.")
        return tau
    if isinstance(tau, bool) or not isinstance(tau, int) or tau < 0:
        raise ValueError(
            f"Expected `tau` to be an int >= 0, an integer tensor (N,), or None; got {tau!r}."
        )
    return tau


def _budget(tau: Union[int, Tensor, None], n: int, device: torch.device) -> Optional[Tensor]:
    if tau is None:
        return None
    if isinstance(tau, Tensor):
        if tau.shape != (n,):
            raise ValueError(
                f"Expected a per-example `tau` of shape ({n},), got {tuple(tau.shape)}."
            )
        return tau.to(device=device, dtype=torch.long).clone()
    return torch.full((n,), tau, dtype=torch.long, device=device)
