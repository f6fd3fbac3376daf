"""Instance-reweighted loss: any per-example loss, reduced by an :class:`InstanceWeighting`."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from torch import Tensor, nn

from ._checks import check_base_loss, check_losses
from .schemes import Scheme, SchemeLike
from .weighting import InstanceWeighting

__all__ = ["InstanceReweightedLoss"]


class InstanceReweightedLoss(nn.Module):
    r"""A per-example loss followed by an :class:`~instance_reweight.InstanceWeighting`'s reduction.

    .. math::
        \mathcal L = \frac1N \sum_i w_i\,\ell_i, \qquad \ell = \texttt{base\_loss}(\ldots) \in \mathbb R^N

    with the weights :math:`w` of the weighting (see :class:`~instance_reweight.InstanceWeighting`).
    While the weighting is inactive (burn-in, see :class:`~instance_reweight.BurnInScheduler`) the
    loss is the plain mean of ``base_loss``.

    Args:
        base_loss: any callable returning one loss per example, shape ``(N,)``: a torch loss built
            with ``reduction="none"``, a function, a lambda, :func:`instance_reweight.losses.trades_kl`.
        scheme: a name of :data:`~instance_reweight.schemes.SCHEMES` (``"gairat"``, ``"mail"``, …),
            a callable ``signal -> raw weights (N,)``, or an
            :class:`~instance_reweight.InstanceWeighting` (then ``normalize``, ``scale`` and the
            scheme's parameters belong to it and are not passed here).
        normalize: ``"batch"`` (both papers), ``"global"`` (over the global batch under
            DistributedDataParallel) or ``"none"`` (with ``scale``; official MAIL code).
        scale: multiplies every weight.
        **scheme_params: the scheme's parameters, e.g. ``steps=10, lam=-1.0`` for GAIRAT or
            ``slope=10.0, bias=-0.5`` for MAIL-AT; and ``space`` of the margin (see
            :class:`~instance_reweight.InstanceWeighting`).

    Attributes:
        weighting: the :class:`~instance_reweight.InstanceWeighting`; ``active``, ``last_weights``,
            ``scheme``, ``scheme_params`` and ``set_scheme_params`` are its own.

    Shape:
        - inputs: whatever ``base_loss`` takes; ``kappa``/``margin``: ``(N,)``.
        - Output: scalar.

    Raises:
        ValueError: at construction, for a torch loss whose ``reduction`` is not ``"none"``; at call,
            if ``base_loss`` does not return ``(N,)`` or for a bad signal (see
            :class:`~instance_reweight.InstanceWeighting`).
        TypeError: for a ``base_loss`` that is not callable or returns no tensor.

    Example:
        >>> import torch
        >>> criterion = InstanceReweightedLoss(
        ...     nn.CrossEntropyLoss(reduction="none"), "gairat", steps=10, lam=0.0)
        >>> logits, y = torch.zeros(3, 4, requires_grad=True), torch.tensor([0, 1, 2])
        >>> loss = criterion(logits, y, kappa=torch.tensor([0, 5, 10]))
        >>> loss.backward()
        >>> criterion.last_weights  # ω = 1, 1/2, ~0, normalised to mean 1
        tensor([1.9999e+00, 1.0000e+00, 9.0796e-05])
        >>> criterion.weighting
        InstanceWeighting(scheme='gairat', normalize='batch', steps=10, lam=0.0, active=True)
    """

    def __init__(
        self,
        base_loss: Callable[..., Tensor],
        scheme: Union[SchemeLike, InstanceWeighting],
        *,
        normalize: str = "batch",
        scale: float = 1.0,
        **scheme_params: Any,
    ) -> None:
        super().__init__()
        check_base_loss(base_loss)
        if isinstance(scheme, InstanceWeighting):
            if scheme_params or normalize != "batch" or scale != 1.0:
                raise ValueError(
                    "Expected the options of a given InstanceWeighting to be set on it, got "
                    "`normalize`, `scale` or scheme parameters here as well; pass them to "
                    "InstanceWeighting(...) instead."
                )
            self.weighting = scheme
        else:
            self.weighting = InstanceWeighting(
                scheme, normalize=normalize, scale=scale, **scheme_params
            )
        self.base_loss = base_loss

    @property
    def active(self) -> bool:
        """Reweighting on (True) or the plain mean of ``base_loss`` (False, burn-in)."""
        return self.weighting.active

    @active.setter
    def active(self, value: bool) -> None:
        self.weighting.active = value

    @property
    def last_weights(self) -> Optional[Tensor]:
        """The ``(N,)`` float32 weights of the last call (ones while inactive)."""
        return self.weighting.last_weights

    @property
    def scheme(self) -> Scheme:
        """The resolved weight assignment function."""
        return self.weighting.scheme

    @property
    def scheme_params(self) -> Dict[str, Any]:
        """A copy of the scheme's current parameters."""
        return self.weighting.scheme_params

    def set_scheme_params(self, **params: Any) -> None:
        """Change scheme parameters (e.g. ``lam``), checked."""
        self.weighting.set_scheme_params(**params)

    def forward(
        self, *inputs: Any, kappa: Optional[Tensor] = None, margin: Optional[Tensor] = None
    ) -> Tensor:
        first = next((t for t in inputs if isinstance(t, Tensor) and t.dim() > 0), None)
        losses = check_losses(
            self.base_loss(*inputs), None if first is None else first.shape[0], "`base_loss`"
        )
        if _backward_ran(losses):
            raise ValueError(
                "Expected `base_loss` to return per-example losses whose graph is intact, got losses "
                "whose backward has already run (their saved tensors are freed): `base_loss` calls "
                "`.backward()` itself; return the losses and call `.backward()` on this criterion's "
                "result instead."
            )
        return self.weighting._reduce(losses, kappa, margin)

    def extra_repr(self) -> str:
        return repr(self.weighting)


def _backward_ran(losses: Tensor) -> bool:
    """Whether a backward pass already ran through (and freed) the graph of ``losses``: probes the
    saved tensors of its last 8 nodes, nearest first (a few microseconds, no synchronisation; the
    base loss's own operations come first, the model's are deeper)."""
    pending: List[Any] = [losses.grad_fn]
    for _ in range(8):
        node = pending.pop(0) if pending else None
        if node is None:
            return False
        try:
            for name in _saved_tensors(node):
                getattr(node, name)
        except RuntimeError:
            return True
        pending.extend(fn for fn, _ in node.next_functions if fn is not None)
    return False


_SAVED: Dict[type, Tuple[str, ...]] = {}
"""The attributes of each autograd node type that hold saved tensors."""


def _saved_tensors(node: Any) -> Tuple[str, ...]:
    """The attributes of ``node`` that hold saved tensors: those with a raw form."""
    kind = type(node)
    if kind not in _SAVED:
        names = dir(kind)
        _SAVED[kind] = tuple(n for n in names if n.startswith("_saved_") and f"_raw{n}" in names)
    return _SAVED[kind]
