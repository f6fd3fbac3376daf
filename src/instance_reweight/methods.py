r"""Every method of both papers by name, each defined as data: a :class:`Definition`.

:func:`get` binds a method to a model; a training loop calls :meth:`Method.set_epoch` once per epoch
and :meth:`Method.step` (or the ``with`` block :meth:`Method.training_step`) for every batch, so
switching method is changing a string. Methods without AWP also give :meth:`Method.loss` to
backpropagate yourself.

A method's :class:`Definition` names its attack (random start and loss; τ: FAT's early stop), the
model's train-mode forwards, its per-example loss terms (:class:`Term`: CE(x) = CE(f(x), y), BCE
MART's boosted CE, KL = KL(p(x_adv) ‖ p(x)), KL_cw = KL(p(x_cw) ‖ p(x))) with the factor each
carries — 1, the instance weight w (normalised to mean 1 over the batch unless said) or 1 − w — and
the signal w is read from: κ of the attack or PM of the forward that gives the loss.

============================  ==============  ==============  =====================================================  ======
name                          attack          forwards f(·)   training loss, the batch mean of each term             weight
============================  ==============  ==============  =====================================================  ======
``at``                        uniform, CE     x_adv           CE(x_adv)                                              —
``trades``                    normal, KL      x, x_adv        CE(x) + β·KL                                           —
``mart``                      normal, CE      x, x_adv        CE(x_adv) + (BCE − CE)(x_adv) + β·KL·(1 − p_y(x))      —
``fat``                       uniform, CE, τ  x_adv           CE(x_adv)                                              —
``gairat``                    uniform, CE     x_adv           w·CE(x_adv)                                            κ
``gair-fat``                  uniform, CE, τ  x_adv           w·CE(x_adv)                                            κ
``gair-trades``               normal, KL      x, x_adv        w·CE(x) + β·KL                                         κ
``gair-mart``                 normal, CE      x, x_adv        w·CE(x_adv) + (BCE − CE)(x_adv) + β·KL·(1 − p_y(x))    κ
``mail-at``                   normal, CE      x_adv           w·CE(x_adv)                                            PM
``mail-trades``               normal, KL      x, x_adv        CE(x) + w·β·KL                                         PM
``mail-mart``                 normal, CE      x, x_adv        w·CE(x_adv) + w·(BCE − CE)(x_adv) + β·KL·(1 − p_y(x))  PM
``gair-trades`` official      normal, KL      x, x_adv, x_cw  CE(x) + w·β·KL + (1 − w)·β·KL_cw                       κ
``trades`` official           normal, KL      x, x_adv, x     CE(x) + β·KL                                           —
``trades-awp`` official       normal, KL      x_adv, x, x     CE(x) + β·KL                                           —
``mail-trades-awp`` official  normal, KL      x_adv, x, x     CE(x) + w·β·KL                                         PM
============================  ==============  ==============  =====================================================  ======

τ: FAT's early stop, 0 → 3 → 6 at epochs 40 and 70 (:func:`fat_tau`); β = 6 (``trades``,
``gair-trades``, ``mail-mart``) or 5 (``mart``, ``gair-mart``, ``mail-trades``).

The AWP methods (Wu, Xia and Wang 2020) take each optimiser step at weights perturbed, by
:class:`~instance_reweight.AdversarialWeightPerturbation`, to increase the same objective — with the
same instance weights — that the step then decreases: ``at-awp`` and ``trades-awp`` (γ = 5e-3,
applied from 0-based epoch 0 and 9, the official TRADES-AWP loop's 10th epoch), ``gairat-awp`` and
``mail-at-awp`` (as ``gairat`` and ``mail-at``, AWP as ``at-awp``) and ``mail-trades-awp`` (as
``mail-trades``, AWP as ``trades-awp``).

``variant="official"`` gives the official codes' objectives where they differ from the papers:
``gair-trades`` becomes the GAIR-RST code's mean CE(f(x), y) + β·mean [w·KL(x_kl) + (1 − w)·KL(x_cw)]
with unnormalised w (GAIRAT Eq. 13; x_cw from a CW attack, run only once w applies), the MAIL methods
use 3·ω, unnormalised, and ``trades`` runs the official TRADES code's three train-mode forwards, f(x),
f(x_adv) and f(x) again for the KL (the same loss and gradient; BatchNorm's running statistics see
the natural batch twice). The AWP methods' official variants are the official AWP scripts': ``at-awp``,
``gairat-awp`` and ``mail-at-awp`` attack in train mode (:attr:`Definition.attack_mode`), as the
AT_AWP scripts do; ``trades-awp`` and ``mail-trades-awp`` run trades_AWP's three train-mode forwards,
f(x_adv), f(x) for the KL and f(x) for the CE; the MAIL ones also take MAIL's 3·ω.

Adding a method is adding an entry to ``_METHODS`` (and, for a new term, one function in
``_TERMS``); the table above is checked against the entries by the tests.
"""

from __future__ import annotations

import contextlib
import enum
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, FrozenSet, Iterator, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import (
    DeferredChecks,
    at_least_float32,
    check_base_loss,
    check_choice,
    check_generator,
    check_int,
    check_logits,
    check_losses,
    check_name,
    check_number,
    did_you_mean,
)
from .attack import AttackOutput, GeometryAwareAttack
from .awp import AdversarialWeightPerturbation
from .losses import boosted_ce, misclassification_aware_kl, trades_kl
from .margin import margin_dif_of, margin_of
from .scheduler import BurnInScheduler, EpsilonScheduler
from .schemes import SCHEMES, Scheme, resolve_scheme
from .weighting import InstanceWeighting, weighted_mean

__all__ = ["Definition", "Factor", "Method", "Term", "fat_tau", "get", "names"]


def fat_tau(epoch: int) -> int:
    """FAT's τ as GAIRAT Table 1 runs FAT and GAIR-FAT: 0, then 3 from epoch 40 and 6 from epoch 70.

    Example:
        >>> [fat_tau(e) for e in (0, 39, 40, 69, 70)]
        [0, 0, 3, 3, 6]
    """
    return 0 if epoch < 40 else 3 if epoch < 70 else 6


class Term(enum.Enum):
    """A per-example loss term with its coefficient, in the notation of the module's table.

    CE(x) is CE(f(x), y); BCE is MART's boosted CE; KL is KL(p(x_adv) ‖ p(x)), summed over classes;
    KL_cw is KL(p(x_cw) ‖ p(x)), x_cw from a CW attack (GAIR-RST).
    """

    CE_NAT = "CE(x)"
    CE_ADV = "CE(x_adv)"
    BOOST = "(BCE − CE)(x_adv)"
    KL = "β·KL"
    MKL = "β·KL·(1 − p_y(x))"
    KL_CW = "β·KL_cw"


class Factor(enum.Enum):
    """What multiplies a term: 1, the instance weight w, or 1 − w (GAIR-RST's KL_cw)."""

    ONE = "1"
    W = "w"
    ONE_MINUS_W = "1 − w"


class _Batch(NamedTuple):
    """What a loss term reads: the logits of each forward by name, the labels, β and the user's
    per-example loss ℓ in place of CE (``None``: CE)."""

    logits: Mapping[str, Tensor]
    y: Tensor
    beta: float
    loss: Optional[Callable[[Tensor, Tensor], Tensor]] = None


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(at_least_float32(logits), y, reduction="none")


def _classification(b: _Batch, forward: str) -> Tensor:
    """ℓ(f(·), y) of one forward: CE, or the user's ``base_loss`` on the logits (at least float32)."""
    logits = b.logits[forward]
    if b.loss is None:
        return _ce(logits, b.y)
    return check_losses(b.loss(at_least_float32(logits), b.y), logits.shape[0], "`base_loss`")


def _ce_nat(b: _Batch, earlier: Mapping[Term, Tensor]) -> Tensor:
    return _classification(b, "nat")


def _ce_adv(b: _Batch, earlier: Mapping[Term, Tensor]) -> Tensor:
    return _classification(b, "adv")


def _boost(b: _Batch, earlier: Mapping[Term, Tensor]) -> Tensor:
    """MART's BCE − CE = −log(1 − max_{k≠y} p_k(x_adv)); with CE as ℓ, the CE is the CE(x_adv) term
    just computed (one graph for both)."""
    ce = earlier[Term.CE_ADV] if b.loss is None else _ce(b.logits["adv"], b.y)
    return boosted_ce(b.logits["adv"], b.y) - ce


def _kl(b: _Batch, earlier: Mapping[Term, Tensor]) -> Tensor:
    """TRADES' KL, against the natural logits of its own forward where the definition runs one."""
    return b.beta * trades_kl(b.logits["adv"], b.logits.get("nat_kl", b.logits["nat"]))


def _mkl(b: _Batch, earlier: Mapping[Term, Tensor]) -> Tensor:
    return b.beta * misclassification_aware_kl(b.logits["adv"], b.logits["nat"], b.y)


def _kl_cw(b: _Batch, earlier: Mapping[Term, Tensor]) -> Tensor:
    return b.beta * trades_kl(b.logits["cw"], b.logits["nat"])


TermFunction = Callable[[_Batch, Mapping[Term, Tensor]], Tensor]
"""``(batch, the terms computed before it) -> (N,)`` per-example values of one term."""

_TERMS: Mapping[Term, TermFunction] = {
    Term.CE_NAT: _ce_nat,
    Term.CE_ADV: _ce_adv,
    Term.BOOST: _boost,
    Term.KL: _kl,
    Term.MKL: _mkl,
    Term.KL_CW: _kl_cw,
}

_FORWARDS = ("nat", "adv", "nat_kl", "cw")
"""f(x), f(x_adv), f(x) again for TRADES' KL (the official TRADES code), f(x_cw) (GAIR-RST)."""
_SIGNALS = (None, "kappa", "margin")
_ATTACK_MODES = ("eval", "train")


@dataclass(frozen=True)
class Definition:
    """A method as data, which :class:`Method` interprets.

    Attributes:
        attack: the attack's hyper-parameters (ε, step size, K, ``attack_loss``, ``random_start``,
            ``clip``, ``norm``).
        forwards: the model's train-mode forwards, in order, among ``"nat"`` (f(x)), ``"adv"``
            (f(x_adv)), ``"nat_kl"`` (f(x) again, read by TRADES' KL) and ``"cw"`` (f(x_cw), with
            x_cw from a CW attack, run only while w applies: the 1 − w term needs it).
        terms: each loss term, in the order they are summed, and its :class:`Factor`.
        signal: what w is computed from: ``"kappa"`` (GAIRAT), ``"margin"`` (MAIL) or ``None``.
        defaults: the other hyper-parameters (β, τ, the weighting's, AWP's).
        attack_mode: ``"eval"`` (the attack sees the model in eval mode: BatchNorm's running
            statistics, untouched) or ``"train"`` (the official AT_AWP scripts: BatchNorm's batch
            statistics, and its running statistics updated by each of the attack's forwards and by
            one more at x_adv, the forward with which their ``attack_pgd`` picks the restart).
    """

    attack: Mapping[str, Any]
    forwards: Tuple[str, ...]
    terms: Mapping[Term, Factor]
    signal: Optional[str] = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    attack_mode: str = "eval"

    def __post_init__(self) -> None:
        unknown = [f for f in self.forwards if f not in _FORWARDS]
        if unknown or self.signal not in _SIGNALS or self.attack_mode not in _ATTACK_MODES:
            raise ValueError(
                f"Expected forwards among {_FORWARDS}, a signal among {_SIGNALS} and an attack mode "
                f"among {_ATTACK_MODES}, got {self.forwards}, {self.signal!r} and "
                f"{self.attack_mode!r}."
            )
        if (self.signal is None) != (set(self.terms.values()) == {Factor.ONE}):
            raise ValueError(
                f"Expected a signal exactly when a term carries w, got signal={self.signal!r} for "
                f"the factors {[f.value for f in self.terms.values()]}."
            )

    @property
    def weighted(self) -> FrozenSet[Term]:
        """The terms that carry w."""
        return frozenset(t for t, f in self.terms.items() if f is Factor.W)

    def with_defaults(self, **defaults: Any) -> Definition:
        """The same definition with some defaults added or changed."""
        return replace(self, defaults={**self.defaults, **defaults})


# Threat model of both papers (SPEC §4); TRADES, MART and all MAIL code start at x + 0.001·N(0, I).
_PGD = {
    "eps": 8 / 255,
    "step_size": 2 / 255,
    "steps": 10,
    "attack_loss": "ce",
    "random_start": "uniform",
    "clip": (0.0, 1.0),
    "norm": "linf",
    "eps_ramp_epochs": 0.0,  # no ramp in either paper
}
_NORMAL = {**_PGD, "random_start": "normal"}
_KL = {**_NORMAL, "attack_loss": "kl"}
_GAIR = {"scheme": "gairat", "normalize": "batch", "scale": 1.0}
_MAIL = {
    "scheme": "mail",
    "normalize": "batch",
    "scale": 1.0,
    "margin": "adv",
    "burn_in_epochs": 74,
}

# Shorthands for the table below.
CE_NAT, CE_ADV, BOOST, KL, MKL, KL_CW = Term
ONE, W, ONE_MINUS_W = Factor
ADV, NAT_ADV = ("adv",), ("nat", "adv")

# GAIRAT Table 1 (WRN-32-10); GAIR-TRADES Appendix C.9; GAIR-MART Appendix C.7 (from epoch 75).
# MAIL Section 4.1: γ, β of the weight; β of TRADES and MART; the initial 74 epochs burn in.
_METHODS: Dict[str, Definition] = {
    # name: Definition(attack, forwards, {term: factor}, signal, defaults)
    "at": Definition(_PGD, ADV, {CE_ADV: ONE}),
    "trades": Definition(_KL, NAT_ADV, {CE_NAT: ONE, KL: ONE}, None, {"beta": 6.0}),
    "mart": Definition(_NORMAL, NAT_ADV, {CE_ADV: ONE, BOOST: ONE, MKL: ONE}, None, {"beta": 5.0}),
    "fat": Definition(_PGD, ADV, {CE_ADV: ONE}, None, {"tau": fat_tau}),
    "gairat": Definition(_PGD, ADV, {CE_ADV: W}, "kappa", {**_GAIR, "burn_in_epochs": 60, "lam": 0.0}),
    "gair-fat": Definition(
        _PGD, ADV, {CE_ADV: W}, "kappa",
        {**_GAIR, "tau": fat_tau, "burn_in_epochs": 60, "lam": 0.0},
    ),
    "gair-trades": Definition(
        _KL, NAT_ADV, {CE_NAT: W, KL: ONE}, "kappa",
        {**_GAIR, "beta": 6.0, "burn_in_epochs": 75, "lam": -1.0},
    ),
    "gair-mart": Definition(
        _NORMAL, NAT_ADV, {CE_ADV: W, BOOST: ONE, MKL: ONE}, "kappa",
        {**_GAIR, "beta": 5.0, "burn_in_epochs": 75, "lam": -1.0},
    ),
    "mail-at": Definition(_NORMAL, ADV, {CE_ADV: W}, "margin", {**_MAIL, "slope": 10.0, "bias": -0.5}),
    "mail-trades": Definition(
        _KL, NAT_ADV, {CE_NAT: ONE, KL: W}, "margin",
        {**_MAIL, "beta": 5.0, "slope": 2.0, "bias": 0.0},
    ),
    "mail-mart": Definition(  # w on the whole BCE
        _NORMAL, NAT_ADV, {CE_ADV: W, BOOST: W, MKL: ONE}, "margin",
        {**_MAIL, "beta": 6.0, "slope": 2.0, "bias": 0.0},
    ),
}  # fmt: skip

# AWP composes with a method: its definition, with AWP's γ (relative size of the weight perturbation)
# and the 0-based epoch from which AT-AWP or TRADES-AWP applies it. trades_AWP/train_trades_cifar.py
# counts epochs from 1 (--start_epoch 1) and perturbs `if epoch >= args.awp_warmup` (10): from its
# 10th epoch, 0-based 9.
_AT_AWP = {"awp_gamma": 5e-3, "awp_warmup": 0}
_TRADES_AWP = {"awp_gamma": 5e-3, "awp_warmup": 9}
_METHODS.update(
    {
        "at-awp": _METHODS["at"].with_defaults(**_AT_AWP),
        "trades-awp": _METHODS["trades"].with_defaults(**_TRADES_AWP),
        "gairat-awp": _METHODS["gairat"].with_defaults(**_AT_AWP),
        "mail-at-awp": _METHODS["mail-at"].with_defaults(**_AT_AWP),
        "mail-trades-awp": _METHODS["mail-trades"].with_defaults(**_TRADES_AWP),
    }
)

# The official codes' objectives, where they differ from the papers' equations.
_OFFICIAL: Dict[str, Definition] = {
    "gair-trades": replace(
        _METHODS["gair-trades"].with_defaults(normalize="none"),
        forwards=("nat", "adv", "cw"),
        terms={CE_NAT: ONE, KL: W, KL_CW: ONE_MINUS_W},
    ),
    **{
        name: _METHODS[name].with_defaults(normalize="none", scale=3.0)
        for name in ("mail-at", "mail-trades", "mail-mart")
    },
    "trades": replace(_METHODS["trades"], forwards=("nat", "adv", "nat_kl")),
}
# The official AWP scripts: AT_AWP attacks in train mode; trades_AWP runs f(x_adv), then f(x) for the
# KL's target and f(x) for the CE (train_trades_cifar.py, train()). The weighted compositions take
# the weighted method's official variant with them.
_TRADES_AWP_FORWARDS = ("adv", "nat_kl", "nat")
_OFFICIAL.update(
    {
        "at-awp": replace(_METHODS["at-awp"], attack_mode="train"),
        "gairat-awp": replace(_METHODS["gairat-awp"], attack_mode="train"),
        "mail-at-awp": replace(_OFFICIAL["mail-at"].with_defaults(**_AT_AWP), attack_mode="train"),
        "trades-awp": replace(_METHODS["trades-awp"], forwards=_TRADES_AWP_FORWARDS),
        "mail-trades-awp": replace(
            _OFFICIAL["mail-trades"].with_defaults(**_TRADES_AWP), forwards=_TRADES_AWP_FORWARDS
        ),
    }
)

_VARIANTS = ("paper", "official")
# The PM the MAIL methods read (``margin=``): the function and the forwards it reads.
_MARGINS: Mapping[str, Tuple[Callable[..., Tensor], Tuple[str, ...]]] = {
    "adv": (margin_of, ("adv",)),
    "nat": (margin_of, ("nat",)),
    "dif": (margin_dif_of, ("nat", "adv")),
}


def names() -> Tuple[str, ...]:
    """The methods :func:`get` knows.

    Example:
        >>> names()[:4]
        ('at', 'trades', 'mart', 'fat')
    """
    return tuple(_METHODS)


def get(name: str, model: nn.Module, *, variant: str = "paper", **overrides: Any) -> Method:
    """A method of either paper by name, bound to ``model``, with the papers' defaults.

    Args:
        name: one of :func:`names`, in any case (``"MAIL-AT"`` is ``"mail-at"``); a near miss is
            answered with "did you mean …?".
        model: the classifier being trained, returning logits ``(N, C)``.
        variant: ``"paper"`` (the papers' equations) or ``"official"`` (the official code's objective,
            forwards or attack mode, for ``gair-trades``, ``trades``, the MAIL and the AWP methods;
            see the module docstring).
        **overrides: any hyper-parameter of the method (see :class:`Method`), and two keywords
            that are not hyper-parameters (not in :attr:`Method.params`; in ``**overrides`` so
            that a dict of options splats into :func:`get` under a type checker):

            - ``base_loss``: the per-example classification loss ℓ(f(·), y), ``(logits, y) ->
              (N,)`` (e.g. ``nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1)``), in
              place of CE wherever the training objective has CE: the terms CE(x) and CE(x_adv),
              and the CE part of MART's BCE, which stays ℓ + (BCE − CE). ``None`` (default):
              CE. It changes neither the attack (pass ``attack_loss=`` for that), nor the KL
              terms, nor the signal (κ, PM) of the weight.
            - ``generator``: the :class:`torch.Generator` of the attacks' random starts (see
              :class:`~instance_reweight.GeometryAwareAttack`); ``None`` (default): torch's global
              generator.

    Returns:
        A :class:`Method` at epoch 0.

    Raises:
        TypeError: on a name or variant that is not a string, or a hyper-parameter of the wrong type.
        ValueError: on an unknown name, variant or hyper-parameter (the message lists the valid ones),
            or an invalid value.

    Example:
        >>> method = get("gairat", nn.Linear(4, 3), burn_in_epochs=30, lam=-1.0)
        >>> method.params["burn_in_epochs"], method.params["eps"] == 8 / 255
        (30, True)
    """
    name = check_name(name, "name", names())
    check_choice(variant, "variant", _VARIANTS)
    if variant == "official" and name not in _OFFICIAL:
        raise ValueError(
            f"Expected variant='paper' for {name!r}, got 'official': only {', '.join(map(repr, _OFFICIAL))} "
            "have an official-code variant."
        )
    definition = _OFFICIAL[name] if variant == "official" else _METHODS[name]
    options = dict(overrides)
    base_loss, generator = options.pop("base_loss", None), options.pop("generator", None)
    return Method(name, model, definition, options, base_loss=base_loss, generator=generator)


class Method:
    r"""One adversarial-training method bound to a model: the interpreter of its :class:`Definition`.

    Build it with :func:`get`. For every batch, :meth:`loss` runs the attack (model in eval mode,
    see :class:`~instance_reweight.GeometryAwareAttack`; in train mode for a definition whose
    ``attack_mode`` is ``"train"``), then the definition's forwards as separate
    calls in the model's own mode (call ``model.train()`` as usual: BatchNorm then sees each batch
    separately, as in the official codes), and returns the scalar to backpropagate: the mean of the
    terms that carry 1 plus the mean of w times those that carry w (a term carrying 1 − w counts in
    both, with −w). The weight is computed without gradient from κ of the attack or from PM of the
    forward that gives the loss (detached), by :attr:`weighting`. A natural forward that only the
    weight reads (``margin="nat"`` or ``"dif"`` with the AT objective) runs without gradient. Every
    value check of the step (inputs, labels, logits, gradients of the attack; the logits PM is read
    from) is read with one host synchronisation.

    Hyper-parameters (every one a keyword of :func:`get`; those a method does not use are rejected):

    - ``eps``, ``step_size`` (the papers' step size α; torchattacks calls it ``alpha``), ``steps``
      (K, also the GAIRAT schemes' K: one number for both), ``attack_loss``
      (``"ce"``, ``"kl"``, ``"cw"`` or a callable), ``random_start``, ``clip``: the attack.
    - ``tau``: FAT's early-stop budget, an int or a callable ``epoch -> τ`` (``fat``, ``gair-fat``).
    - ``beta``: the TRADES / MART trade-off.
    - ``scheme``, ``normalize``, ``scale``, ``burn_in_epochs`` and the scheme's parameters
      (``lam`` — a number or a callable ``epoch -> λ`` —, ``slope``, ``bias``, ``alpha``): the weight.
    - ``margin``: which PM the MAIL methods read, ``"adv"`` (PM_adv, MAIL's default), ``"nat"`` or
      ``"dif"`` (these two run the natural forward in the AT objective too).
    - ``norm``: the attack's threat model, ``"linf"`` or ``"l2"`` (set ``eps`` and ``step_size`` with it).
    - ``eps_ramp_epochs``: ε and the step grow linearly from 0 to ``eps`` and ``step_size`` over this
      many epochs (:class:`~instance_reweight.EpsilonScheduler`; 0, the default, for none). Call
      :meth:`set_epoch` with a fractional epoch before every batch for a per-batch ramp.
    - ``awp_gamma``, ``awp_warmup``: AWP's γ and the 0-based epoch from which it applies (AWP methods).

    An AWP method must change the weights inside its step, so a loop drives it through :meth:`step`
    or :meth:`training_step` (which every method has); its :meth:`loss` raises once AWP applies.
    The instance weights are computed once per batch, from κ or from PM of the proxy's forward at the
    unperturbed weights (the forward MAIL reads PM from), and weight both the objective the
    perturbation increases and the one the step decreases.

    Args:
        name: the method's name.
        model: the classifier being trained.
        definition: its :class:`Definition`.
        overrides: hyper-parameters that replace the definition's defaults.
        base_loss (keyword): the per-example loss ℓ in place of CE (see :func:`get`); ``None``: CE.
        generator: the generator of the attacks' random starts; ``None``: torch's global one.

    Attributes:
        name: the method's name.
        definition: its :class:`Definition`.
        params: every hyper-parameter, defaults and overrides merged.
        base_loss (keyword): the per-example loss ℓ in place of CE, or ``None`` (CE).
        attack: the :class:`~instance_reweight.GeometryAwareAttack`.
        weighting: the :class:`~instance_reweight.InstanceWeighting` of the weighted terms, or
            ``None`` for a method without reweighting.
        weighted_terms: the :class:`Term` s that carry the weight (empty without reweighting).
        burn_in: its :class:`~instance_reweight.BurnInScheduler`, or ``None``.
        eps_scheduler: its :class:`~instance_reweight.EpsilonScheduler` (``eps_ramp_epochs`` > 0),
            or ``None``.
        awp: the :class:`~instance_reweight.AdversarialWeightPerturbation` of an AWP method, or
            ``None``.
        last_signal: the last batch's ``{"kappa": κ}`` or ``{"margin": PM}`` (detached), ready for
            ``sampler.update(indices, **method.last_signal)``; baselines log κ, which the attack gives.
        last_weights: the last batch's weights (all 1 during burn-in), ``None`` without reweighting.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> method = get("mail-trades", model, burn_in_epochs=1)
        >>> method.set_epoch(1)
        >>> loss = method.loss(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))
        >>> loss.backward()
        >>> sorted(method.stats())
        ['margin_mean', 'margin_median', 'weight_max', 'weight_mean', 'weight_min']
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        definition: Definition,
        overrides: Mapping[str, Any],
        *,
        base_loss: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        params, scheme = _hyper_parameters(name, definition, overrides)
        self.base_loss = None if base_loss is None else check_base_loss(base_loss)
        self.name = name
        self.model = model
        self.definition = definition
        self.params: Mapping[str, Any] = params
        self._beta = check_number(params.get("beta", 0.0), "beta", minimum=0.0)
        margin = check_choice(params.get("margin", "adv"), "margin", tuple(_MARGINS))
        self._pm, self._pm_reads = _MARGINS[margin]
        # A forward that only the weight reads (f(x) for PM_nat in the AT objective) runs first,
        # without gradient.
        self._weight_only = frozenset(self._pm_reads) - set(definition.forwards)
        self._forwards = tuple(f for f in _FORWARDS if f in self._weight_only) + definition.forwards
        self.attack, self._cw_attack = _attacks(
            model, definition, params, check_generator(generator)
        )
        self.weighted_terms = definition.weighted
        self.weighting, self.burn_in = _weighting(name, definition, scheme, params, overrides)
        self.awp, self._awp_warmup = _awp(model, params)
        ramp = check_number(params["eps_ramp_epochs"], "eps_ramp_epochs", minimum=0.0)
        self.eps_scheduler = EpsilonScheduler(self.attack, ramp_epochs=ramp) if ramp > 0 else None
        self.epoch = 0
        self.progress = 0.0
        self.last_signal: Dict[str, Tensor] = {}
        self.last_weights: Optional[Tensor] = None
        self.set_epoch(0)

    @property
    def perturbing_weights(self) -> bool:
        """Whether the current epoch applies AWP (False during its warm-up and without AWP)."""
        return self.awp is not None and self.epoch >= self._awp_warmup

    @property
    def reweighting(self) -> bool:
        """Whether the current epoch reweights (False during burn-in and for the baselines)."""
        return self.burn_in is not None and self.burn_in.active

    def set_epoch(self, epoch: float) -> None:
        """Move every schedule to ``epoch`` (0-based): at the start of every epoch, or before every
        batch with the fractional epoch ``epoch + i / len(loader)`` for a per-batch ε ramp.

        Burn-in, λ, τ and AWP's warm-up read the whole epoch ⌊epoch⌋ (:attr:`epoch`); the ε ramp
        reads the fractional one (:attr:`progress`).

        Example:
            >>> method = get("at", nn.Linear(4, 3), eps=0.3, step_size=0.04, eps_ramp_epochs=2)
            >>> method.set_epoch(0.5)
            >>> method.epoch, round(method.attack.eps, 3), round(method.attack.step_size, 3)
            (0, 0.075, 0.01)
        """
        progress = check_number(epoch, "epoch", minimum=0.0, hint=" (0-based, may be fractional)")
        whole = math.floor(progress)
        if self.burn_in is not None:
            self.burn_in.step(whole)
        tau = self.params.get("tau")
        if callable(tau):
            self.attack.tau = tau(whole)
        if self.eps_scheduler is not None:
            self.eps_scheduler.step(progress)
            if self._cw_attack is not None:  # x_cw under the same, ramped, threat
                self._cw_attack.eps = self.attack.eps
                self._cw_attack.step_size = self.attack.step_size
        self.epoch, self.progress = whole, progress

    def state_dict(self) -> Dict[str, Any]:
        """The method's place in time, ``{"epoch": progress}``: every schedule (burn-in, λ, τ, AWP's
        warm-up, the ε ramp) is a function of it and of :attr:`params`. Plain values only."""
        return {"epoch": self.progress}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the epoch of :meth:`state_dict` and apply every schedule at it."""
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"epoch"}:
            raise ValueError(
                "Expected the dict of Method.state_dict(), {'epoch': <0-based epoch>}, got "
                f"{state_dict!r}."
            )
        self.set_epoch(state_dict["epoch"])

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Attack the batch and return the method's training loss (a scalar to backpropagate).

        Args:
            x: inputs ``(N, *)`` inside the attack's ``clip``.
            y: class indices ``(N,)``.

        Returns:
            The scalar loss, at least float32.

        Raises:
            ValueError, TypeError: as :class:`~instance_reweight.GeometryAwareAttack` does, and for
                non-finite logits where PM is read; all value checks cost one host synchronisation.
            RuntimeError: for an AWP method once AWP applies: drive it with :meth:`step` or
                :meth:`training_step`, which undo the weight perturbation after the optimiser step.
        """
        if self.perturbing_weights:
            raise RuntimeError(
                f"Expected `method.step(x, y, optimizer)` or `with method.training_step(x, y) as loss:` "
                f"for {self.name!r} from epoch {self._awp_warmup}, got `method.loss(x, y)`: AWP perturbs "
                "the weights for the optimiser step and must undo the perturbation after it."
            )
        with self.training_step(x, y) as loss:
            return loss

    @contextlib.contextmanager
    def training_step(self, x: Tensor, y: Tensor) -> Iterator[Tensor]:
        """Attack the batch and yield the training loss; backpropagate and step inside the block.

        For an AWP method (from its warm-up on) the weights are perturbed for the body of the block
        and restored after it, keeping the optimiser's update::

            with method.training_step(x, y) as loss:
                optimizer.zero_grad()
                loss.backward()          # or scaler.scale(loss).backward(), clipping, …
                optimizer.step()

        Every value check of the step is read with one host synchronisation, before the body runs.

        Args: as :meth:`loss`.

        Yields:
            The scalar loss, at least float32.

        Raises:
            ValueError, TypeError: as :meth:`loss`.
        """
        checks = DeferredChecks()
        x_adv, kappa = self.attack._attack(x, y, checks)
        if not self.perturbing_weights or self.awp is None:
            loss = self._objective(self.model, x, y, x_adv, kappa, checks)
            checks.verify()
            yield loss
            return

        def increase(proxy: nn.Module) -> Tensor:
            return self._objective(proxy, x, y, x_adv, kappa, checks)

        with self.awp.perturbed(increase):
            # The same objective at the perturbed weights, with the weights the proxy computed.
            loss = self._objective(self.model, x, y, x_adv, kappa, checks, self.last_weights)
            checks.verify()
            yield loss

    def step(self, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer) -> Tensor:
        """One training step: ``zero_grad``, the loss, ``backward`` and ``optimizer.step()``.

        The plain form of :meth:`training_step`; use that for gradient scaling or clipping.

        Args:
            x: inputs ``(N, *)`` inside the attack's ``clip``.
            y: class indices ``(N,)``.
            optimizer: the optimiser of the model's parameters.

        Returns:
            The loss, detached.

        Example:
            >>> _ = torch.manual_seed(0)
            >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
            >>> method = get("at-awp", model, steps=3)
            >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            >>> loss = method.step(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]), optimizer)
            >>> loss.requires_grad, method.perturbing_weights
            (False, True)
        """
        if not (
            callable(getattr(optimizer, "zero_grad", None))
            and callable(getattr(optimizer, "step", None))
        ):
            raise TypeError(
                f"Expected `optimizer` to be an optimiser of the model's parameters (with `zero_grad` "
                f"and `step`), got {type(optimizer).__name__}; pass e.g. "
                "torch.optim.SGD(model.parameters(), lr=0.1), or step yourself inside "
                "`with method.training_step(x, y) as loss:`."
            )
        if not torch.is_grad_enabled():
            raise RuntimeError(
                "Expected `method.step` with gradients enabled, got it inside torch.no_grad() or "
                "torch.inference_mode(); a training step backpropagates: call it outside that block."
            )
        with self.training_step(x, y) as loss:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return loss.detach()

    def stats(self) -> Dict[str, float]:
        """The last batch's signal mean and median and weight min/mean/max, as floats.

        One host synchronisation: call it when logging, not every step. Empty before the first batch.
        """
        values: Dict[str, Tensor] = {}
        for key, signal in self.last_signal.items():
            values[f"{key}_mean"] = signal.float().mean()
            values[f"{key}_median"] = signal.float().median()
        if self.last_weights is not None:
            w = self.last_weights
            values.update(weight_min=w.min(), weight_mean=w.mean(), weight_max=w.max())
        if not values:
            return {}
        return dict(zip(values, torch.stack(list(values.values())).tolist()))

    def __repr__(self) -> str:
        params = ", ".join(
            f"{k}={getattr(v, '__name__', v)!r}" for k, v in sorted(self.params.items())
        )
        return f"{type(self).__name__}({self.name!r}, epoch={self.epoch}, {params})"

    # --- The interpreter of the definition -------------------------------------------------------------

    def _objective(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        x_adv: Tensor,
        kappa: Tensor,
        checks: DeferredChecks,
        weights: Optional[Tensor] = None,
    ) -> Tensor:
        """The training loss of ``model`` on the attacked batch; ``weights`` ``None``: computed from
        the signal (and kept in :attr:`last_signal`, :attr:`last_weights`), else used as given."""
        logits = self._run_forwards(model, x, y, x_adv, checks)
        # The attack checks the labels with the step's one synchronisation; until then clamped
        # labels keep every term defined (no device-side assert on a GPU).
        y = y.long().clamp(0, logits["adv"].shape[1] - 1)
        terms = self._terms(_Batch(logits, y, self._beta, self.base_loss))
        if weights is None:
            self.last_signal = self._signal(kappa, logits, y, checks)
            weights = self._weights(x.shape[0], logits["adv"].device, checks)
        return _reduce(terms, self.definition.terms, weights)

    def _run_forwards(
        self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, checks: DeferredChecks
    ) -> Dict[str, Tensor]:
        """The logits of each forward of the definition, by name, in its order."""
        logits: Dict[str, Tensor] = {}
        for name in self._forwards:
            if name == "cw" and not self.reweighting:
                continue  # x_cw is read by the (1 − w) term alone, which vanishes while w = 1
            inputs = self._input(name, x, y, x_adv, checks)
            with torch.no_grad() if name in self._weight_only else contextlib.nullcontext():
                logits[name] = check_logits(model(inputs), x.shape[0], "model output")
        return logits

    def _input(
        self, name: str, x: Tensor, y: Tensor, x_adv: Tensor, checks: DeferredChecks
    ) -> Tensor:
        """What forward ``name`` reads: x, x_adv, or x_cw, attacked here."""
        if name == "cw" and self._cw_attack is not None:
            return self._cw_attack._attack(x, y, checks).adv
        return x_adv if name == "adv" else x

    def _terms(self, batch: _Batch) -> Dict[Term, Tensor]:
        """The per-example terms ``(N,)``, each with its coefficient, in the definition's order."""
        terms: Dict[Term, Tensor] = {}
        for term, factor in self.definition.terms.items():
            if factor is Factor.ONE_MINUS_W and not self.reweighting:
                continue  # (1 − w)·ℓ is 0 while w = 1 (burn-in)
            terms[term] = _TERMS[term](batch, terms)
        return terms

    def _signal(
        self, kappa: Tensor, logits: Mapping[str, Tensor], y: Tensor, checks: DeferredChecks
    ) -> Dict[str, Tensor]:
        """``{"kappa": κ}``, or ``{"margin": PM}`` for a method weighted by PM."""
        if self.definition.signal != "margin":
            return {"kappa": kappa}
        read = [logits[name] for name in self._pm_reads]
        for z in read:
            checks.add_finite(z, "logits (PM is read from them)")
        return {"margin": self._pm(*read, y)}

    def _weights(self, n: int, device: torch.device, checks: DeferredChecks) -> Optional[Tensor]:
        """The weights of :attr:`last_signal` (also kept in :attr:`last_weights`); ``None`` for a
        method without reweighting."""
        if self.weighting is None:
            return None
        # κ comes from the attack and PM from logits checked above: no check of their own.
        self.last_weights = self.weighting._weights(
            **self.last_signal, n=n, device=device, checks=checks, trusted=True
        )
        return self.last_weights


def _reduce(
    terms: Mapping[Term, Tensor], factors: Mapping[Term, Factor], weights: Optional[Tensor]
) -> Tensor:
    """mean Σ ℓ over the terms carrying 1 + mean w·Σ ℓ over those carrying w, in the terms' order;
    (1 − w)·ℓ enters both sums, as ℓ + w·(−ℓ)."""
    plain = [t for k, t in terms.items() if factors[k] is not Factor.W]
    weighted = [
        t if factors[k] is Factor.W else -t
        for k, t in terms.items()
        if factors[k] is not Factor.ONE
    ]
    parts = [torch.stack(plain).sum(0).mean()] if plain else []
    if weights is not None:  # a definition has a term carrying w exactly when it has a signal
        parts.append(weighted_mean(torch.stack(weighted).sum(0), weights))
    return sum(parts[1:], parts[0])


# Other codes' names for a hyper-parameter, answered with ours: torchattacks' alpha (the step) and
# the official GAIRAT and MAIL scripts' epsilon.
_ALIASES = {"alpha": "step_size", "epsilon": "eps"}


def _hyper_parameters(
    name: str, definition: Definition, overrides: Mapping[str, Any]
) -> Tuple[Dict[str, Any], Optional[Scheme]]:
    """The definition's defaults with the overrides, each known to it or its scheme, and the scheme."""
    params = {**definition.attack, **definition.defaults, **overrides}
    scheme = resolve_scheme(params["scheme"]) if definition.signal else None
    scheme_keys = set(scheme.defaults) - {"steps"} if scheme else set()
    valid = set(definition.attack) | set(definition.defaults) | scheme_keys
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(
            f"Expected hyper-parameters of {name!r} among ({', '.join(sorted(valid))}), got "
            f"{', '.join(unknown)}." + did_you_mean(unknown, valid, _ALIASES)
        )
    return params, scheme


def _attacks(
    model: nn.Module,
    definition: Definition,
    params: Mapping[str, Any],
    generator: Optional[torch.Generator],
) -> Tuple[GeometryAwareAttack, Optional[GeometryAwareAttack]]:
    """The method's attack, and the CW attack of x_cw where the definition has that forward."""
    tau = params.get("tau")
    threat = {k: params[k] for k in ("eps", "step_size", "steps", "random_start", "clip", "norm")}
    threat["generator"] = generator
    attack = (_TrainModeAttack if definition.attack_mode == "train" else GeometryAwareAttack)(
        model,
        loss=params["attack_loss"],
        tau=None if tau is None or callable(tau) else tau,
        **threat,
    )
    cw = GeometryAwareAttack(model, loss="cw", **threat) if "cw" in definition.forwards else None
    return attack, cw


class _TrainModeAttack(GeometryAwareAttack):
    """The attack with the model in train mode, as the official AT_AWP scripts attack
    (AT_AWP/train_cifar10.py: ``model.train()`` after each batch's attack, so the next batch's
    ``attack_pgd`` runs in train mode): every forward normalises with the batch's statistics and
    updates BatchNorm's running statistics, and a last forward at x_adv does too (``attack_pgd``'s
    forward that picks the restart with the largest loss). Parameters stay frozen."""

    def _run(self, x: Tensor, y: Tensor, checks: DeferredChecks) -> AttackOutput:
        self.model.train()  # inside frozen_for_attack, which restores every module's mode
        output = super()._run(x, y, checks)
        with torch.no_grad():
            self.model(output.adv)
        return output


def _weighting(
    name: str,
    definition: Definition,
    scheme: Optional[Scheme],
    params: Mapping[str, Any],
    overrides: Mapping[str, Any],
) -> Tuple[Optional[InstanceWeighting], Optional[BurnInScheduler]]:
    """The weighting of a method with a signal, and its burn-in; ``(None, None)`` without."""
    if scheme is None:
        return None, None
    if scheme.signal not in (None, "any", definition.signal):  # "any": a user's callable
        valid = ", ".join(sorted(k for k, s in SCHEMES.items() if s.signal == definition.signal))
        raise ValueError(
            f"Expected a scheme reading `{definition.signal}` for {name!r} ({valid}, 'uniform' or a "
            f"callable), got {params['scheme']!r}."
        )
    if Factor.ONE_MINUS_W in definition.terms.values() and params["normalize"] != "none":
        raise ValueError(
            f"Expected normalize='none' for {name!r}, whose objective weights a term by 1 − w "
            f"(w in [0, 1]), got {params['normalize']!r}."
        )
    scheme_params = {
        k: params[k] for k in scheme.defaults if k in params and k not in ("steps", "lam")
    }
    if "steps" in scheme.defaults:
        scheme_params["steps"] = params["steps"]  # the scheme's K is the attack's K
    weighting = InstanceWeighting(
        params["scheme"], normalize=params["normalize"], scale=params["scale"], **scheme_params
    )
    lam = params.get("lam") if "lam" in scheme.defaults or "lam" in overrides else None
    return weighting, BurnInScheduler(weighting, burn_in_epochs=params["burn_in_epochs"], lam=lam)


def _awp(
    model: nn.Module, params: Mapping[str, Any]
) -> Tuple[Optional[AdversarialWeightPerturbation], int]:
    """AWP and its warm-up epochs for a method with AWP's hyper-parameters; ``(None, 0)`` without."""
    if "awp_gamma" not in params:
        return None, 0
    gamma = check_number(params["awp_gamma"], "awp_gamma", minimum=0.0, maximum=1.0, strict=True)
    warmup = check_int(params["awp_warmup"], "awp_warmup", 0, " (0-based epoch)")
    return AdversarialWeightPerturbation(model, gamma=gamma), warmup
