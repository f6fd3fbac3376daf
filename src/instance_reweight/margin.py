"""MAIL's probabilistic margin (PM): a continuous, path-independent weighting signal."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import DeferredChecks, at_least_float32, check_choice, check_labels, check_logits

__all__ = ["ProbabilisticMargin", "probabilistic_margin", "probabilistic_margin_dif"]

_SPACES = ("prob", "logit")


def _checked(y: Tensor, *logits: Tensor) -> None:
    """Labels in range and finite logits, read with one host synchronisation."""
    checks = DeferredChecks()
    for z in logits:
        checks.add_labels_and_logits(y, z.shape[1], torch.isfinite(z).all())
    checks.verify()


def _scores(logits: Tensor, space: str) -> Tensor:
    """Probabilities or logits in the logits' own precision (at least float32): float64 logits
    beyond float32's range are not turned into Inf before the softmax."""
    z = at_least_float32(logits.detach())
    return z.softmax(dim=1) if space == "prob" else z


def _float32(difference: Tensor) -> Tensor:
    """A difference of scores as float32, saturated at float32's largest value: logits near that
    limit give a margin of ±3.4e38, not ±Inf (a probability difference is never touched)."""
    largest = torch.finfo(torch.float32).max
    return difference.clamp(-largest, largest).float()


def margin_of(logits: Tensor, y: Tensor, space: str = "prob") -> Tensor:
    """PM of checked (or, inside a training step, still to be checked) logits and in-range labels."""
    s = _scores(logits, space)
    true = s.gather(1, y[:, None]).squeeze(1)
    runner_up = s.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return _float32(true - runner_up)


def margin_dif_of(logits_nat: Tensor, logits_adv: Tensor, y: Tensor, space: str = "prob") -> Tensor:
    """PM_dif of checked logits and in-range labels (see :func:`margin_of`)."""
    return _float32(
        _scores(logits_nat, space).gather(1, y[:, None])
        - _scores(logits_adv, space).gather(1, y[:, None])
    ).squeeze(1)


@torch.no_grad()
def probabilistic_margin(logits: Tensor, y: Tensor, *, space: str = "prob") -> Tensor:
    r"""Probabilistic margin per example (MAIL Eq. 4).

    .. math::
        \mathrm{PM}_i = p_{y_i}(x_i) - \max_{j \ne y_i} p_j(x_i)

    Pass natural logits for PM\ :sub:`nat` (MAIL Eq. 6) or adversarial logits for PM\ :sub:`adv`
    (Eq. 5, MAIL's default). ``space="logit"`` gives the multi-class margin
    :math:`f_{y} - \max_{j \ne y} f_j` on raw logits (MAIL Table 5's "MM"). Any number of classes.

    Args:
        logits: ``(N, C)`` with ``C >= 2``.
        y: class indices ``(N,)``.
        space: ``"prob"`` (softmax probabilities) or ``"logit"``.

    Returns:
        ``(N,)`` float32, detached, finite; in ``[-1, 1]`` for ``space="prob"``, positive iff
        correct; a logit margin beyond float32's range saturates at ±3.4e38.

    Raises:
        ValueError: on shapes other than ``(N, C)``/``(N,)``, labels outside ``[0, C-1]``,
            non-finite logits (checked with one host synchronisation) or an unknown ``space``.
        TypeError: on float labels.

    Example:
        >>> probabilistic_margin(torch.log(torch.tensor([[0.6, 0.3, 0.1]])), torch.tensor([0]))
        tensor([0.3000])
    """
    check_choice(space, "space", _SPACES)
    logits = check_logits(logits)
    y = check_labels(y, logits.shape[0]).long()
    _checked(y, logits)
    return margin_of(logits, y, space)


@torch.no_grad()
def probabilistic_margin_dif(
    logits_nat: Tensor, logits_adv: Tensor, y: Tensor, *, space: str = "prob"
) -> Tensor:
    r"""PM\ :sub:`dif` (MAIL Eq. 7): how much the true class loses under attack.

    .. math::
        \mathrm{PM}^{\mathrm{dif}}_i = p_{y_i}(x_i) - p_{y_i}(\tilde x_i)

    The continuous counterpart of GAIRAT's κ. In ``[-1, 1]`` (in ``[0, 1]`` whenever the attack
    does not help the true class).

    Args:
        logits_nat: logits on natural inputs ``(N, C)``.
        logits_adv: logits on adversarial inputs ``(N, C)``.
        y: class indices ``(N,)``.
        space: ``"prob"`` or ``"logit"`` (difference of the true-class logit).

    Returns:
        ``(N,)`` float32, detached.

    Example:
        >>> nat = torch.log(torch.tensor([[0.7, 0.3]]))
        >>> adv = torch.log(torch.tensor([[0.4, 0.6]]))
        >>> probabilistic_margin_dif(nat, adv, torch.tensor([0]))
        tensor([0.3000])
    """
    check_choice(space, "space", _SPACES)
    logits_nat = check_logits(logits_nat, name="logits_nat")
    logits_adv = check_logits(logits_adv, logits_nat.shape[0], name="logits_adv")
    if logits_adv.shape != logits_nat.shape:
        raise ValueError(
            f"Expected `logits_adv` of shape {tuple(logits_nat.shape)} like `logits_nat`, got {tuple(logits_adv.shape)}."
        )
    y = check_labels(y, logits_nat.shape[0]).long()
    _checked(y, logits_nat, logits_adv)
    return margin_dif_of(logits_nat, logits_adv, y, space)


class ProbabilisticMargin(nn.Module):
    r"""Module form of :func:`probabilistic_margin`, holding the ``space`` option.

    ``pm(logits, y)`` gives PM\ :sub:`nat` or PM\ :sub:`adv` depending on which logits are passed;
    ``pm.dif(logits_nat, logits_adv, y)`` gives PM\ :sub:`dif`.

    Args:
        space: ``"prob"`` (MAIL's PM) or ``"logit"`` (multi-class margin on raw logits).

    Example:
        >>> pm = ProbabilisticMargin()
        >>> pm(torch.tensor([[2.0, 2.0]]), torch.tensor([1]))
        tensor([0.])
    """

    def __init__(self, space: str = "prob") -> None:
        super().__init__()
        self.space = check_choice(space, "space", _SPACES)

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        return probabilistic_margin(logits, y, space=self.space)

    def dif(self, logits_nat: Tensor, logits_adv: Tensor, y: Tensor) -> Tensor:
        """PM_dif = p_y(x) − p_y(x_adv); see :func:`probabilistic_margin_dif`."""
        return probabilistic_margin_dif(logits_nat, logits_adv, y, space=self.space)

    def extra_repr(self) -> str:
        return f"space={self.space!r}"
