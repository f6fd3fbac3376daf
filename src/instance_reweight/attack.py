"""Geometry-aware PGD (GAIRAT Algorithms 1, 3 and 4): adversarial data and the geometry value κ."""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import (
    DeferredChecks,
    at_least_float32,
    check_choice,
    check_clip,
    check_eps,
    check_finite,
    check_generator,
    check_generator_device,
    check_int,
    check_labels,
    check_logits,
    check_model,
    check_number,
    check_tensor,
    fail,
)
from .losses import cw_margin, trades_kl

__all__ = ["AttackOutput", "GeometryAwareAttack", "frozen_for_attack"]

AttackLoss = Union[str, Callable[[Tensor, Tensor], Tensor]]
Objective = Callable[[Tensor, Tensor], Tensor]
Step = Callable[[int, Tensor, Tensor, Tensor], Tensor]

_LOSSES = ("ce", "kl", "cw")
_STARTS = ("uniform", "normal")
NORMS = ("linf", "l2")


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
    r"""Geometry-aware PGD: the ℓ∞ (or ℓ2) PGD attack that also returns each example's geometry value κ.

    Starting from :math:`x^{(0)}` (see ``random_start``), with :math:`g = \nabla_{x^{(t)}}
    \ell(f(x^{(t)}), y)`, each step is

    .. math::
        \begin{aligned}
        x^{(t+1)} &= \mathrm{clip}\Bigl(\Pi_{B_\epsilon[x]}\bigl(x^{(t)}
            + \alpha\,\mathrm{sign}\,g\bigr)\Bigr) && (ℓ∞) \\
        x^{(t+1)} &= \mathrm{clip}\Bigl(\Pi_{B_\epsilon[x]}\bigl(x^{(t)}
            + \alpha\, g / \lVert g\rVert_2\bigr)\Bigr) && (ℓ2) \\
        \kappa &= \#\{t \in 0..K-1 : \arg\max f(x^{(t)}) = y\}.
        \end{aligned}

    The ℓ2 norm and the projection are per example (over all of an example's features); an example
    whose gradient is zero stays where it is. The ℓ2 projection scales :math:`x^{(t+1)} - x` down to
    length ε when it is longer; ``clip`` after it can only shorten it.

    Every correct check counts (GAIRAT Algorithm 1 counts, it does not stop at the first miss) and
    the final iterate :math:`x^{(K)}` is never checked, so a misclassified natural point gets κ near 0
    and the largest GAIRAT weight. The check reuses the forward pass of each step: κ is free.

    With ``tau`` (FAT's early-stopped PGD-K-τ, GAIRAT Algorithm 3) every example carries a budget;
    at each check a misclassified example with budget 0 stops for good (keeping that iterate), one
    with budget > 0 spends 1 and goes on, and a correct one adds 1 to κ.

    The model runs in eval mode with its parameters frozen (:func:`frozen_for_attack`); the loop
    does no host synchronisation and no per-example Python. Inside ``torch.autocast`` the model
    runs in the autocast dtype; the attack loss is taken in float32 (float64 for a float64 model) and
    κ counts the model's own predictions. For bfloat16 or float16 inputs each step and projection is
    computed in float32 and rounded toward ``x`` on the input's grid, so the iterate stays inside the
    ε-ball and ``clip`` when measured in float32.

    Args:
        model: classifier returning logits ``(N, C)``; a ``DistributedDataParallel`` model is
            attacked through its ``.module`` (no gradient synchronisation during the attack).
        eps: radius ε of the ``norm`` ball (``0`` gives κ of the natural point only).
        step_size: step α (a length in the ``norm``): the papers' "step size", torchattacks'
            ``alpha``.
        steps: number of steps K (``0`` returns the start point and κ = 0).
        loss: ``"ce"`` (AT, GAIRAT, MART, MAIL-AT), ``"kl"`` (TRADES: KL between natural and
            adversarial predictions, natural probabilities computed once), ``"cw"`` (CW margin,
            confidence 50), or a callable ``(logits_adv, y) -> (N,)`` or scalar to maximise.
        random_start: ``"uniform"`` (x + a point uniform in the ε-ball — U(−ε, ε) per feature for
            ℓ∞ —, clipped; GAIRAT), ``"normal"``
            (x + 0.001·N(0, 1), not clipped before the first step; TRADES, MART, MAIL) or ``None``
            (start at x; GAIRAT Algorithm 1).
        tau: early-stop budget τ, an int or a per-example integer tensor ``(N,)``; ``None`` for
            plain PGD.
        clip: ``(low, high)`` box for the inputs, ``None`` for inputs that are not images.
        norm: the threat model, ``"linf"`` (both papers) or ``"l2"`` (RobustBench's ℓ2 track, ε = 0.5).
        generator: the :class:`torch.Generator` of the random start, on the inputs' device, as
            torch's own random functions take one; ``None``: torch's global generator. With a
            generator seeded the same way, an attack repeats itself without touching the global
            seed.

    Shape:
        - x: ``(N, *)`` floating point, inside ``clip``.
        - y: ``(N,)`` integer class indices.
        - Output: :class:`AttackOutput` ``(adv (N, *), kappa (N,) int64)``.

    Raises:
        ValueError: on a negative ``eps``/``steps``/``tau``, an ℓ∞ ``eps`` wider than ``clip`` (a
            pixel-scale ε), a non-positive ``step_size``, inputs outside ``clip`` or non-finite,
            labels out of range, a model output that is not ``(N, C)`` or that turns non-finite, an
            attack loss that is not ``(N,)`` or scalar, a model on another device than ``x``, a lazy
            module before its first forward, a model or ``x`` on the meta device.
        TypeError: on non-tensor inputs, float labels or an integer attack loss.

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
        norm: str = "linf",
        generator: Optional[torch.Generator] = None,
    ) -> None:
        check_model(model)
        # The attack needs no gradient synchronisation: run DDP's wrapped module directly.
        self.model = (
            model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        )
        self.clip = check_clip(clip)
        self.norm = check_choice(norm, "norm", NORMS)
        self.eps = check_eps(eps, self.clip, self.norm)
        self.step_size = check_number(step_size, "step_size", minimum=0.0, strict=True)
        self.steps = check_int(steps, "steps", 0)
        if not callable(loss):
            check_choice(loss, "loss", _LOSSES, alternative="a callable (logits_adv, y) -> loss")
        self.loss = loss
        if random_start is not None:
            check_choice(random_start, "random_start", _STARTS, alternative="None")
        self.random_start = random_start
        self.tau = tau
        self.generator = check_generator(generator)

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
            f"tau={self.tau!r}, clip={self.clip}, norm={self.norm!r})"
        )

    def __call__(self, x: Tensor, y: Tensor) -> AttackOutput:
        checks = DeferredChecks()
        output = self._attack(x, y, checks)
        checks.verify()
        return output

    def _attack(self, x: Tensor, y: Tensor, checks: DeferredChecks) -> AttackOutput:
        """The attack with its value checks queued on ``checks`` rather than read (for
        :mod:`instance_reweight.methods`, which reads all of a training step's checks at once)."""
        x = self._check_input(x)
        y = check_labels(y, x.shape[0])
        if y.device != x.device:
            raise ValueError(
                f"Expected `y` on {x.device} like `x`, got {y.device}; move it with `.to(x.device)`."
            )
        # Autograd is needed also when the caller runs under no_grad or inference_mode.
        with torch.inference_mode(False), torch.enable_grad(), frozen_for_attack(self.model):
            return self._run(x, y.long(), checks)

    def _check_input(self, x: object) -> Tensor:
        x = check_tensor(x, "x")
        if x.is_meta:
            raise ValueError(
                "Expected `x` with data, got a tensor on the meta device; pass the batch itself."
            )
        if not x.is_floating_point() or x.dim() < 1:
            raise TypeError(
                f"Expected `x` to be a floating-point tensor (N, *), got {x.dtype} of shape {tuple(x.shape)}; "
                "convert uint8 images with `x.float() / 255`."
            )
        if self.generator is not None and self.random_start is not None:
            check_generator_device(self.generator, x.device)
        param = next(self.model.parameters(), None)
        if param is not None and param.device != x.device:
            raise ValueError(
                f"Expected the model and `x` on the same device, got model on {param.device} and "
                f"x on {x.device}; call `model.to(x.device)` or move the data."
            )
        return x

    def _queue_input_checks(self, x: Tensor, checks: DeferredChecks) -> None:
        """``x`` finite and inside ``clip``, as device flags (read after the loop, so that the host
        does not wait on the device while the attack is being queued)."""
        checks.add(torch.isfinite(x).all(), lambda: check_finite(x, "x"))
        if self.clip is not None:
            low, high = self.clip
            checks.add(
                ((x >= low) & (x <= high)).all(),
                lambda: fail(
                    f"Expected `x` inside clip=({low:g}, {high:g}), got values in "
                    f"[{float(x.min()):.4g}, {float(x.max()):.4g}]; feed unnormalised inputs (put the "
                    "normalisation inside the model) or pass `clip=None` for inputs that are not images."
                ),
            )

    def _start(self, x: Tensor) -> Tensor:
        g = self.generator  # None: torch's global generator
        if self.random_start == "uniform" and self.norm == "l2":
            # Uniform in the ball: a uniform direction, and a radius ε·U^(1/d) (d features).
            u = torch.rand(x.shape[0], dtype=x.dtype, device=x.device, generator=g)
            radius = self.eps * u.pow(1 / max(math.prod(x.shape[1:]), 1))
            offset = _expand(radius, x) * _unit(torch.empty_like(x).normal_(generator=g))
            return _toward(self._clip(at_least_float32(x) + offset), x)
        if self.random_start == "uniform":
            noise = torch.empty_like(x).uniform_(-self.eps, self.eps, generator=g)
            return self._project(x + noise, x)
        if self.random_start == "normal":
            return x + 0.001 * torch.empty_like(x).normal_(generator=g)
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
        try:
            logits = self.model(x_adv)
        except RuntimeError as error:
            param = next(self.model.parameters(), None)
            if param is None or not param.is_floating_point() or param.dtype == x_adv.dtype:
                raise
            raise TypeError(
                f"Expected `x` in the model's dtype {param.dtype}, got {x_adv.dtype}; convert it with "
                f"`x.to({param.dtype})` (or the model with `model.to({x_adv.dtype})`)."
            ) from error
        if not isinstance(logits, Tensor):
            raise TypeError(
                f"Expected the model to return a logits tensor (N, C), got {type(logits).__name__}; "
                "return raw class scores (no tuple or dict) from `forward`."
            )
        return check_logits(logits, n, name="model output")

    def _value(self, objective: Objective, logits: Tensor, y: Tensor) -> Tensor:
        """The attack loss to climb, summed; it must reach ``x`` through autograd."""
        value = objective(logits, y)
        if not isinstance(value, Tensor):
            raise TypeError(
                "Expected the attack loss to return a tensor (N,) or a scalar, got "
                f"{type(value).__name__}; compute it with torch operations on the logits (no `.item()`)."
            )
        n = logits.shape[0]
        if value.dim() != 0 and value.shape != (n,):
            raise ValueError(
                f"Expected the attack loss to return one value per example, shape ({n},), or a "
                f"scalar, got {tuple(value.shape)}; sum the per-class terms (e.g. `.sum(dim=1)`)."
            )
        if not value.is_floating_point():
            raise TypeError(
                f"Expected the attack loss to return floating-point values, got dtype {value.dtype}: "
                "integer values carry no gradient; compute it from the logits with torch operations."
            )
        if not value.requires_grad:
            raise ValueError(
                "Expected the attack loss to depend on `x` through autograd, got a value without a "
                "gradient: the model's forward (or the attack loss) cuts the graph, e.g. runs under "
                "torch.no_grad or calls .detach(), and `x` would stay unattacked; remove the cut."
            )
        return value.sum()

    def _stepper(self, x: Tensor, objective: Objective) -> Step:
        """The update ``(t, x⁽ᵗ⁾, ∇ℓ, y) -> x⁽ᵗ⁺¹⁾`` of one attack call: a signed (ℓ∞) or normalised
        (ℓ2) gradient step, then the projection onto the ε-ball and ``clip``. Subclasses change the
        step rule here only."""
        if self.norm == "l2":
            return lambda t, x_adv, grad, y: self._project_l2(
                x_adv + self.step_size * _unit(grad), x
            )
        return lambda t, x_adv, grad, y: self._project(x_adv + self.step_size * grad.sign(), x)

    def _project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """ℓ∞: onto the ε-ball around ``x`` and ``clip``, in at least float32, then onto ``x``'s grid."""
        x_wide = at_least_float32(x)
        ball = torch.min(torch.max(at_least_float32(x_adv), x_wide - self.eps), x_wide + self.eps)
        return _toward(self._clip(ball), x)

    def _project_l2(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """ℓ2: ``x_adv − x`` scaled down to length ε and clipped, in at least float32, then onto
        ``x``'s grid."""
        x_wide = at_least_float32(x)
        delta = at_least_float32(x_adv) - x_wide
        length = _expand(_l2(delta), x)
        # Scale down only what is longer than ε; the clamped denominator keeps ε = 0 free of 0/0.
        scale = torch.where(
            length > self.eps, self.eps / length.clamp_min(torch.finfo(length.dtype).tiny), 1.0
        )
        return _toward(self._clip(x_wide + delta * scale), x)

    def _run(self, x: Tensor, y: Tensor, checks: DeferredChecks) -> AttackOutput:
        n = x.shape[0]
        kappa = torch.zeros(n, dtype=torch.long, device=x.device)
        x_adv = self._start(x).detach()
        # Inputs, labels, logits and gradients are checked on the device and read once, after the
        # loop: no host synchronisation per step. Clamped labels keep the objective defined until then.
        self._queue_input_checks(x, checks)
        if self.steps == 0:
            # No step, but the labels and the model's output are checked all the same.
            with torch.no_grad():
                logits = self._forward(x_adv, n)
            checks.add_labels_and_logits(y, logits.shape[1], torch.isfinite(logits).all())
            return AttackOutput(x_adv, kappa)
        objective = self._objective(x)
        step = self._stepper(x, objective)
        budget = _budget(self.tau, n, x.device)
        active = None if budget is None else torch.ones(n, dtype=torch.bool, device=x.device)
        finite = grad_finite = torch.ones((), dtype=torch.bool, device=x.device)
        y_safe = y
        for t in range(self.steps):
            x_adv.requires_grad_(True)
            logits = self._forward(x_adv, n)
            if t == 0:
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
            grad = torch.autograd.grad(self._value(objective, logits, y_safe), x_adv)[0]
            grad_finite = grad_finite & torch.isfinite(grad).all()
            x_adv = x_adv.detach()
            stepped = step(t, x_adv, grad, y_safe)
            x_adv = stepped if active is None else torch.where(_expand(active, x), stepped, x_adv)
        checks.add_labels_and_logits(y, logits.shape[1], finite, "logits during the attack")
        checks.add(
            grad_finite,
            lambda: fail(
                "Expected finite gradients of the attack loss with respect to `x`, got NaN or Inf "
                "(sign(NaN) = 0 would leave the input unattacked); check the model for operations "
                "without a finite gradient (e.g. sqrt or norm at 0, log of 0)."
            ),
        )
        return AttackOutput(x_adv.detach(), kappa)


def _toward(target: Tensor, x: Tensor) -> Tensor:
    """``target`` (in at least float32) in ``x``'s dtype, rounded toward ``x`` where rounding to
    nearest would move it away: under bfloat16 or float16 each feature's distance to ``x`` then
    does not grow, so the iterate stays inside the ε-ball and ``clip`` when measured in float32."""
    if target.dtype == x.dtype:
        return target
    rounded = target.to(x.dtype)
    wide = x.to(target.dtype)
    away = (rounded.to(target.dtype) - wide).abs() > (target - wide).abs()
    return torch.where(away, torch.nextafter(rounded, x), rounded)


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _l2(t: Tensor) -> Tensor:
    """The ℓ2 norm of each example ``(N,)``, over all its features."""
    # Not reshape(N, -1), which an empty batch makes ambiguous.
    return torch.linalg.vector_norm(t.reshape(t.shape[0], math.prod(t.shape[1:])), dim=1)


def _unit(t: Tensor) -> Tensor:
    """Each example scaled to ℓ2 norm 1; an all-zero example stays zero (no division by 0)."""
    length = _expand(_l2(t), t)
    return t / length.where(length > 0, 1.0)


def _check_tau(tau: Union[int, Tensor, None]) -> Union[int, Tensor, None]:
    hint = " (FAT's early-stop budget; or an integer tensor (N,), or None)"
    if not isinstance(tau, Tensor):
        return None if tau is None else check_int(tau, "tau", 0, hint)
    if tau.dtype.is_floating_point or tau.is_complex() or tau.dtype == torch.bool:
        raise TypeError(
            f"Expected `tau` as an int or an integer tensor (N,), got dtype {tau.dtype}."
        )
    if tau.dim() != 1:
        raise ValueError(f"Expected a per-example `tau` of shape (N,), got {tuple(tau.shape)}.")
    if tau.numel() and bool((tau < 0).any()):
        raise ValueError(f"Expected `tau` >= 0, got a minimum of {int(tau.min())}.")
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
