"""Per-example loss terms of the methods in both papers, each returning shape ``(N,)``.

Every function here can be the ``base_loss`` of :class:`~instance_reweight.InstanceReweightedLoss`.
They compute and return float32 for half or bfloat16 logits (autocast), float64 for float64, and
keep the graph, so they also serve as attack objectives.
"""

from __future__ import annotations

import torch  # noqa: F401  (the doctests use it)
import torch.nn.functional as F
from torch import Tensor

from ._checks import at_least_float32, check_labels, check_logits

__all__ = ["boosted_ce", "cw_margin", "misclassification_aware_kl", "trades_kl"]


def _runner_up(scores: Tensor, y: Tensor) -> Tensor:
    """``max_{j != y} scores_j`` per row, for any number of classes."""
    return scores.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def trades_kl(logits_adv: Tensor, logits_nat: Tensor) -> Tensor:
    r"""TRADES' KL term per example, summed over classes.

    .. math::
        \ell_i = \sum_k p_k(x_i)\,\bigl(\log p_k(x_i) - \log p_k(\tilde x_i)\bigr)

    This is the quantity TRADES, MART and MAIL compute as
    ``KLDivLoss(log_softmax(f(x_adv)), softmax(f(x)))``, which the papers write
    KL(p(x_adv) ‖ p(x)). Gradients flow into both arguments.

    Args:
        logits_adv: logits on the adversarial inputs, ``(N, C)``.
        logits_nat: logits on the natural inputs, ``(N, C)``.

    Returns:
        ``(N,)`` non-negative KL values.

    Raises:
        ValueError: on logits that are not ``(N, C)`` with ``C >= 2`` or do not match.

    Example:
        >>> z = torch.tensor([[2.0, 0.0, -1.0]])
        >>> trades_kl(z, z)
        tensor([0.])
    """
    logits_adv = check_logits(logits_adv, name="logits_adv")
    logits_nat = check_logits(logits_nat, logits_adv.shape[0], name="logits_nat")
    if logits_nat.shape != logits_adv.shape:
        raise ValueError(
            f"Expected `logits_nat` of shape {tuple(logits_adv.shape)} like `logits_adv` (same classes), "
            f"got {tuple(logits_nat.shape)}."
        )
    log_p_nat = F.log_softmax(at_least_float32(logits_nat), dim=1)
    log_p_adv = F.log_softmax(at_least_float32(logits_adv), dim=1)
    return (log_p_nat.exp() * (log_p_nat - log_p_adv)).sum(dim=1)


def boosted_ce(logits_adv: Tensor, y: Tensor) -> Tensor:
    r"""MART's boosted cross-entropy (BCE) per example.

    .. math::
        \ell_i = -\log p_{y_i}(\tilde x_i) - \log\bigl(1 - \max_{k \ne y_i} p_k(\tilde x_i)\bigr)

    The second term is computed exactly in log space, as :math:`-\log \sum_{j \ne r} p_j` with
    :math:`r` the runner-up class, so it stays finite when the runner-up takes all the mass. MART's
    official code computes :math:`-\log(1.0001 - p_r + 10^{-12})` instead, which caps the term near
    :math:`-\log 10^{-4} \approx 9.2` and differs by up to :math:`\log(1 + 10^{-4}/(1 - p_r))`.

    Args:
        logits_adv: logits on the adversarial inputs, ``(N, C)``.
        y: class indices, ``(N,)``.

    Returns:
        ``(N,)`` losses.

    Raises:
        ValueError: on logits that are not ``(N, C)`` with ``C >= 2``, or labels not ``(N,)``.
        TypeError: on float labels.

    Example:
        >>> boosted_ce(torch.zeros(1, 2), torch.tensor([0]))  # 2 log 2
        tensor([1.3863])
    """
    logits_adv = check_logits(logits_adv, name="logits_adv")
    y = check_labels(y, logits_adv.shape[0]).long()
    log_p = F.log_softmax(at_least_float32(logits_adv), dim=1)
    ce = -log_p.gather(1, y[:, None]).squeeze(1)
    # log(1 - max_{k!=y} p_k) = log(sum_{j != runner-up} p_j), computed in log space (no log(0)).
    runner_up = log_p.scatter(1, y[:, None], float("-inf")).argmax(dim=1)
    rest = log_p.scatter(1, runner_up[:, None], float("-inf")).logsumexp(dim=1)
    return ce - rest


def misclassification_aware_kl(logits_adv: Tensor, logits_nat: Tensor, y: Tensor) -> Tensor:
    r"""MART's misclassification-aware KL per example.

    .. math::
        \ell_i = \mathrm{KL}_i \cdot \bigl(1 - p_{y_i}(x_i)\bigr)

    with :math:`\mathrm{KL}_i` the :func:`trades_kl` term. The factor ``1 - p_y(x)`` keeps its
    gradient, as in MART.

    Args:
        logits_adv: logits on the adversarial inputs, ``(N, C)``.
        logits_nat: logits on the natural inputs, ``(N, C)``.
        y: class indices, ``(N,)``.

    Returns:
        ``(N,)`` non-negative losses.

    Raises:
        ValueError: on logits that are not ``(N, C)`` with ``C >= 2``, or labels not ``(N,)``.
        TypeError: on float labels.

    Example:
        >>> z = torch.tensor([[1.0, 0.0]])
        >>> misclassification_aware_kl(z, z, torch.tensor([0]))
        tensor([0.])
    """
    kl = trades_kl(logits_adv, logits_nat)
    y = check_labels(y, kl.shape[0]).long()
    p_y = F.softmax(at_least_float32(logits_nat), dim=1).gather(1, y[:, None]).squeeze(1)
    return kl * (1.0 - p_y)


def cw_margin(logits: Tensor, y: Tensor, *, confidence: float = 50.0) -> Tensor:
    r"""The Carlini–Wagner margin objective per example, as the CW∞ attack maximises it.

    .. math::
        \ell_i = -\max\bigl(f_{y_i}(x_i) - \max_{j \ne y_i} f_j(x_i) + \kappa_{\mathrm{cw}},\ 0\bigr)

    with confidence :math:`\kappa_{\mathrm{cw}}` (50 in MAIL and GAIRAT's evaluation code).

    Args:
        logits: ``(N, C)``.
        y: class indices, ``(N,)``.
        confidence: the margin the attack tries to exceed.

    Returns:
        ``(N,)`` values ``<= 0``; 0 once the runner-up beats the true class by ``confidence``.

    Raises:
        ValueError: on logits that are not ``(N, C)`` with ``C >= 2``, or labels not ``(N,)``.
        TypeError: on float labels.

    Example:
        >>> cw_margin(torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([0]), confidence=0.0)
        tensor([-2.])
    """
    logits = check_logits(logits)
    y = check_labels(y, logits.shape[0]).long()
    z = at_least_float32(logits)
    margin = z.gather(1, y[:, None]).squeeze(1) - _runner_up(z, y)
    return -(margin + confidence).clamp(min=0.0)
