"""Burn-in: plain adversarial training first, instance reweighting from a given epoch on."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Union

from ._checks import check_int
from .loss import InstanceReweightedLoss

__all__ = ["BurnInScheduler"]

Lam = Union[float, Callable[[int], float]]


def _lam_value(value: Any, epoch: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(
            f"Expected the λ schedule to give a number (+inf for uniform weights) at epoch {epoch}, got "
            f"{value!r}; a linear ramp from λ_max = inf gives NaN (as in the official GAIRAT code): use a "
            "finite λ_max."
        )
    return float(value)


class BurnInScheduler:
    r"""Switches an :class:`~instance_reweight.InstanceReweightedLoss` on after a burn-in period.

    Reweighting is active iff the 0-based epoch is ``>= burn_in_epochs``; before that every weight is
    1 (both papers' burn-in). GAIRAT's "60 epochs burn-in" is ``burn_in_epochs=60``: reweighting
    starts at 0-based epoch 60. (The official GAIRAT code already starts at 0-based epoch 59.)

    Time is passed in explicitly, as with torch's LR schedulers: the scheduler starts at epoch 0;
    call ``step(epoch)`` at the start of every epoch, or ``step()`` (next epoch) at its end.

    Args:
        criterion: the loss to switch.
        burn_in_epochs: number of epochs without reweighting.
        lam: GAIRAT's λ, set on the criterion's scheme while active: a number, or a callable
            ``epoch -> λ`` for a schedule (e.g. GAIRAT's piecewise
            ``lambda e: -1.0 if e < 90 else -2.0``). ``None`` leaves the scheme's ``lam`` alone.

    Raises:
        TypeError: if ``criterion`` is not an :class:`~instance_reweight.InstanceReweightedLoss`.
        ValueError: on a negative ``burn_in_epochs``, or ``lam`` for a scheme without λ.

    Example:
        >>> import torch.nn as nn
        >>> criterion = InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat")
        >>> burn_in = BurnInScheduler(criterion, burn_in_epochs=2, lam=0.0)
        >>> [(burn_in.step(epoch), criterion.active)[1] for epoch in range(4)]
        [False, False, True, True]
    """

    def __init__(
        self, criterion: InstanceReweightedLoss, *, burn_in_epochs: int, lam: Optional[Lam] = None
    ) -> None:
        if not isinstance(criterion, InstanceReweightedLoss):
            raise TypeError(
                f"Expected `criterion` to be an InstanceReweightedLoss, got {type(criterion).__name__}."
            )
        check_int(burn_in_epochs, "burn_in_epochs", 0)
        if lam is not None and "lam" not in criterion.scheme_params:
            raise ValueError(
                f"Expected a scheme with a λ parameter for `lam=` (the GAIRAT schemes), got scheme "
                f"{criterion.scheme.name!r}; drop `lam=`."
            )
        if lam is not None and not callable(lam):
            lam = _lam_value(lam, 0)
        self.criterion = criterion
        self.burn_in_epochs = burn_in_epochs
        self.lam = lam
        self.last_epoch = 0
        self._apply()

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
        self.criterion.active = self.active
        if self.active and self.lam is not None:
            lam = self.lam(self.last_epoch) if callable(self.lam) else self.lam
            self.criterion.set_scheme_params(lam=_lam_value(lam, self.last_epoch))

    def state_dict(self) -> Dict[str, Any]:
        """Plain values only (loads under ``torch.load(weights_only=True)``); a callable λ is not saved."""
        return {
            "last_epoch": self.last_epoch,
            "burn_in_epochs": self.burn_in_epochs,
            "lam": None if callable(self.lam) else self.lam,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the epoch (and a numeric λ) and re-apply them to the criterion."""
        self.burn_in_epochs = int(state_dict["burn_in_epochs"])
        if not callable(self.lam):
            self.lam = state_dict["lam"]
        self.last_epoch = int(state_dict["last_epoch"])
        self._apply()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(burn_in_epochs={self.burn_in_epochs}, last_epoch={self.last_epoch}, "
            f"active={self.active}, lam={self.lam!r})"
        )
