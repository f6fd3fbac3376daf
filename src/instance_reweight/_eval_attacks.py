"""The attacks behind :mod:`instance_reweight.evaluation`, each built once into a robust-mask function.

A *builder* checks an attack's options and returns ``run(x, y) -> (N,) bool``: ``True`` where every
point the attack returns is classified correctly. Restarts and logit scales combine per example
through :func:`robust_to_all`, each run seeing only the examples still robust.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import (
    at_least_float32,
    check_bool,
    check_choice,
    check_finite,
    check_int,
    check_logits,
    check_number,
)
from .attack import AttackLoss, GeometryAwareAttack, Objective, Step, _expand

Clip = Optional[Tuple[float, float]]
Run = Callable[[Tensor, Tensor], Tensor]


def logits_of(model: nn.Module, x: Tensor) -> Tensor:
    """Checked logits ``(N, C)``, without gradient; non-finite logits raise."""
    with torch.no_grad():
        logits = model(x)
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"Expected the model to return a logits tensor (N, C), got {type(logits).__name__}; "
            "return raw class scores (no tuple or dict) from `forward`."
        )
    logits = check_logits(logits, x.shape[0], name="model output")
    check_finite(logits, "model output")
    return logits


def robust_to_all(
    runs: Sequence[Run], x: Tensor, y: Tensor, mask: Optional[Tensor] = None
) -> Tensor:
    """AND of ``mask`` (default all ``True``) and every run's mask, each run only where still ``True``.

    One host synchronisation per run (to select the survivors).
    """
    mask = torch.ones_like(y, dtype=torch.bool) if mask is None else mask.clone()
    for run in runs:
        idx = mask.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        mask[idx] = run(x[idx], y[idx])
    return mask


def natural(model: nn.Module, *, eps: float, clip: Clip, norm: str) -> Run:
    """No attack point: the natural check, which the caller always makes, is the whole answer."""
    return lambda x, y: torch.ones_like(y, dtype=torch.bool)


def _survives(attack: GeometryAwareAttack, every_iterate: bool, x: Tensor, y: Tensor) -> Tensor:
    """Correct at the final iterate, and with ``every_iterate`` also at iterates 0..K−1 (κ = K)."""
    adv, kappa = attack(x, y)
    correct = logits_of(attack.model, adv).argmax(dim=1) == y
    return correct & (kappa == attack.steps) if every_iterate else correct


def _restarted(attack: GeometryAwareAttack, restarts: object, every_iterate: object) -> Run:
    """Robust iff the attack fails in every one of ``restarts`` runs."""
    survives = functools.partial(_survives, attack, check_bool(every_iterate, "every_iterate"))
    return functools.partial(robust_to_all, [survives] * check_int(restarts, "restarts", 1))


def pgd(
    model: nn.Module,
    *,
    eps: float,
    clip: Clip,
    norm: str,
    steps: int,
    step_size: float,
    restarts: int,
    random_start: Optional[str],
    every_iterate: bool,
    loss: AttackLoss,
) -> Run:
    """ℓ∞ or ℓ2 PGD through :class:`GeometryAwareAttack`, ``restarts`` times."""
    attack = GeometryAwareAttack(
        model,
        eps=eps,
        step_size=step_size,
        steps=steps,
        loss=loss,
        random_start=random_start,
        clip=clip,
        norm=norm,
    )
    return _restarted(attack, restarts, every_iterate)


def scaled_cross_entropy(logits: Tensor, y: Tensor, *, alpha: float) -> Tensor:
    """CE of ``alpha · logits`` per example: small α undoes saturated (gradient-masking) logits."""
    return F.cross_entropy(alpha * at_least_float32(logits), y, reduction="none")


def logit_scaled_pgd(model: nn.Module, *, alphas: Sequence[float], **pgd_options: Any) -> Run:
    """PGD on CE(α·logits) for each α; robust iff robust for every α."""
    runs = [
        pgd(model, loss=functools.partial(scaled_cross_entropy, alpha=a), **pgd_options)
        for a in _check_alphas(alphas)
    ]
    return functools.partial(robust_to_all, runs)


def lm_pgd(
    model: nn.Module, *, norm: str, restarts: int, every_iterate: bool, **options: Any
) -> Run:
    """:class:`LineSearchMomentumPGD`, ``restarts`` times (ℓ∞ only, as MAIL defines it)."""
    if norm != "linf":
        raise ValueError(
            f"Expected norm='linf' for 'lm-pgd' (MAIL's LM-PGD is an ℓ∞ attack), got {norm!r}; "
            "evaluate ℓ2 robustness with 'pgd20', 'pgd+', 'cw', 'pgd20-ls', 'apgd-ce' or 'aa'."
        )
    return _restarted(LineSearchMomentumPGD(model, **options), restarts, every_iterate)


def autoattack(
    model: nn.Module,
    *,
    eps: float,
    clip: Clip,
    norm: str,
    version: str,
    seed: Optional[int],
    attacks: Optional[Sequence[str]] = None,
    restarts: Optional[int] = None,
) -> Run:
    """AutoAttack (``pyautoattack``); robust iff the labels it returns equal ``y``.

    AutoAttack reseeds the global RNG with ``seed``; the caller's RNG state is restored afterwards.
    Its targeted attacks use min(9, C − 1) target classes (9, the standard, for C ≥ 10).
    """
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:
        raise ImportError(
            "Expected the optional package `pyautoattack` for the 'aa' and 'apgd-ce' attacks, got "
            "none installed; pip install 'instance-reweight[evaluation]' (or pyautoattack==0.2.0), "
            "or leave those attacks out."
        ) from err
    if clip != (0.0, 1.0):
        raise ValueError(
            f"Expected clip=(0.0, 1.0) for AutoAttack (it clips to [0, 1]), got {clip!r}."
        )
    if attacks is None:
        check_choice(version, "version", ("standard", "plus", "rand"))
    if restarts is not None:
        check_int(restarts, "restarts", 1)
    if seed is not None:
        check_int(seed, "seed", 0)

    def run(x: Tensor, y: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"Expected image batches (N, C, H, W) for AutoAttack, got shape {tuple(x.shape)}; "
                "reshape the inputs inside the model."
            )
        adversary = AutoAttack(
            model,
            eps=eps,
            norm={"linf": "Linf", "l2": "L2"}[norm],
            version=version,
            seed=seed,
            device=x.device,
            attacks=None if attacks is None else list(attacks),
        )
        if restarts is not None:
            adversary.apgd.n_restarts = restarts
        num_classes = logits_of(model, x[:1]).shape[1]
        height = x.shape[2]
        if norm == "l2" and "square" in adversary.attacks_to_run and height < 5:
            # Square's ℓ2 start tiles the image in blocks of height // 5 pixels: 0 below 5.
            raise ValueError(
                f"Expected images at least 5 pixels high for AutoAttack's ℓ2 Square attack, got "
                f"{height}; leave Square out, e.g. {{'aa': {{'version': 'custom', 'attacks': "
                "['apgd-ce', 'apgd-t', 'fab-t']}}, or evaluate larger images."
            )
        dlr = {"apgd-t", "apgd-dlr"} & set(adversary.attacks_to_run)
        if dlr and num_classes < 4:
            raise ValueError(
                f"Expected at least 4 classes for AutoAttack's DLR attacks ({', '.join(sorted(dlr))}), "
                f"got {num_classes}; evaluate with 'apgd-ce' and the PGD attacks instead."
            )
        adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = min(
            9, num_classes - 1
        )
        with _rng_restored(x.device):
            _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=x.shape[0])
        return y_adv.to(y.device) == y

    return run


@contextlib.contextmanager
def _rng_restored(device: torch.device) -> Iterator[None]:
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def _check_alphas(alphas: object) -> Tuple[float, ...]:
    values = tuple(alphas) if isinstance(alphas, (tuple, list)) else ()
    if not values or not all(
        not isinstance(a, bool) and isinstance(a, (int, float)) and 0 < a < float("inf")
        for a in values
    ):
        raise ValueError(
            f"Expected `alphas` as a non-empty tuple of positive finite logit scales, got {alphas!r}."
        )
    return tuple(float(a) for a in values)


class LineSearchMomentumPGD(GeometryAwareAttack):
    r"""LM-PGD (MAIL Appendix A): PGD with momentum and a line-searched step, and its κ.

    With :math:`g^{(t)} = \mathrm{sign}\,\nabla_x \ell(f(x^{(t)}), y)` and :math:`\Pi` the projection
    onto :math:`B_\epsilon[x]` and the ``clip`` box, each step is (MAIL Eqs. 12–14)

    .. math::
        \begin{aligned}
        \alpha^{(t)} &= \arg\max_{\alpha \in V_t}
            \ell\bigl(f(\Pi[x^{(t)} + \gamma v^{(t)} + \alpha g^{(t)}]), y\bigr), \\
        v^{(t+1)} &= \gamma v^{(t)} + \alpha^{(t)} g^{(t)}, \qquad
        x^{(t+1)} = \Pi[x^{(t)} + v^{(t+1)}],
        \end{aligned}

    per example, with :math:`v^{(0)} = 0` and :math:`V_t = [\alpha_{\min}, \alpha_{\max}]` for
    :math:`t <` ``min_step_steps`` and :math:`[0, \alpha_{\max}]` after. The line search tries
    ``line_search`` evenly spaced values of :math:`V_t` (one forward pass each, no backward); on a
    tie the larger step wins, so the attack keeps moving on a flat loss. κ counts the iterates
    :math:`t \in 0..K-1` classified correctly, exactly as :class:`GeometryAwareAttack` does, so the
    two κ of one example show how κ depends on the attack path (MAIL Figure 1a).

    Defaults are MAIL's Figure 1a at ε = 8/255: K = 50, γ = 0.8, α_max = 6/255 and α_min = 4/255
    for the first 15 steps, written as α_max = 0.75·ε and α_min = ⅔·α_max so they scale with ε.

    Args:
        model: classifier returning logits ``(N, C)``.
        eps: ℓ∞ radius ε.
        step_size: α_max, ``None`` for 0.75·ε.
        steps: number of steps K.
        min_step: α_min during the first ``min_step_steps`` steps, ``None`` for ⅔·α_max.
        min_step_steps: how many steps α_min applies (0 after).
        momentum: γ in [0, 1).
        line_search: number of candidate steps in :math:`V_t` (≥ 2, both ends included).
        loss: as :class:`GeometryAwareAttack`, but a callable must return one value per example.
        random_start: as :class:`GeometryAwareAttack`.
        clip: as :class:`GeometryAwareAttack`.

    Shape:
        - x: ``(N, *)`` floating point, inside ``clip``.
        - y: ``(N,)`` integer class indices.
        - Output: :class:`AttackOutput` ``(adv (N, *), kappa (N,) int64)``.

    Raises:
        ValueError: as :class:`GeometryAwareAttack`; also on ``min_step`` outside [0, α_max],
            ``momentum`` outside [0, 1), ``line_search`` < 2, or a loss that is not ``(N,)``.
        TypeError: as :class:`GeometryAwareAttack`; also on a ``min_step`` or ``momentum`` that is
            not a real number.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> attack = LineSearchMomentumPGD(model, eps=0.1, steps=5)
        >>> x_adv, kappa = attack(torch.rand(8, 4), torch.randint(0, 3, (8,)))
        >>> x_adv.shape, kappa.dtype
        (torch.Size([8, 4]), torch.int64)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        step_size: Optional[float] = None,
        steps: int = 50,
        min_step: Optional[float] = None,
        min_step_steps: int = 15,
        momentum: float = 0.8,
        line_search: int = 5,
        loss: AttackLoss = "ce",
        random_start: Optional[str] = "uniform",
        clip: Clip = (0.0, 1.0),
    ) -> None:
        super().__init__(
            model,
            eps=eps,
            step_size=1.0 if step_size is None else step_size,
            steps=steps,
            loss=loss,
            random_start=random_start,
            clip=clip,
        )
        if step_size is None:
            self.step_size = 0.75 * self.eps
        self.min_step = (
            2 / 3 * self.step_size
            if min_step is None
            else check_number(
                min_step,
                "min_step",
                minimum=0.0,
                maximum=self.step_size,
                hint=" (α_min, at most step_size; None for ⅔·step_size)",
            )
        )
        self.min_step_steps = check_int(min_step_steps, "min_step_steps", 0)
        self.momentum = check_number(momentum, "momentum", hint=" in [0, 1) (γ)")
        if not 0 <= self.momentum < 1:
            raise ValueError(
                f"Expected `momentum` in [0, 1) (γ; MAIL uses 0.8), got {self.momentum}: a negative γ "
                "flips the velocity and γ >= 1 never lets it decay."
            )
        self.line_search = check_int(line_search, "line_search", 2)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps:.6g}, step_size={self.step_size:.6g}, "
            f"steps={self.steps}, min_step={self.min_step:.6g}, min_step_steps={self.min_step_steps}, "
            f"momentum={self.momentum:g}, line_search={self.line_search}, loss={self.loss!r}, "
            f"random_start={self.random_start!r}, clip={self.clip})"
        )

    def _stepper(self, x: Tensor, objective: Objective) -> Step:
        """Nesterov look-ahead, line-searched step and momentum update; the velocity lives here."""
        velocity = torch.zeros_like(x)

        def step(t: int, x_adv: Tensor, grad: Tensor, y: Tensor) -> Tensor:
            nonlocal velocity
            direction = grad.sign()
            min_step = self.min_step if t < self.min_step_steps else 0.0
            ahead = x_adv + self.momentum * velocity
            alpha, x_next = self._line_search(objective, y, ahead, direction, x, min_step)
            velocity = self.momentum * velocity + _expand(alpha, x) * direction
            return x_next

        return step

    def _line_search(
        self,
        objective: Objective,
        y: Tensor,
        ahead: Tensor,
        direction: Tensor,
        x: Tensor,
        min_step: float,
    ) -> Tuple[Tensor, Tensor]:
        """Per example, the step in ``line_search`` values from α_max down to ``min_step`` whose
        point Π[ahead + α·direction] has the largest loss (the larger step wins ties), and that point.
        """
        n = y.shape[0]
        best_alpha = torch.zeros(n, dtype=ahead.dtype, device=ahead.device)
        best_value = torch.full((n,), -float("inf"), device=ahead.device)
        best_x = ahead
        with torch.no_grad():
            span = (self.step_size - min_step) / (self.line_search - 1)
            for alpha in (self.step_size - i * span for i in range(self.line_search)):
                candidate = self._project(ahead + alpha * direction, x)
                value = self._per_example(objective(self._forward(candidate, n), y), n)
                better = value > best_value
                best_value = torch.where(better, value, best_value.to(value.dtype))
                best_alpha = torch.where(better, alpha, best_alpha)
                best_x = torch.where(_expand(better, ahead), candidate, best_x)
        return best_alpha, best_x

    @staticmethod
    def _per_example(value: Tensor, n: int) -> Tensor:
        if value.shape != (n,):
            raise ValueError(
                f"Expected the LM-PGD loss to return one value per example, shape ({n},), got "
                f"{tuple(value.shape)}; its line search picks each example's step by its own loss."
            )
        return value
