"""Schedules over training time: the burn-in of the reweighting, and the ramp of the attack's ε.

Time is passed in explicitly, as with torch's LR schedulers: ``step(epoch)`` at the start of every
epoch (or, for the ε ramp, of every batch with a fractional epoch).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from ._checks import check_int, check_number
from .attack import GeometryAwareAttack
from .loss import InstanceReweightedLoss
from .weighting import InstanceWeighting

__all__ = ["BurnInScheduler", "EpsilonScheduler"]

Lam = Union[float, Callable[[int], float]]

_STATE_KEYS = ("burn_in_epochs", "lam", "last_epoch")


def _check_state(state_dict: object, keys: Tuple[str, ...], owner: str) -> None:
    """``state_dict`` must be a mapping with exactly ``keys``, as ``owner.state_dict()`` gives."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"Expected `state_dict` to be the dict of {owner}.state_dict(), got "
            f"{type(state_dict).__name__}."
        )
    if set(state_dict) != set(keys):
        raise ValueError(
            f"Expected `state_dict` with the keys {', '.join(keys)} (from {owner}.state_dict()), got "
            f"{sorted(map(str, state_dict))}."
        )


def _lam_value(value: Any, epoch: int, name: str = "lam") -> float:
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(
            f"Expected `{name}` to be a number (finite or +inf) at epoch {epoch}, got nan; a linear ramp "
            "from λ_max = inf gives NaN (as in the official GAIRAT code): use a finite λ_max."
        )
    return check_number(value, name, allow_inf=True, hint=f" at epoch {epoch}")


def _weighting_of(target: object) -> InstanceWeighting:
    """The weighting itself, or the one a loss holds (``InstanceReweightedLoss.weighting``)."""
    weighting = (
        target if isinstance(target, InstanceWeighting) else getattr(target, "weighting", None)
    )
    if not isinstance(weighting, InstanceWeighting):
        raise TypeError(
            "Expected `criterion` to be an InstanceWeighting or a loss holding one (an "
            f"InstanceReweightedLoss), got {type(target).__name__}."
        )
    return weighting


class BurnInScheduler:
    r"""Switches an :class:`~instance_reweight.InstanceWeighting` (or the loss holding one) on after a burn-in.

    Reweighting is active iff the 0-based epoch is ``>= burn_in_epochs``; before that every weight is
    1 (both papers' burn-in). GAIRAT's "60 epochs burn-in" is ``burn_in_epochs=60``: reweighting
    starts at 0-based epoch 60. (The official GAIRAT code already starts at 0-based epoch 59.)

    Time is passed in explicitly, as with torch's LR schedulers: the scheduler starts at epoch 0;
    call ``step(epoch)`` at the start of every epoch, or ``step()`` (next epoch) at its end.

    Args:
        criterion: the :class:`~instance_reweight.InstanceWeighting` to switch, or a loss holding
            one (an :class:`~instance_reweight.InstanceReweightedLoss`).
        burn_in_epochs: number of epochs without reweighting.
        lam: GAIRAT's λ, set on the weighting's scheme while active: a number, or a callable
            ``epoch -> λ`` for a schedule (e.g. GAIRAT's piecewise
            ``lambda e: -1.0 if e < 90 else -2.0``). ``None`` leaves the scheme's ``lam`` alone.

    Raises:
        TypeError: if ``criterion`` neither is nor holds an
            :class:`~instance_reweight.InstanceWeighting`, or on a non-integer epoch or non-numeric λ.
        ValueError: on a negative ``burn_in_epochs`` or epoch, a NaN λ, or ``lam`` for a scheme
            without λ.

    Example:
        >>> import torch.nn as nn
        >>> criterion = InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat")
        >>> burn_in = BurnInScheduler(criterion, burn_in_epochs=2, lam=0.0)
        >>> [(burn_in.step(epoch), criterion.active)[1] for epoch in range(4)]
        [False, False, True, True]
    """

    def __init__(
        self,
        criterion: Union[InstanceWeighting, InstanceReweightedLoss],
        *,
        burn_in_epochs: int,
        lam: Optional[Lam] = None,
    ) -> None:
        self.weighting = _weighting_of(criterion)
        self.burn_in_epochs = check_int(burn_in_epochs, "burn_in_epochs", 0)
        if lam is not None:
            self._check_has_lam()
        self.lam = lam if lam is None or callable(lam) else _lam_value(lam, 0)
        self.last_epoch = 0
        self._apply()

    def _check_has_lam(self) -> None:
        if "lam" not in self.weighting.scheme_params:
            raise ValueError(
                f"Expected a scheme with a λ parameter for `lam=` (the GAIRAT schemes), got scheme "
                f"{self.weighting.scheme.name!r}; drop `lam=`."
            )

    @property
    def active(self) -> bool:
        """Whether the current epoch reweights."""
        return self.last_epoch >= self.burn_in_epochs

    def step(self, epoch: Optional[int] = None) -> None:
        """Move to ``epoch`` (0-based), or to the next epoch when none is given."""
        if epoch is None:
            epoch = self.last_epoch + 1
        self.last_epoch = check_int(epoch, "epoch", 0, " (0-based)")
        self._apply()

    def _apply(self) -> None:
        self.weighting.active = self.active
        if self.active and self.lam is not None:
            lam = self.lam(self.last_epoch) if callable(self.lam) else self.lam
            self.weighting.set_scheme_params(lam=_lam_value(lam, self.last_epoch))

    def state_dict(self) -> Dict[str, Any]:
        """Plain values only (loads under ``torch.load(weights_only=True)``); a callable λ is not saved."""
        return {
            "last_epoch": self.last_epoch,
            "burn_in_epochs": self.burn_in_epochs,
            "lam": None if callable(self.lam) else self.lam,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the epoch (and a numeric λ) and re-apply them to the weighting.

        Every value is checked before any is applied: a bad state changes nothing.
        """
        _check_state(state_dict, _STATE_KEYS, "BurnInScheduler")
        burn_in_epochs = check_int(state_dict["burn_in_epochs"], "state_dict['burn_in_epochs']", 0)
        last_epoch = check_int(
            state_dict["last_epoch"], "state_dict['last_epoch']", 0, " (0-based)"
        )
        lam = state_dict["lam"]
        if lam is not None and not callable(self.lam):
            self._check_has_lam()
            lam = _lam_value(lam, last_epoch, "state_dict['lam']")
        self.burn_in_epochs, self.last_epoch = burn_in_epochs, last_epoch
        if not callable(self.lam):
            self.lam = lam
        self._apply()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(burn_in_epochs={self.burn_in_epochs}, last_epoch={self.last_epoch}, "
            f"active={self.active}, lam={self.lam!r})"
        )


_EPS_STATE_KEYS = ("eps", "step_size", "ramp_epochs", "last_epoch")


class EpsilonScheduler:
    r"""Ramps an attack's radius ε — and its step α with it — linearly from 0 over the first epochs.

    .. math::

        \epsilon(t) = \epsilon \cdot \min\Bigl(1, \frac{t}{T}\Bigr), \qquad
        \alpha(t) = \alpha \cdot \frac{\epsilon(t)}{\epsilon}

    with :math:`t` the (fractional, 0-based) epoch and :math:`T` = ``ramp_epochs``: the ratio α/ε is
    kept, so every PGD iterate of the ramp can still reach the boundary of the smaller ball. This is the
    usual remedy for MNIST's chance plateau at ε = 0.3 (and the ε schedule of certified training, Gowal
    et al. 2019). At ε(t) = 0 every iterate is x itself, whatever α; α is then left at its final value
    (so is it where α·ε(t)/ε underflows to 0: the projection onto the ε(t)-ball bounds every step).
    ``ramp_epochs=0`` keeps ε and α at their final values from the start.

    Call ``step(epoch + i / len(loader))`` before batch ``i`` for a per-batch ramp, or ``step(epoch)``
    once per epoch for a per-epoch one. The scheduler starts at epoch 0 (ε = 0 unless ``ramp_epochs=0``).

    Args:
        attack: the :class:`~instance_reweight.GeometryAwareAttack` whose ``eps`` and ``step_size`` it
            sets (a method of :mod:`instance_reweight.methods` takes ``eps_ramp_epochs=`` instead).
        ramp_epochs: number of epochs :math:`T` over which ε grows from 0 to ``eps`` (a float ≥ 0).
        eps: the final radius; ``None`` takes the attack's ``eps``.
        step_size: the final step α; ``None`` takes the attack's ``step_size``.

    Raises:
        TypeError: if ``attack`` is not a :class:`~instance_reweight.GeometryAwareAttack`, or on a
            non-numeric argument or epoch.
        ValueError: on a negative or non-finite ``ramp_epochs``, ``eps`` or epoch, or a non-positive
            ``step_size``.

    Example:
        >>> import torch.nn as nn
        >>> attack = GeometryAwareAttack(nn.Linear(4, 2), eps=0.3, step_size=0.04, steps=10)
        >>> ramp = EpsilonScheduler(attack, ramp_epochs=2)
        >>> for t in (0.0, 0.5, 1.0, 2.0, 7.25):
        ...     ramp.step(t)
        ...     print(f"{t}: eps={attack.eps:.3f} step_size={attack.step_size:.3f}")
        0.0: eps=0.000 step_size=0.040
        0.5: eps=0.075 step_size=0.010
        1.0: eps=0.150 step_size=0.020
        2.0: eps=0.300 step_size=0.040
        7.25: eps=0.300 step_size=0.040
    """

    def __init__(
        self,
        attack: GeometryAwareAttack,
        *,
        ramp_epochs: float,
        eps: Optional[float] = None,
        step_size: Optional[float] = None,
    ) -> None:
        if not isinstance(attack, GeometryAwareAttack):
            raise TypeError(
                f"Expected `attack` to be a GeometryAwareAttack, got {type(attack).__name__}; for a "
                "method of ir.methods pass `eps_ramp_epochs=` to ir.methods.get instead."
            )
        self.attack = attack
        self.ramp_epochs = check_number(ramp_epochs, "ramp_epochs", minimum=0.0)
        self.eps = check_number(
            attack.eps if eps is None else eps, "eps", minimum=0.0, hint=" (the final radius)"
        )
        self.step_size = check_number(
            attack.step_size if step_size is None else step_size,
            "step_size",
            minimum=0.0,
            strict=True,
        )
        self.last_epoch = 0.0
        self._apply()

    @property
    def fraction(self) -> float:
        """ε(t)/ε at the current epoch: from 0 to 1 over the ramp, then 1."""
        if self.ramp_epochs == 0:
            return 1.0
        return min(1.0, self.last_epoch / self.ramp_epochs)

    def step(self, epoch: Optional[float] = None) -> None:
        """Move to ``epoch`` (0-based, fractional for a per-batch ramp), or to the next whole epoch."""
        if epoch is None:
            epoch = math.floor(self.last_epoch) + 1
        self.last_epoch = check_number(
            epoch, "epoch", minimum=0.0, hint=" (0-based, may be fractional)"
        )
        self._apply()

    def _apply(self) -> None:
        fraction = self.fraction
        self.attack.eps = self.eps * fraction
        # The attack needs α > 0. Where α·ε(t)/ε is 0 — at ε(t) = 0, or a product below the
        # smallest float on the ramp's first instant — the final α: the projection onto the
        # ε(t)-ball bounds every step anyway (at ε(t) = 0 every iterate is x).
        step_size = self.step_size * fraction
        self.attack.step_size = step_size if step_size > 0 else self.step_size

    def state_dict(self) -> Dict[str, Any]:
        """Plain values only (loads under ``torch.load(weights_only=True)``)."""
        return {
            "eps": self.eps,
            "step_size": self.step_size,
            "ramp_epochs": self.ramp_epochs,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the final ε and α, the ramp and the epoch, and set the attack from them.

        Every value is checked before any is applied: a bad state changes nothing.
        """
        _check_state(state_dict, _EPS_STATE_KEYS, "EpsilonScheduler")
        eps = check_number(state_dict["eps"], "state_dict['eps']", minimum=0.0)
        step_size = check_number(
            state_dict["step_size"], "state_dict['step_size']", minimum=0.0, strict=True
        )
        ramp_epochs = check_number(
            state_dict["ramp_epochs"], "state_dict['ramp_epochs']", minimum=0.0
        )
        last_epoch = check_number(state_dict["last_epoch"], "state_dict['last_epoch']", minimum=0.0)
        self.eps, self.step_size, self.ramp_epochs, self.last_epoch = (
            eps,
            step_size,
            ramp_epochs,
            last_epoch,
        )
        self._apply()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps:.6g}, step_size={self.step_size:.6g}, "
            f"ramp_epochs={self.ramp_epochs:g}, last_epoch={self.last_epoch:g})"
        )
