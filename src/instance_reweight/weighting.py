r"""The weighting on its own: from κ or PM to the instance weights, and the reduction they give.

As pytorch-metric-learning keeps a reducer apart from its per-item loss, :class:`InstanceWeighting`
turns a weighting signal into weights and reduces any per-example losses with them;
:class:`~instance_reweight.InstanceReweightedLoss` is a per-example loss followed by it, and
:mod:`instance_reweight.methods` uses it directly.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from ._checks import (
    DeferredChecks,
    check_bool,
    check_choice,
    check_losses,
    check_number,
    check_tensor,
    did_you_mean,
    fail,
    wrong_shape,
)
from .distributed import global_logsumexp, world_size
from .schemes import Scheme, SchemeLike, resolve_scheme

__all__ = ["InstanceWeighting", "instance_reweighted_loss", "instance_weights"]

_NORMALIZE = ("batch", "global", "none")
_SPACES = ("prob", "logit")


def _pick_signal(
    scheme: Scheme, kappa: Optional[Tensor], margin: Optional[Tensor]
) -> Tuple[str, Optional[Tensor]]:
    """The one signal given, as ``(name, tensor)``, after checking that the scheme reads it."""
    if kappa is not None and margin is not None:
        raise ValueError(
            f"Expected one weighting signal for scheme {scheme.name!r}, got both `kappa` and `margin`."
        )
    if scheme.signal == "kappa" and margin is not None:
        raise ValueError(
            f"Expected `kappa=` (the geometry value from GeometryAwareAttack) for scheme {scheme.name!r}, "
            "got `margin=`; use scheme='mail' to weight by the probabilistic margin."
        )
    if scheme.signal == "margin" and kappa is not None:
        raise ValueError(
            f"Expected `margin=` (e.g. ir.probabilistic_margin(logits_adv, y)) for scheme {scheme.name!r}, "
            "got `kappa=`; use scheme='gairat' to weight by the geometry value."
        )
    return ("kappa", kappa) if kappa is not None else ("margin", margin)


def _missing_signal(scheme: Scheme, sized: bool) -> str:
    """The message for no signal: needed to read (while reweighting) or, for a call, to size."""
    if scheme.signal is None:
        return (
            f"Expected `kappa=` or `margin=` when calling scheme {scheme.name!r}: it reads none of "
            "their values, but a call returns one weight per example and the signal gives their "
            "number; pass either, or reduce losses with `weighting.reduce(losses)`, which needs none."
        )
    size = "; it also gives the number of examples" if sized else ""
    return (
        f"Expected a weighting signal for scheme {scheme.name!r}: pass `kappa=` (GAIRAT schemes) "
        f"or `margin=` (MAIL schemes){size}."
    )


def _check_signal(
    name: str, signal: object, n: Optional[int], device: Optional[torch.device]
) -> Tensor:
    """Type, shape and device of a signal (no synchronisation); its values are checked apart."""
    signal = check_tensor(signal, name)
    expected = wrong_shape(signal, 1, n)
    if expected:
        raise ValueError(
            f"Expected `{name}` of shape {expected} (one value per example), got {tuple(signal.shape)}."
        )
    if device is not None and signal.device != device:
        raise ValueError(
            f"Expected `{name}` on {device} like the losses, got {signal.device}; "
            f"move it with `{name}.to({str(device)!r})`."
        )
    if name == "kappa" and (
        signal.is_floating_point() or signal.is_complex() or signal.dtype == torch.bool
    ):
        raise TypeError(
            "Expected `kappa` as integer step counts (torch.long, as GeometryAwareAttack returns), "
            f"got dtype {signal.dtype}; convert with `kappa.long()`."
        )
    if name == "margin" and not signal.is_floating_point():
        raise TypeError(
            f"Expected a floating-point `margin`, got dtype {signal.dtype}; pass the output of "
            "ir.probabilistic_margin (float32)."
        )
    return signal


def _queue_value_checks(
    checks: DeferredChecks,
    scheme: Scheme,
    params: Dict[str, Any],
    space: str,
    name: str,
    signal: Tensor,
) -> None:
    """κ within ``[0, steps]`` (the scheme and the attack share K); PM finite, and within
    ``[-1, 1]`` in probability space: one device flag each."""
    if name == "margin":
        checks.add(
            torch.isfinite(signal).all(),
            lambda: fail(
                "Expected finite `margin` values, got NaN or Inf; the logits they come from are not "
                "finite (a diverged model, or inputs on the wrong scale)."
            ),
        )
        if space == "prob":
            checks.add(
                ((signal >= -1) & (signal <= 1)).all(),
                lambda: fail(
                    "Expected `margin` in [-1, 1] (a probabilistic margin, space='prob'), got values "
                    f"in [{float(signal.min()):.4g}, {float(signal.max()):.4g}]; pass "
                    "ir.probabilistic_margin(logits, y), or space='logit' for a margin on raw logits."
                ),
            )
        return
    steps = params.get("steps")
    top = torch.iinfo(torch.int64).max if steps is None else steps
    what = "[0, ∞)" if steps is None else f"[0, {steps}] (steps={steps} of scheme {scheme.name!r})"
    fix = "" if steps is None else "; pass the attack's number of steps as `steps=`"
    checks.add(
        ((signal >= 0) & (signal <= top)).all(),
        lambda: fail(
            f"Expected `kappa` in {what}, got values in [{int(signal.min())}, {int(signal.max())}]{fix}."
        ),
    )


def _normalise(log_w: Tensor, normalize: str, scale: float) -> Tensor:
    r"""The weights ``w`` from log ω, without overflow: ``N·softmax(log ω)`` for ``"batch"``.

    Where Σω is 0, infinite or NaN the same formulas run with ω = 1 (uniform weights), never NaN.
    ``scale`` multiplies in the precision of the computation, before the float32 result: a scale
    beyond float32's range meets no weight that underflowed to 0 there (0·∞ = NaN).
    """
    n = factor = log_w.shape[0]
    lse = torch.logsumexp(log_w.double(), 0)
    # a fill kernel, not ``torch.tensor(n, device=...)``: no host-to-device copy on CUDA
    count = torch.full((), float(n), dtype=torch.float64, device=log_w.device)
    if normalize == "global":
        lse, count = global_logsumexp(lse, n)
        factor = world_size() * n  # DDP averages the W local losses: W·Σ_local ωℓ / Σ_global ω each
    fallback = ~torch.isfinite(lse)
    if normalize == "none":  # in the raw weights' precision, as the official MAIL code's 3·ω
        weights = torch.where(fallback, torch.ones_like(log_w), log_w.exp())
    else:
        shifted = (log_w.double() - torch.where(fallback, 0.0, lse)).exp()
        weights = torch.where(fallback, factor / count, factor * shifted)
    return (weights * scale if scale != 1.0 else weights).float()


class InstanceWeighting:
    r"""The instance weights of a scheme, normalised, and the reduction of per-example losses they give.

    .. math::
        \begin{aligned}
        w_i &= s\cdot N\,\frac{\omega_i}{\sum_j \omega_j} = s\cdot N\,\mathrm{softmax}(\log\omega)_i
            && (\texttt{batch}) \\
        w_i &= s\cdot\omega_i && (\texttt{none}) \\
        \mathrm{reduce}(\ell) &= \frac1N \sum_i w_i\,\ell_i
        \end{aligned}

    with :math:`\omega_i` the scheme's raw weight of example *i* (see
    :mod:`instance_reweight.schemes`) and :math:`s` = ``scale``. With ``"batch"`` the reduction is
    :math:`\sum_i \omega_i\ell_i / \sum_j \omega_j` (GAIRAT Algorithm 2, MAIL Eq. 3). ``"global"``
    normalises over the whole global batch under ``torch.distributed`` (one collective), so that the
    gradient DistributedDataParallel averages is exactly the single-process gradient on the
    concatenated batch; without a process group it equals ``"batch"``. The normalisation runs on
    log ω (a softmax), so raw weights that underflow still give finite weights in the right order;
    if Σω is 0 or not finite the weights are uniform. The weights are float32, carry no gradient and
    are never NaN.

    Args:
        scheme: a name of :data:`~instance_reweight.schemes.SCHEMES` (``"gairat"``, ``"mail"``, …)
            or a callable ``signal -> raw weights (N,)`` (non-negative; NaN or a negative weight
            raises).
        normalize: ``"batch"`` (both papers), ``"global"`` or ``"none"`` (with ``scale``; the
            official MAIL code uses ``scale=3``).
        scale: multiplies every weight (> 0).
        space: the space of ``margin``: ``"prob"`` (PM, checked to lie in [−1, 1]) or ``"logit"``
            (:func:`~instance_reweight.probabilistic_margin` with ``space="logit"``, MAIL Table 5's
            multi-class margin; any finite value). Only for schemes that read ``margin``.
        **scheme_params: the scheme's parameters, e.g. ``steps=10, lam=-1.0`` (GAIRAT) or
            ``slope=10.0, bias=-0.5`` (MAIL-AT); each is also an attribute (``weighting.lam = -2.0``),
            checked on assignment.

    Attributes:
        active: reweighting on (True) or uniform weights and the plain mean (False): burn-in, see
            :class:`~instance_reweight.BurnInScheduler`.
        last_weights: the ``(N,)`` float32 weights of the last call (ones while inactive).

    Shape:
        - ``kappa`` (integer) or ``margin`` (float): ``(N,)``; ``losses``: ``(N,)``.
        - Output: ``(N,)`` weights from a call, a scalar from :meth:`reduce`.

    Raises:
        ValueError: on an unknown scheme, parameter or normalisation, a signal the scheme does not
            read, a signal of the wrong shape or device, κ outside ``[0, steps]``, a NaN margin, a
            margin outside [−1, 1] with ``space="prob"``, or a callable scheme that returns NaN or
            negative weights.
        TypeError: on a float ``kappa``, an integer ``margin``, a callable scheme that does not return
            numbers, or a parameter of the wrong type.

    Example:
        >>> weighting = InstanceWeighting("gairat", steps=10, lam=0.0)
        >>> weighting(kappa=torch.tensor([0, 5, 10]))
        tensor([1.9999e+00, 1.0000e+00, 9.0796e-05])
        >>> weighting.reduce(torch.tensor([1.0, 2.0, 3.0]), kappa=torch.tensor([0, 5, 10]))
        tensor(1.3334)
        >>> weighting.lam = float("inf")  # λ = +∞: uniform weights, standard AT
        >>> weighting
        InstanceWeighting(scheme='gairat', normalize='batch', steps=10, lam=inf, active=True)
    """

    __slots__ = ("_scheme", "_normalize", "_scale", "_space", "_params", "_active", "last_weights")

    def __init__(
        self,
        scheme: SchemeLike,
        *,
        normalize: str = "batch",
        scale: float = 1.0,
        space: str = "prob",
        **scheme_params: Any,
    ) -> None:
        self._scheme = resolve_scheme(scheme)
        self._normalize = check_choice(normalize, "normalize", _NORMALIZE)
        self._scale = check_number(scale, "scale", minimum=0.0, strict=True)
        self._space = check_choice(space, "space", _SPACES)
        if self._space != "prob" and self._scheme.signal == "kappa":
            raise ValueError(
                f"Expected space='prob' (the default) for scheme {self._scheme.name!r}, which reads "
                f"`kappa`, got {space!r}; `space` is the space of a `margin` signal."
            )
        self._params = self._scheme.params(scheme_params)
        self._active = True
        self.last_weights: Optional[Tensor] = None

    @property
    def scheme(self) -> Scheme:
        """The resolved weight assignment function."""
        return self._scheme

    @property
    def normalize(self) -> str:
        """``"batch"``, ``"global"`` or ``"none"``."""
        return self._normalize

    @property
    def scale(self) -> float:
        """The factor on every weight."""
        return self._scale

    @property
    def space(self) -> str:
        """The space of ``margin``: ``"prob"`` (checked to lie in [−1, 1]) or ``"logit"``."""
        return self._space

    @property
    def active(self) -> bool:
        """Reweighting on (True) or uniform weights (False, burn-in)."""
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        self._active = check_bool(value, "active")

    @property
    def scheme_params(self) -> Dict[str, Any]:
        """A copy of the scheme's current parameters; change them by attribute or :meth:`set_scheme_params`."""
        return dict(self._params)

    def set_scheme_params(self, **params: Any) -> None:
        """Change scheme parameters (e.g. ``lam`` by :class:`~instance_reweight.BurnInScheduler`), checked."""
        self._params = self._scheme.params({**self._params, **params})

    def __getattr__(self, name: str) -> Any:
        params = self._params if name != "_params" else {}
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in InstanceWeighting.__slots__ or isinstance(
            getattr(type(self), name, None), property
        ):
            object.__setattr__(self, name, value)
        elif name in self._params:
            self.set_scheme_params(**{name: value})
        else:
            valid = ", ".join(sorted(self._params)) or "none"
            raise AttributeError(
                f"Expected a parameter of scheme {self._scheme.name!r} among ({valid}) or `active`, "
                f"got {name!r}." + did_you_mean([name], [*self._params, "active"])
            )

    def __call__(self, kappa: Optional[Tensor] = None, margin: Optional[Tensor] = None) -> Tensor:
        """The ``(N,)`` float32 weights of this batch's κ or PM (ones while inactive).

        A signal is needed even where its values are not read (the ``"uniform"`` scheme, or while
        inactive): it gives N and the device. :meth:`reduce` takes both from the losses instead.
        """
        checks = DeferredChecks()
        weights = self._weights(kappa, margin, n=None, device=None, checks=checks)
        checks.verify()
        return weights

    def reduce(
        self, losses: Tensor, kappa: Optional[Tensor] = None, margin: Optional[Tensor] = None
    ) -> Tensor:
        r""":math:`\frac1N\sum_i w_i\,\ell_i` of per-example ``losses`` (the plain mean while inactive).

        Returns a scalar in the dtype of ``losses`` (at least float32), 0 for an empty batch; the
        weights are constants (no gradient flows into them).
        """
        return self._reduce(check_losses(losses, None, "`losses`"), kappa, margin)

    def _reduce(self, losses: Tensor, kappa: Optional[Tensor], margin: Optional[Tensor]) -> Tensor:
        """:meth:`reduce` of losses the caller has checked (``InstanceReweightedLoss``)."""
        checks = DeferredChecks()
        weights = self._weights(
            kappa, margin, n=losses.shape[0], device=losses.device, checks=checks
        )
        checks.verify()
        return weighted_mean(losses, weights)

    def _weights(
        self,
        kappa: Optional[Tensor] = None,
        margin: Optional[Tensor] = None,
        *,
        n: Optional[int],
        device: Optional[torch.device],
        checks: DeferredChecks,
        trusted: bool = False,
    ) -> Tensor:
        """The weights, with their value checks queued on ``checks`` rather than read.

        For :mod:`instance_reweight.methods`, which reads every check of a training step at once;
        ``trusted`` skips the checks of a signal the library computed and checked itself. ``n`` and
        ``device`` ``None``: taken from the signal, which is then required.
        """
        name, signal = _pick_signal(self._scheme, kappa, margin)
        if signal is not None:
            signal = _check_signal(name, signal, n, device)
            n, device = signal.shape[0], signal.device
            if not trusted:
                _queue_value_checks(checks, self._scheme, self._params, self._space, name, signal)
        if n is None or (signal is None and self._scheme.signal is not None and self._active):
            raise ValueError(_missing_signal(self._scheme, sized=n is None))
        if not self._active:
            weights = torch.ones(n, dtype=torch.float32, device=device)
        else:
            base = signal if signal is not None else torch.zeros(n, device=device)
            weights = _normalise(self._log_weights(base, checks), self._normalize, self._scale)
        self.last_weights = weights
        return weights

    def _log_weights(self, signal: Tensor, checks: DeferredChecks) -> Tensor:
        log_w = self._scheme.log_weights(signal, self._params)
        if log_w.shape != signal.shape:
            raise ValueError(
                f"Expected scheme {self._scheme.name!r} to return one weight per example, shape "
                f"{tuple(signal.shape)}, got {tuple(log_w.shape)}."
            )
        if self._scheme.signal == "any":  # a user's callable: log ω is NaN for NaN or negative ω
            checks.add(
                ~torch.isnan(log_w).any(),
                lambda: fail(
                    f"Expected the callable scheme {self._scheme.name!r} to return non-negative raw "
                    "weights, got NaN or a negative value (a negative weight would maximise that "
                    "example's loss); clamp them with `.clamp(min=0)` and check for NaN."
                ),
            )
        return log_w

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self._params.items())
        scale = f", scale={self._scale:g}" if self._scale != 1.0 else ""
        space = f", space={self._space!r}" if self._space != "prob" else ""
        return (
            f"{type(self).__name__}(scheme={self._scheme.name!r}, normalize={self._normalize!r}{scale}"
            f"{space}{params}, active={self._active})"
        )


def weighted_mean(losses: Tensor, weights: Tensor) -> Tensor:
    """Σ w·ℓ / N, written so that an empty batch gives 0 rather than NaN."""
    return (weights * losses).sum() / max(losses.shape[0], 1)


def instance_weights(
    scheme: SchemeLike,
    *,
    kappa: Optional[Tensor] = None,
    margin: Optional[Tensor] = None,
    normalize: str = "batch",
    scale: float = 1.0,
    **scheme_params: Any,
) -> Tensor:
    r"""Instance weights of a batch from its geometry values κ or probabilistic margins.

    The function form of :class:`InstanceWeighting`: ``InstanceWeighting(scheme, normalize=...,
    scale=..., **scheme_params)(kappa=..., margin=...)``.

    Args:
        scheme: the weight assignment function: a name of
            :data:`~instance_reweight.schemes.SCHEMES` or a callable, as in :class:`InstanceWeighting`.
        kappa: geometry values κ ``(N,)``, for the GAIRAT schemes.
        margin: probabilistic margins PM ``(N,)``, for the MAIL schemes.
        normalize: ``"batch"``, ``"global"`` or ``"none"``, as in :class:`InstanceWeighting`.
        scale: the factor on every weight.
        **scheme_params: the scheme's parameters (``steps``, ``lam``, ``slope``, ``bias``, ``alpha``)
            and ``space``, as in :class:`InstanceWeighting`.

    Returns:
        ``(N,)`` float32 weights without gradient, on the signal's device, never NaN.

    Example:
        >>> instance_weights("gairat", kappa=torch.tensor([0, 10]), steps=10, lam=0.0)
        tensor([1.9999e+00, 9.0796e-05])
        >>> # ω ≈ e^-90 or e^-88 underflows float32; the weights keep the ratio e² (no NaN)
        >>> instance_weights("gairat", kappa=torch.tensor([10, 10, 9, 10]), steps=10, lam=-40.0)
        tensor([0.3850, 0.3850, 2.8449, 0.3850])
    """
    weighting = InstanceWeighting(scheme, normalize=normalize, scale=scale, **scheme_params)
    return weighting(kappa=kappa, margin=margin)


def instance_reweighted_loss(
    losses: Tensor,
    scheme: SchemeLike,
    *,
    kappa: Optional[Tensor] = None,
    margin: Optional[Tensor] = None,
    normalize: str = "batch",
    scale: float = 1.0,
    **scheme_params: Any,
) -> Tensor:
    r"""Reduce per-example losses with instance weights: :math:`\frac1N\sum_i w_i\,\ell_i`.

    The function form of :meth:`InstanceWeighting.reduce`. With ``normalize="batch"`` this is
    :math:`\sum_i \omega_i \ell_i / \sum_j \omega_j`, GAIRAT's Algorithm 2 and MAIL's Eq. 3.

    Args:
        losses: per-example losses ``(N,)``, e.g. ``F.cross_entropy(logits, y, reduction="none")``.
        scheme: the weight assignment function: a name of
            :data:`~instance_reweight.schemes.SCHEMES` or a callable, as in :class:`InstanceWeighting`.
        kappa: geometry values κ ``(N,)``, for the GAIRAT schemes.
        margin: probabilistic margins PM ``(N,)``, for the MAIL schemes.
        normalize: ``"batch"``, ``"global"`` or ``"none"``, as in :class:`InstanceWeighting`.
        scale: the factor on every weight.
        **scheme_params: the scheme's parameters (``steps``, ``lam``, ``slope``, ``bias``, ``alpha``)
            and ``space``, as in :class:`InstanceWeighting`.

    Returns:
        A scalar in the dtype of ``losses`` (at least float32); ``0`` for an empty batch.

    Example:
        >>> losses = torch.tensor([1.0, 3.0])
        >>> instance_reweighted_loss(losses, "mail", margin=torch.tensor([0.5, -0.5]), slope=10.0, bias=-0.5)
        tensor(2.9998)
    """
    weighting = InstanceWeighting(scheme, normalize=normalize, scale=scale, **scheme_params)
    return weighting.reduce(losses, kappa=kappa, margin=margin)
