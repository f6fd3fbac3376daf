"""Weight assignment functions ω: from a signal (κ or PM) to raw, unnormalised instance weights.

Each function takes the signal and the scheme's parameters and returns float32 weights without
gradient. :data:`SCHEMES` names them for :class:`~instance_reweight.InstanceWeighting`, which
normalises their logarithms (they never underflow there).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import at_least_float32, check_int, check_name, check_number, did_you_mean

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


def _log_gairat_tanh(kappa: Tensor, *, steps: int, lam: float) -> Tensor:
    return F.logsigmoid(2.0 * (lam + 5.0 * (1.0 - 2.0 * _float(kappa) / steps)))


def _log_gairat_sigmoid(kappa: Tensor, *, steps: int, lam: float) -> Tensor:
    return F.logsigmoid(lam + 5.0 * (1.0 - 2.0 * _float(kappa) / steps))


def _log_gairat_linear(kappa: Tensor, *, steps: int) -> Tensor:
    return torch.log1p(-_float(kappa) / (steps + 1))


def _log_mail_sigmoid(margin: Tensor, *, slope: float, bias: float) -> Tensor:
    return F.logsigmoid(-slope * (_float(margin) - bias))


def _log_hinge(margin: Tensor, *, slope: float, bias: float) -> Tensor:
    return (slope * (_float(margin) - bias)).clamp(min=0.0).log()


def _log_step(margin: Tensor, *, alpha: float, bias: float) -> Tensor:
    m = _float(margin)
    return torch.where(m > bias, torch.full_like(m, alpha), torch.full_like(m, 1.0 - alpha)).log()


def _log_uniform(signal: Tensor) -> Tensor:
    return torch.zeros(signal.shape, dtype=torch.float32, device=signal.device)


@torch.no_grad()
def gairat_tanh(kappa: Tensor, *, steps: int, lam: float) -> Tensor:
    r"""GAIRAT Eq. 6: :math:`\omega = \tfrac12\bigl(1 + \tanh(\lambda + 5(1 - 2\kappa/K))\bigr)`.

    Computed as the identical :math:`\mathrm{sigmoid}(2(\lambda + 5(1 - 2\kappa/K)))` (through its
    logarithm, which the normalisation uses and which never underflows); ``lam=float("inf")`` gives
    uniform weights (standard AT).

    Example:
        >>> gairat_tanh(torch.tensor([0, 5, 10]), steps=10, lam=0.0)
        tensor([9.9995e-01, 5.0000e-01, 4.5398e-05])
    """
    return _log_gairat_tanh(kappa, steps=steps, lam=lam).exp()


@torch.no_grad()
def gairat_sigmoid(kappa: Tensor, *, steps: int, lam: float) -> Tensor:
    r"""GAIRAT's sigmoid variant (Appendix C.3): :math:`\mathrm{sigmoid}(\lambda + 5(1 - 2\kappa/K))`.

    Example:
        >>> gairat_sigmoid(torch.tensor([5]), steps=10, lam=0.0)
        tensor([0.5000])
    """
    return _log_gairat_sigmoid(kappa, steps=steps, lam=lam).exp()


@torch.no_grad()
def gairat_linear(kappa: Tensor, *, steps: int) -> Tensor:
    r"""GAIRAT Eq. 7: :math:`\omega = 1 - \kappa/(K + 1)`.

    Example:
        >>> gairat_linear(torch.tensor([0, 9]), steps=9)
        tensor([1.0000, 0.1000])
    """
    return _log_gairat_linear(kappa, steps=steps).exp()


@torch.no_grad()
def mail_sigmoid(margin: Tensor, *, slope: float, bias: float) -> Tensor:
    r"""MAIL Eq. 8: :math:`\omega = \mathrm{sigmoid}(-\gamma(\mathrm{PM} - \beta))`.

    Example:
        >>> mail_sigmoid(torch.tensor([-0.5]), slope=10.0, bias=-0.5)
        tensor([0.5000])
    """
    return _log_mail_sigmoid(margin, slope=slope, bias=bias).exp()


@torch.no_grad()
def hinge(margin: Tensor, *, slope: float, bias: float) -> Tensor:
    r"""MAIL Table 6's hinge, as printed: :math:`\omega = \max(0, \gamma(\mathrm{PM} - \beta))`.

    Note that, as printed, it grows with PM (the opposite of the sigmoid's direction) and gives
    weight 0 to every example with PM ≤ β; it is offered to reproduce the ablation.

    Example:
        >>> hinge(torch.tensor([-0.5, 0.5]), slope=2.0, bias=0.0)
        tensor([0., 1.])
    """
    return _log_hinge(margin, slope=slope, bias=bias).exp()


@torch.no_grad()
def step(margin: Tensor, *, alpha: float, bias: float) -> Tensor:
    r"""MAIL Table 6's step: :math:`\omega = \alpha` if PM > β else :math:`1 - \alpha`.

    Example:
        >>> step(torch.tensor([-0.1, 0.1]), alpha=0.2, bias=0.0)
        tensor([0.8000, 0.2000])
    """
    return _log_step(margin, alpha=alpha, bias=bias).exp()


def _steps(value: Any) -> int:
    return check_int(value, "steps", 1, " (K, the attack's number of steps)")


def _real(name: str, **bounds: Any) -> Callable[[Any], float]:
    # A partial, not a lambda: a weighting that holds it pickles (multiprocessing, DDP spawn).
    return functools.partial(check_number, name=name, **bounds)


@dataclass(frozen=True)
class Scheme:
    """A weight assignment function with the signal it reads and its parameters' defaults."""

    name: str
    signal: Optional[str]
    """``"kappa"``, ``"margin"``, ``"any"`` (a callable: whichever is given) or ``None`` (reads none)."""
    log_fn: Callable[..., Tensor]
    """``(signal, **params) -> log ω``: the logarithm of the raw weights, which cannot underflow."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    checks: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)

    def params(self, overrides: Mapping[str, Any]) -> Dict[str, Any]:
        """The defaults with ``overrides`` applied, each checked; unknown names raise."""
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(
                f"Expected parameters of scheme {self.name!r} among ({valid}), got {', '.join(unknown)}."
                + did_you_mean(unknown, self.defaults)
            )
        merged = {**self.defaults, **overrides}
        return {k: self.checks[k](v) for k, v in merged.items()}

    def log_weights(self, signal: Tensor, params: Mapping[str, Any]) -> Tensor:
        """log ω of ``signal`` under ``params``, without gradient: float32 (float64 where a callable
        scheme returns float64)."""
        with torch.no_grad():
            return self.log_fn(signal, **params)

    def __call__(self, signal: Tensor, params: Mapping[str, Any]) -> Tensor:
        """The raw weights ω (which may underflow to 0; the normalisation reads log ω)."""
        return self.log_weights(signal, params).exp()


_KAPPA_CHECKS = {"steps": _steps, "lam": _real("lam", allow_inf=True)}
_MARGIN_CHECKS = {"slope": _real("slope", minimum=0.0), "bias": _real("bias")}

# One rule for every default: a scheme's defaults are those of the method of :mod:`.methods` that
# introduced it, as its paper states them, so that a scheme and that method agree. GAIRAT Table 1 for
# the GAIRAT schemes (K = 10, λ = 0; ``gair-trades`` and ``gair-mart`` take λ = −1, the official
# code's default, as their recipes); MAIL-AT for the sigmoid (γ = 10, β = −0.5); MAIL-TRADES, where
# Table 6 ran, for the hinge and step (γ = 2, β = 0, α = 0.2).
_GAIRAT = Scheme("gairat", "kappa", _log_gairat_tanh, {"steps": 10, "lam": 0.0}, _KAPPA_CHECKS)
_MAIL = Scheme("mail", "margin", _log_mail_sigmoid, {"slope": 10.0, "bias": -0.5}, _MARGIN_CHECKS)

SCHEMES: Mapping[str, Scheme] = {
    "gairat": _GAIRAT,
    "gairat-tanh": _GAIRAT,
    "gairat-sigmoid": Scheme(
        "gairat-sigmoid", "kappa", _log_gairat_sigmoid, {"steps": 10, "lam": 0.0}, _KAPPA_CHECKS
    ),
    "gairat-linear": Scheme(
        "gairat-linear", "kappa", _log_gairat_linear, {"steps": 10}, _KAPPA_CHECKS
    ),
    "mail": _MAIL,
    "mail-sigmoid": _MAIL,
    "hinge": Scheme("hinge", "margin", _log_hinge, {"slope": 2.0, "bias": 0.0}, _MARGIN_CHECKS),
    "step": Scheme(
        "step",
        "margin",
        _log_step,
        {"alpha": 0.2, "bias": 0.0},
        {"alpha": _real("alpha", minimum=0.0, maximum=1.0), "bias": _real("bias")},
    ),
    "uniform": Scheme("uniform", None, _log_uniform),
}
"""Every named scheme (aliases included), as used by ``InstanceWeighting(scheme=...)``."""


@dataclass(frozen=True)
class _LogOfCallable:
    """log ω of a user's ``signal -> raw weights``: its output must be a real tensor (or sequence).

    The logarithm is taken in the raw weights' own precision (at least float32): float64 weights
    spanning more than float32's range keep their order rather than collapsing to uniform. A class,
    not a closure, so that a weighting holding it pickles.
    """

    scheme: Callable[[Tensor], Any]
    name: str

    def __call__(self, signal: Tensor) -> Tensor:
        out = self.scheme(signal)
        raw = out if isinstance(out, Tensor) else _as_tensor(out, signal.device)
        if raw is None or raw.dtype == torch.bool or raw.is_complex():
            raise TypeError(
                f"Expected the callable scheme {self.name!r} to return raw weights as a real tensor of "
                f"shape ({signal.shape[0]},), got {_describe(out)}; return e.g. "
                "`torch.ones(signal.shape[0])`."
            )
        return at_least_float32(raw.detach().to(signal.device)).log()


def _as_tensor(value: object, device: torch.device) -> Optional[Tensor]:
    """``value`` as a tensor if it is a number or a sequence of numbers, else ``None``."""
    try:
        return torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError):
        return None


def _describe(value: object) -> str:
    return f"a tensor of dtype {value.dtype}" if isinstance(value, Tensor) else repr(value)[:40]


def resolve_scheme(scheme: SchemeLike) -> Scheme:
    """A :class:`Scheme` from its name (any case; a near miss is answered with "did you mean …?")
    or from a callable ``signal -> raw weights``.

    Example:
        >>> resolve_scheme("gairat-tanh").signal
        'kappa'
    """
    if isinstance(scheme, str):
        return SCHEMES[check_name(scheme, "scheme", SCHEMES, alternative="a callable")]
    if callable(scheme):
        name = getattr(scheme, "__name__", type(scheme).__name__)
        return Scheme(name, "any", _LogOfCallable(scheme, name))
    raise TypeError(
        f"Expected `scheme` to be a name or a callable signal -> weights, got {type(scheme).__name__}."
    )
