"""Instance-reweighted loss: any per-example loss, weighted by a scheme of κ (GAIRAT) or PM (MAIL)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_number, check_tensor
from .distributed import all_reduce_sum, world_size
from .schemes import Scheme, SchemeLike, resolve_scheme

__all__ = ["InstanceReweightedLoss", "instance_reweighted_loss", "instance_weights"]

_NORMALIZE = ("batch", "global", "none")


def _check_signal(
    scheme: Scheme,
    params: Mapping[str, Any],
    kappa: Optional[Tensor],
    margin: Optional[Tensor],
    n: Optional[int],
    device: Optional[torch.device] = None,
) -> Optional[Tensor]:
    """The signal the scheme reads, checked against it; ``n`` and ``device`` are the losses' when known."""
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
    signal = kappa if kappa is not None else margin
    if signal is None:
        return None
    name = "kappa" if kappa is not None else "margin"
    signal = check_tensor(signal, name)
    if signal.dim() != 1 or (n is not None and signal.shape[0] != n):
        expected = f"({n},)" if n is not None else "(N,)"
        raise ValueError(
            f"Expected `{name}` of shape {expected} (one value per example), got {tuple(signal.shape)}."
        )
    if device is not None and signal.device != device:
        raise ValueError(
            f"Expected `{name}` on {device} like the losses, got {signal.device}; "
            f"move it with `{name}.to({str(device)!r})`."
        )
    if kappa is not None:
        if kappa.is_floating_point() or kappa.is_complex() or kappa.dtype == torch.bool:
            raise TypeError(
                f"Expected `kappa` as integer step counts (torch.long, as GeometryAwareAttack returns), "
                f"got dtype {kappa.dtype}; convert with `kappa.long()`."
            )
        steps = params.get("steps")
        # One host synchronisation per call: κ outside 0..K means the scheme and the attack disagree on K.
        if steps is not None and kappa.numel() and bool(((kappa < 0) | (kappa > steps)).any()):
            raise ValueError(
                f"Expected `kappa` in [0, {steps}] (steps={steps} of scheme {scheme.name!r}), got values in "
                f"[{int(kappa.min())}, {int(kappa.max())}]; pass the attack's number of steps as `steps=`."
            )
    else:
        if not signal.is_floating_point():
            raise TypeError(f"Expected a floating-point `margin`, got dtype {signal.dtype}.")
        if not bool(torch.isfinite(signal).all()):  # one host synchronisation per call
            raise ValueError(
                "Expected finite `margin` values, got NaN or Inf; the logits they come from are not "
                "finite (a diverged model, or inputs on the wrong scale)."
            )
    return signal


def _normalise(raw: Tensor, normalize: str, scale: float) -> Tensor:
    """Raw weights ω to the weights w the loss averages (see :func:`instance_weights`).

    Where Σω is 0 or not finite the same formulas run with ω = 1 (uniform weights), never NaN.
    """
    n = factor = raw.shape[0]
    total = raw.sum(dtype=torch.float64)
    count = torch.full_like(total, n)
    if normalize == "global":
        total, count = all_reduce_sum(total, count)
        factor = world_size() * n  # DDP averages the W local losses: W·Σ_local ωℓ / Σ_global ω each
    fallback = ~torch.isfinite(total) | (total == 0)
    raw = torch.where(fallback, torch.ones_like(raw), raw)
    if normalize != "none":
        raw = (raw * (factor / torch.where(fallback, count, total))).float()
    return raw * scale if scale != 1.0 else raw


class _Weighting:
    """The options of a weighting (scheme, its parameters, normalisation) and the weights they give."""

    def __init__(
        self, scheme: SchemeLike, normalize: str, scale: float, params: Mapping[str, Any]
    ) -> None:
        self.scheme = resolve_scheme(scheme)
        self.normalize = check_choice(normalize, "normalize", _NORMALIZE)
        self.scale = check_number(scale, "scale", minimum=0.0, strict=True)
        self.params = self.scheme.params(params)

    def weights(
        self,
        kappa: Optional[Tensor],
        margin: Optional[Tensor],
        n: Optional[int],
        device: Optional[torch.device] = None,
    ) -> Tensor:
        signal = _check_signal(self.scheme, self.params, kappa, margin, n, device)
        if signal is None:
            if self.scheme.signal is not None or n is None:
                raise ValueError(
                    f"Expected a weighting signal for scheme {self.scheme.name!r}: pass `kappa=` "
                    "(GAIRAT schemes) or `margin=` (MAIL schemes)."
                )
            signal = torch.zeros(n, device=device)
        with torch.no_grad():
            raw = self.scheme(signal, self.params).float()
            if raw.shape != signal.shape:
                raise ValueError(
                    f"Expected scheme {self.scheme.name!r} to return one weight per example, shape "
                    f"{tuple(signal.shape)}, got {tuple(raw.shape)}."
                )
            return _normalise(raw.to(signal.device), self.normalize, self.scale)

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.params.items())
        scale = f", scale={self.scale:g}" if self.scale != 1.0 else ""
        return f"scheme={self.scheme.name!r}, normalize={self.normalize!r}{scale}{params}"


def _weighted_mean(losses: Tensor, weights: Tensor) -> Tensor:
    # Σ w·ℓ / N, written so that an empty batch gives 0 rather than NaN.
    return (weights * losses).sum() / max(losses.shape[0], 1)


def _check_losses(losses: object, n: Optional[int], source: str) -> Tensor:
    if not isinstance(losses, Tensor):
        raise TypeError(
            f"Expected {source} to return a tensor of per-example losses, got {type(losses).__name__}."
        )
    if losses.dim() == 0:
        raise ValueError(
            f"Expected {source} to return one loss per example, shape (N,), got a scalar: it reduces over "
            "the batch. Build it with reduction='none' (e.g. nn.CrossEntropyLoss(reduction='none'))."
        )
    if losses.dim() != 1 or (n is not None and losses.shape[0] != n):
        expected = f"({n},)" if n is not None else "(N,)"
        raise ValueError(
            f"Expected {source} to return one loss per example, shape {expected}, got {tuple(losses.shape)}; "
            "sum the per-class terms (e.g. `.sum(dim=1)`) so that each example has one loss."
        )
    return losses


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

    .. math::
        w_i = s\cdot\frac{N\,\omega_i}{\sum_j \omega_j} \ (\text{"batch"}), \quad
        w_i = s\cdot\frac{W N\,\omega_i}{\sum_{j \in \mathrm{global}} \omega_j} \ (\text{"global"}), \quad
        w_i = s\cdot\omega_i \ (\text{"none"})

    with :math:`\omega_i` the scheme's raw weight (see :mod:`instance_reweight.schemes`),
    :math:`s` = ``scale``, :math:`N` the local batch size and :math:`W` the number of processes.
    ``"global"`` sums ω over the whole global batch with one all-reduce, so that the gradient
    DistributedDataParallel averages over the W processes is exactly the single-process gradient of
    :math:`\sum \omega_i \ell_i / \sum \omega_j` on the concatenated batch (unequal local batch sizes
    too); without an initialised process group it equals ``"batch"``. If the sum of ω is 0 or not
    finite the weights fall back to uniform (the same formulas with ω = 1), so they are never NaN.

    Args:
        scheme: a name of :data:`~instance_reweight.schemes.SCHEMES` or a callable
            ``signal -> raw weights (N,)``.
        kappa: geometry values ``(N,)`` (integer) for the GAIRAT schemes.
        margin: probabilistic margins ``(N,)`` (float) for the MAIL schemes.
        normalize: ``"batch"`` (mean weight 1, both papers' equations), ``"global"`` (the same over
            the global batch under ``torch.distributed``) or ``"none"``.
        scale: multiplies every weight (the official MAIL code uses 3 with ``normalize="none"``).
        **scheme_params: the scheme's parameters (``steps``, ``lam``, ``slope``, ``bias``, ``alpha``).

    Returns:
        ``(N,)`` float32 weights without gradient, on the signal's device.

    Raises:
        ValueError: on an unknown scheme or parameter, a signal the scheme does not read, a signal of
            the wrong shape, or ``kappa`` outside ``[0, steps]``.
        TypeError: on a float ``kappa`` or an integer ``margin``.

    Example:
        >>> instance_weights("gairat", kappa=torch.tensor([0, 10]), steps=10, lam=0.0)
        tensor([1.9999e+00, 9.0796e-05])
    """
    signal = kappa if kappa is not None else margin
    n = signal.shape[0] if isinstance(signal, Tensor) else None
    return _Weighting(scheme, normalize, scale, scheme_params).weights(kappa, margin, n)


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

    With ``normalize="batch"`` this is :math:`\sum_i \omega_i \ell_i / \sum_j \omega_j`, GAIRAT's
    Algorithm 2 and MAIL's Eq. 3. The weights are constants (no gradient flows into them).

    Args:
        losses: per-example losses ``(N,)``, e.g. ``F.cross_entropy(logits, y, reduction="none")``.
        scheme, kappa, margin, normalize, scale, scheme_params: as in :func:`instance_weights`.

    Returns:
        A scalar in the dtype of ``losses`` (at least float32); ``0`` for an empty batch.

    Example:
        >>> losses = torch.tensor([1.0, 3.0])
        >>> instance_reweighted_loss(losses, "mail", margin=torch.tensor([0.5, -0.5]), slope=10.0, bias=-0.5)
        tensor(2.9998)
    """
    losses = _check_losses(losses, None, "`losses`")
    weights = _Weighting(scheme, normalize, scale, scheme_params).weights(
        kappa, margin, losses.shape[0], losses.device
    )
    return _weighted_mean(losses, weights)


class InstanceReweightedLoss(nn.Module):
    r"""Wraps a per-example loss and weights each example by a scheme of κ or PM.

    .. math::
        \mathcal L = \frac1N \sum_i w_i\,\ell_i, \qquad \ell = \texttt{base\_loss}(\ldots) \in \mathbb R^N

    with the weights of :func:`instance_weights`. While :attr:`active` is False (burn-in, see
    :class:`~instance_reweight.BurnInScheduler`) the loss is the plain mean of ``base_loss``.

    Args:
        base_loss: any callable returning one loss per example, shape ``(N,)``: a torch loss built
            with ``reduction="none"``, a function, a lambda, :func:`instance_reweight.losses.trades_kl`.
        scheme: a name of :data:`~instance_reweight.schemes.SCHEMES` (``"gairat"``, ``"mail"``, …)
            or a callable ``signal -> raw weights (N,)``.
        normalize: ``"batch"`` (both papers), ``"global"`` (over the global batch under
            DistributedDataParallel) or ``"none"`` (with ``scale``; official MAIL code).
        scale: multiplies every weight.
        **scheme_params: the scheme's parameters, e.g. ``steps=10, lam=-1.0`` for GAIRAT or
            ``slope=10.0, bias=-0.5`` for MAIL-AT.

    Attributes:
        active: reweighting on (True) or plain mean (False).
        last_weights: the ``(N,)`` float32 weights of the last call (ones while inactive).

    Shape:
        - inputs: whatever ``base_loss`` takes; ``kappa``/``margin``: ``(N,)``.
        - Output: scalar.

    Raises:
        ValueError: at construction, for a torch loss whose ``reduction`` is not ``"none"``; at call,
            if ``base_loss`` does not return ``(N,)`` or for a bad signal (see :func:`instance_weights`).

    Example:
        >>> criterion = InstanceReweightedLoss(
        ...     nn.CrossEntropyLoss(reduction="none"), "gairat", steps=10, lam=0.0)
        >>> logits, y = torch.zeros(3, 4, requires_grad=True), torch.tensor([0, 1, 2])
        >>> loss = criterion(logits, y, kappa=torch.tensor([0, 5, 10]))
        >>> loss.backward()
        >>> criterion.last_weights  # ω = 1, 1/2, ~0, normalised to mean 1
        tensor([1.9999e+00, 1.0000e+00, 9.0796e-05])
    """

    def __init__(
        self,
        base_loss: Callable[..., Tensor],
        scheme: SchemeLike,
        *,
        normalize: str = "batch",
        scale: float = 1.0,
        **scheme_params: Any,
    ) -> None:
        super().__init__()
        if not callable(base_loss):
            raise TypeError(f"Expected `base_loss` to be callable, got {type(base_loss).__name__}.")
        reduction = getattr(base_loss, "reduction", "none")
        if reduction != "none":
            raise ValueError(
                f"Expected `base_loss` to return one loss per example, got a loss with reduction={reduction!r}; "
                f"build it with reduction='none', e.g. {type(base_loss).__name__}(reduction='none')."
            )
        self.base_loss = base_loss
        self._weighting = _Weighting(scheme, normalize, scale, scheme_params)
        self.active = True
        self.last_weights: Optional[Tensor] = None

    @property
    def scheme(self) -> Scheme:
        """The resolved weight assignment function."""
        return self._weighting.scheme

    @property
    def scheme_params(self) -> Mapping[str, Any]:
        """The scheme's current parameters (read-only view; change them with :meth:`set_scheme_params`)."""
        return dict(self._weighting.params)

    def set_scheme_params(self, **params: Any) -> None:
        """Change scheme parameters (e.g. ``lam`` by :class:`~instance_reweight.BurnInScheduler`), checked."""
        self._weighting.params = self._weighting.scheme.params({**self._weighting.params, **params})

    def forward(
        self, *inputs: Any, kappa: Optional[Tensor] = None, margin: Optional[Tensor] = None
    ) -> Tensor:
        first = next((t for t in inputs if isinstance(t, Tensor) and t.dim() > 0), None)
        losses = _check_losses(
            self.base_loss(*inputs), None if first is None else first.shape[0], "`base_loss`"
        )
        n = losses.shape[0]
        if self.active:
            weights = self._weighting.weights(kappa, margin, n, losses.device)
        else:
            _check_signal(self.scheme, self._weighting.params, kappa, margin, n, losses.device)
            weights = torch.ones(n, dtype=torch.float32, device=losses.device)
        self.last_weights = weights
        return _weighted_mean(losses, weights)

    def extra_repr(self) -> str:
        return f"{self._weighting!r}, active={self.active}"
