"""Weight assignment functions ω: from a signal (κ or PM) to raw, unnormalised instance weights.

Each function takes the signal and the scheme's parameters and returns float32 weights without
gradient. :data:`SCHEMES` names them for :class:`~instance_reweight.InstanceReweightedLoss`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
from torch import Tensor

from ._checks import check_int

__all__ = [
    "SCHEMES",
    "Scheme",
    "gairat_linear",
    "gairat_sigmoid",
    "gairat_tanh",
    "hinge",
    "mail_sigmoid",
    "resolve_scheme",
    "step",
]

SchemeLike = Union[str, Callable[[Tensor], Tensor]]


def _float(signal: Tensor) -> Tensor:
    return signal.detach().float()


@torch.no_grad()
def gairat_tanh(kappa: Tensor, *, steps: int, lam: float) -> Tensor:
    r"""GAIRAT Eq. 6: :math:`\omega = \tfrac12\bigl(1 + \tanh(\lambda + 5(1 - 2\kappa/K))\bigr)`.

    Computed as the identical :math:`\mathrm{sigmoid}(2(\lambda + 5(1 - 2\kappa/K)))`, which does not
    underflow; ``lam=float("inf")`` gives uniform weights (standard AT).

    Example:
        >>> gairat_tanh(torch.tensor([0, 5, 10]), steps=10, lam=0.0)
        tensor([9.9995e-01, 5.0000e-01, 4.5398e-05])
    """
    return torch.sigmoid(2.0 * (lam + 5.0 * (1.0 - 2.0 * _float(kappa) / steps)))


@torch.no_grad()
def gairat_sigmoid(kappa: Tensor, *, steps: int, lam: float) -> Tensor:
    r"""GAIRAT's sigmoid variant (Appendix C.3): :math:`\mathrm{sigmoid}(\lambda + 5(1 - 2\kappa/K))`.

    Example:
        >>> gairat_sigmoid(torch.tensor([5]), steps=10, lam=0.0)
        tensor([0.5000])
    """
    return torch.sigmoid(lam + 5.0 * (1.0 - 2.0 * _float(kappa) / steps))


@torch.no_grad()
def gairat_linear(kappa: Tensor, *, steps: int) -> Tensor:
    r"""GAIRAT Eq. 7: :math:`\omega = 1 - \kappa/(K + 1)`.

    Example:
        >>> gairat_linear(torch.tensor([0, 9]), steps=9)
        tensor([1.0000, 0.1000])
    """
    return 1.0 - _float(kappa) / (steps + 1)


@torch.no_grad()
def mail_sigmoid(margin: Tensor, *, slope: float, bias: float) -> Tensor:
    r"""MAIL Eq. 8: :math:`\omega = \mathrm{sigmoid}(-\gamma(\mathrm{PM} - \beta))`.

    Example:
        >>> mail_sigmoid(torch.tensor([-0.5]), slope=10.0, bias=-0.5)
        tensor([0.5000])
    """
    return torch.sigmoid(-slope * (_float(margin) - bias))


@torch.no_grad()
def hinge(margin: Tensor, *, slope: float, bias: float) -> Tensor:
    r"""MAIL Table 6's hinge, as printed: :math:`\omega = \max(0, \gamma(\mathrm{PM} - \beta))`.

    Note that, as printed, it grows with PM (the opposite of the sigmoid's direction) and gives
    weight 0 to every example with PM ≤ β; it is offered to reproduce the ablation.

    Example:
        >>> hinge(torch.tensor([-0.5, 0.5]), slope=2.0, bias=0.0)
        tensor([0., 1.])
    """
    return (slope * (_float(margin) - bias)).clamp(min=0.0)


@torch.no_grad()
def step(margin: Tensor, *, alpha: float, bias: float) -> Tensor:
    r"""MAIL Table 6's step: :math:`\omega = \alpha` if PM > β else :math:`1 - \alpha`.

    Example:
        >>> step(torch.tensor([-0.1, 0.1]), alpha=0.2, bias=0.0)
        tensor([0.8000, 0.2000])
    """
    m = _float(margin)
    return torch.where(m > bias, torch.full_like(m, alpha), torch.full_like(m, 1.0 - alpha))


@torch.no_grad()
def _uniform(signal: Tensor) -> Tensor:
    return torch.ones(signal.shape, dtype=torch.float32, device=signal.device)


def _steps(value: Any) -> int:
    return check_int(value, "steps", 1, " (K, the attack's number of steps)")


def _real(
    name: str, *, allow_inf: bool = False, low: float = -math.inf, high: float = math.inf
) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"Expected `{name}` to be a number, got {type(value).__name__}.")
        value = float(value)
        if (
            math.isnan(value)
            or value == -math.inf
            or (value == math.inf and not allow_inf)
            or not low <= value <= high
        ):
            bound = (
                f"in [{low:g}, {high:g}]" if math.isfinite(low) or math.isfinite(high) else "finite"
            )
            extra = " (+inf allowed)" if allow_inf else ""
            raise ValueError(f"Expected `{name}` {bound}{extra}, got {value}.")
        return value

    return check


@dataclass(frozen=True)
class Scheme:
    """A weight assignment function with the signal it reads and its parameters' defaults."""

    name: str
    signal: Optional[str]
    """``"kappa"``, ``"margin"``, ``"any"`` (a callable: whichever is given) or ``None`` (reads none)."""
    fn: Callable[..., Tensor]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    checks: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)

    def params(self, overrides: Mapping[str, Any]) -> Dict[str, Any]:
        """The defaults with ``overrides`` applied, each checked; unknown names raise."""
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(
                f"Expected parameters of scheme {self.name!r} among ({valid}), got {', '.join(unknown)}."
            )
        merged = {**self.defaults, **overrides}
        return {k: self.checks[k](v) for k, v in merged.items()}

    def __call__(self, signal: Tensor, params: Mapping[str, Any]) -> Tensor:
        return self.fn(signal, **params)


_KAPPA_CHECKS = {"steps": _steps, "lam": _real("lam", allow_inf=True)}
_MARGIN_CHECKS = {"slope": _real("slope", low=0.0), "bias": _real("bias")}

# Defaults: GAIRAT's official code (K = 10, λ = −1); MAIL-AT for the sigmoid (γ = 10, β = −0.5);
# MAIL-TRADES, where Table 6 ran, for the hinge and step (γ = 2, β = 0, α = 0.2).
_GAIRAT = Scheme("gairat", "kappa", gairat_tanh, {"steps": 10, "lam": -1.0}, _KAPPA_CHECKS)
_MAIL = Scheme("mail", "margin", mail_sigmoid, {"slope": 10.0, "bias": -0.5}, _MARGIN_CHECKS)

SCHEMES: Mapping[str, Scheme] = {
    "gairat": _GAIRAT,
    "gairat-tanh": _GAIRAT,
    "gairat-sigmoid": Scheme(
        "gairat-sigmoid", "kappa", gairat_sigmoid, {"steps": 10, "lam": -1.0}, _KAPPA_CHECKS
    ),
    "gairat-linear": Scheme("gairat-linear", "kappa", gairat_linear, {"steps": 10}, _KAPPA_CHECKS),
    "mail": _MAIL,
    "mail-sigmoid": _MAIL,
    "hinge": Scheme("hinge", "margin", hinge, {"slope": 2.0, "bias": 0.0}, _MARGIN_CHECKS),
    "step": Scheme(
        "step",
        "margin",
        step,
        {"alpha": 0.2, "bias": 0.0},
        {"alpha": _real("alpha", low=0.0, high=1.0), "bias": _real("bias")},
    ),
    "uniform": Scheme("uniform", None, _uniform),
}
"""Every named scheme (aliases included), as used by ``InstanceReweightedLoss(scheme=...)``."""


def resolve_scheme(scheme: SchemeLike) -> Scheme:
    """A :class:`Scheme` from its name or from a callable ``signal -> raw weights``.

    Example:
        >>> resolve_scheme("gairat-tanh").signal
        'kappa'
    """
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ValueError(
                f"Expected `scheme` to be one of {', '.join(map(repr, SCHEMES))} or a callable, got {scheme!r}."
            )
        return SCHEMES[scheme]
    if callable(scheme):
        name = getattr(scheme, "__name__", type(scheme).__name__)
        return Scheme(name, "any", lambda signal: torch.as_tensor(scheme(signal)).detach().float())
    raise TypeError(
        f"Expected `scheme` to be a name or a callable signal -> weights, got {type(scheme).__name__}."
    )
