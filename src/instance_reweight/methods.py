r"""Every method of both papers by name: the attack, the forwards and the loss, with the papers' defaults.

:func:`get` binds a method to a model; a training loop calls :meth:`Method.set_epoch` once per epoch
and :meth:`Method.step` (or the ``with`` block :meth:`Method.training_step`) for every batch, so
switching method is changing a string. Methods without AWP also give :meth:`Method.loss` to
backpropagate yourself.
Which term carries the instance weight :math:`w` (normalised to mean 1 over the batch unless said):

==============  ===========================  ==============================================================
name            attack (start, loss)         training loss
==============  ===========================  ==============================================================
``at``          uniform, CE                  mean CE(f(x_adv), y)
``trades``      normal, KL                   mean CE(f(x), y) + β·mean KL(p(x_adv) ‖ p(x)), β = 6
``mart``        normal, CE                   mean BCE(f(x_adv), y) + β·mean KL·(1 − p_y(x)), β = 5
``fat``         uniform, CE, early stop τ    mean CE(f(x_adv), y), τ = 0 → 3 → 6 at epochs 40, 70
``gairat``      uniform, CE, κ               mean w·CE(f(x_adv), y)
``gair-fat``    as ``fat``, κ                mean w·CE(f(x_adv), y)
``gair-trades`` normal, KL, κ                mean w·CE(f(x), y) + β·mean KL
``gair-mart``   normal, CE, κ                mean [w·CE + (BCE − CE)](f(x_adv)) + β·mean KL·(1 − p_y(x))
``mail-at``     normal, CE, PM_adv           mean w·CE(f(x_adv), y)
``mail-trades`` normal, KL, PM_adv           mean CE(f(x), y) + β·mean w·KL
``mail-mart``   normal, CE, PM_adv           mean w·BCE(f(x_adv), y) + β·mean KL·(1 − p_y(x))
==============  ===========================  ==============================================================

The AWP methods (Wu, Xia and Wang 2020) take each optimiser step at weights perturbed, by
:class:`~instance_reweight.AdversarialWeightPerturbation`, to increase the same objective — with the
same instance weights — that the step then decreases: ``at-awp`` and ``trades-awp`` (γ = 5e-3,
warm-up 0 and 10 epochs), ``gairat-awp`` and ``mail-at-awp`` (as ``gairat`` and ``mail-at``, AWP as
``at-awp``) and ``mail-trades-awp`` (as ``mail-trades``, AWP as ``trades-awp``).

``variant="official"`` gives the official codes' objectives where they differ from the papers:
``gair-trades`` becomes the GAIR-RST code's mean CE(f(x), y) + β·mean [w·KL(x_kl) + (1 − w)·KL(x_cw)]
with unnormalised w (GAIRAT Eq. 13; x_cw from a CW attack), the MAIL methods use 3·ω, unnormalised,
and ``trades`` runs the official TRADES code's three train-mode forwards, f(x), f(x_adv) and f(x) again
for the KL (the same loss and gradient; BatchNorm's running statistics see the natural batch twice).
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass, field, replace
from typing import Any, Dict, FrozenSet, Iterator, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import (
    DeferredChecks,
    at_least_float32,
    check_choice,
    check_int,
    check_logits,
    check_number,
)
from .attack import GeometryAwareAttack
from .awp import AdversarialWeightPerturbation
from .losses import boosted_ce, misclassification_aware_kl, trades_kl
from .margin import margin_dif_of, margin_of
from .scheduler import BurnInScheduler
from .schemes import SCHEMES, resolve_scheme
from .weighting import InstanceWeighting, weighted_mean

__all__ = ["Method", "Objective", "Term", "fat_tau", "get", "names"]


def fat_tau(epoch: int) -> int:
    """FAT's τ as GAIRAT Table 1 runs FAT and GAIR-FAT: 0, then 3 from epoch 40 and 6 from epoch 70.

    Example:
        >>> [fat_tau(e) for e in (0, 39, 40, 69, 70)]
        [0, 0, 3, 3, 6]
    """
    return 0 if epoch < 40 else 3 if epoch < 70 else 6


class Objective(enum.Enum):
    """The family of a method's training loss (SPEC §3)."""

    AT = "mean CE(f(x_adv), y)"
    TRADES = "CE(f(x), y) + β·KL(p(x_adv) ‖ p(x))"
    MART = "BCE(f(x_adv), y) + β·KL·(1 − p_y(x))"
    RST = "CE(f(x), y) + β·[w·KL(x_kl) + (1 − w)·KL(x_cw)] (the official GAIR-TRADES code)"


class Term(enum.Enum):
    """A per-example term of an objective, with its coefficient; the weight lands on some of them."""

    CE_NAT = "CE(f(x), y)"
    CE_ADV = "CE(f(x_adv), y)"
    BOOST = "BCE(f(x_adv), y) − CE(f(x_adv), y), MART's boost"
    KL = "β·KL(p(x_adv) ‖ p(x))"
    MKL = "β·KL(p(x_adv) ‖ p(x))·(1 − p_y(x)), MART's"
    KL_CW = "β·KL(p(x_cw) ‖ p(x)), GAIR-RST's"


@dataclass(frozen=True)
class _Spec:
    """A method: which loss terms it sums, which of them carry the weight, what the weight reads."""

    objective: Objective
    weighted: FrozenSet[Term] = frozenset()
    signal: Optional[str] = None
    """``"kappa"`` (GAIRAT), ``"margin"`` (MAIL) or ``None`` (no reweighting)."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    kl_forward: bool = False
    """TRADES' KL reads the natural logits of a second train-mode forward, run after the adversarial
    one: the official TRADES code's three forwards (same loss and gradient, BatchNorm statistics
    updated three times)."""


# Threat model of both papers (SPEC §4); TRADES, MART and all MAIL code start at x + 0.001·N(0, I).
_PGD = {
    "eps": 8 / 255,
    "step_size": 2 / 255,
    "steps": 10,
    "attack_loss": "ce",
    "random_start": "uniform",
    "clip": (0.0, 1.0),
    "norm": "linf",
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

# AWP's γ (relative size of the weight perturbation) and warm-up epochs: AT-AWP and TRADES-AWP.
_AT_AWP = {"awp_gamma": 5e-3, "awp_warmup": 0}
_TRADES_AWP = {"awp_gamma": 5e-3, "awp_warmup": 10}

_CE_ADV = frozenset({Term.CE_ADV})

_METHODS: Mapping[str, _Spec] = {
    "at": _Spec(Objective.AT, defaults=_PGD),
    "trades": _Spec(Objective.TRADES, defaults={**_KL, "beta": 6.0}),
    "mart": _Spec(Objective.MART, defaults={**_NORMAL, "beta": 5.0}),
    "fat": _Spec(Objective.AT, defaults={**_PGD, "tau": fat_tau}),
    # GAIRAT Table 1 (WRN-32-10); GAIR-TRADES Appendix C.9; GAIR-MART Appendix C.7 (from epoch 75).
    "gairat": _Spec(
        Objective.AT, _CE_ADV, "kappa", {**_PGD, **_GAIR, "burn_in_epochs": 60, "lam": 0.0}
    ),
    "gair-fat": _Spec(
        Objective.AT,
        _CE_ADV,
        "kappa",
        {**_PGD, **_GAIR, "tau": fat_tau, "burn_in_epochs": 60, "lam": 0.0},
    ),
    "gair-trades": _Spec(
        Objective.TRADES,
        frozenset({Term.CE_NAT}),
        "kappa",
        {**_KL, **_GAIR, "beta": 6.0, "burn_in_epochs": 75, "lam": -1.0},
    ),
    "gair-mart": _Spec(
        Objective.MART,
        _CE_ADV,
        "kappa",
        {**_NORMAL, **_GAIR, "beta": 5.0, "burn_in_epochs": 75, "lam": -1.0},
    ),
    # MAIL Section 4.1: γ, β of the weight; β of TRADES and MART; the initial 74 epochs burn in.
    "mail-at": _Spec(
        Objective.AT, _CE_ADV, "margin", {**_NORMAL, **_MAIL, "slope": 10.0, "bias": -0.5}
    ),
    "mail-trades": _Spec(
        Objective.TRADES,
        frozenset({Term.KL}),
        "margin",
        {**_KL, **_MAIL, "beta": 5.0, "slope": 2.0, "bias": 0.0},
    ),
    "mail-mart": _Spec(
        Objective.MART,
        frozenset({Term.CE_ADV, Term.BOOST}),  # the whole BCE
        "margin",
        {**_NORMAL, **_MAIL, "beta": 6.0, "slope": 2.0, "bias": 0.0},
    ),
}
# AWP composes with any method: the same spec, AWP's γ and warm-up added.
_METHODS = {
    **_METHODS,
    **{
        f"{name}-awp": replace(_METHODS[name], defaults={**_METHODS[name].defaults, **awp})
        for name, awp in (
            ("at", _AT_AWP),
            ("trades", _TRADES_AWP),
            ("gairat", _AT_AWP),
            ("mail-at", _AT_AWP),
            ("mail-trades", _TRADES_AWP),
        )
    },
}


def _official(
    spec: _Spec,
    objective: Optional[Objective] = None,
    weighted: FrozenSet[Term] = frozenset(),
    **defaults: Any,
) -> _Spec:
    return replace(
        spec,
        objective=objective or spec.objective,
        weighted=weighted or spec.weighted,
        defaults={**spec.defaults, **defaults},
    )


# The official codes' objectives, where they differ from the papers' equations.
_OFFICIAL: Mapping[str, _Spec] = {
    "gair-trades": _official(
        _METHODS["gair-trades"], Objective.RST, frozenset({Term.KL}), normalize="none"
    ),
    **{
        name: _official(_METHODS[name], normalize="none", scale=3.0)
        for name in ("mail-at", "mail-trades", "mail-mart")
    },
    "trades": replace(_METHODS["trades"], kl_forward=True),
}

_VARIANTS = ("paper", "official")
_MARGINS = ("adv", "nat", "dif")


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
        name: one of :func:`names`.
        model: the classifier being trained, returning logits ``(N, C)``.
        variant: ``"paper"`` (the papers' equations) or ``"official"`` (the official code's objective,
            for ``gair-trades`` and the MAIL methods; see the module docstring).
        **overrides: any hyper-parameter of the method (see :class:`Method`).

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
    check_choice(name, "name", names())
    check_choice(variant, "variant", _VARIANTS)
    if variant == "official" and name not in _OFFICIAL:
        raise ValueError(
            f"Expected variant='paper' for {name!r}, got 'official': only {', '.join(map(repr, _OFFICIAL))} "
            "have an official-code variant."
        )
    return Method(
        name, model, _OFFICIAL[name] if variant == "official" else _METHODS[name], overrides
    )


class Method:
    r"""One adversarial-training method bound to a model: attack, forwards, loss, schedules.

    Build it with :func:`get`. For every batch, :meth:`loss` runs the attack (model in eval mode,
    see :class:`~instance_reweight.GeometryAwareAttack`), then the natural forward (when the loss or
    the weight needs it) and the adversarial forward as separate calls in the model's own mode (call
    ``model.train()`` as usual: BatchNorm then sees each batch separately, as in the official codes),
    and returns the scalar to backpropagate. The weight is computed without gradient from κ of the
    attack or from PM of the forward that gives the loss (detached), by :attr:`weighting` on the
    terms the method names (:class:`Term`). Every value check of the step (inputs, labels, logits,
    gradients of the attack; the logits PM is read from) is read with one host synchronisation.

    Hyper-parameters (every one a keyword of :func:`get`; those a method does not use are rejected):

    - ``eps``, ``step_size``, ``steps`` (K, also the GAIRAT schemes' K), ``attack_loss``
      (``"ce"``, ``"kl"``, ``"cw"`` or a callable), ``random_start``, ``clip``: the attack.
    - ``tau``: FAT's early-stop budget, an int or a callable ``epoch -> τ`` (``fat``, ``gair-fat``).
    - ``beta``: the TRADES / MART trade-off.
    - ``scheme``, ``normalize``, ``scale``, ``burn_in_epochs`` and the scheme's parameters
      (``lam`` — a number or a callable ``epoch -> λ`` —, ``slope``, ``bias``, ``alpha``): the weight.
    - ``margin``: which PM the MAIL methods read, ``"adv"`` (PM_adv, MAIL's default), ``"nat"`` or
      ``"dif"`` (these two run the natural forward in the AT objective too).
    - ``norm``: the attack's threat model, ``"linf"`` or ``"l2"`` (set ``eps`` and ``step_size`` with it).
    - ``awp_gamma``, ``awp_warmup``: AWP's γ and the 0-based epoch from which it applies (AWP methods).

    An AWP method must change the weights inside its step, so a loop drives it through :meth:`step`
    or :meth:`training_step` (which every method has); its :meth:`loss` raises once AWP applies.
    The instance weights are computed once per batch, from κ or from PM of the proxy's forward at the
    unperturbed weights (the forward MAIL reads PM from), and weight both the objective the
    perturbation increases and the one the step decreases.

    Attributes:
        name: the method's name.
        params: every hyper-parameter, defaults and overrides merged.
        attack: the :class:`~instance_reweight.GeometryAwareAttack`.
        weighting: the :class:`~instance_reweight.InstanceWeighting` of the weighted terms, or
            ``None`` for a method without reweighting.
        weighted_terms: the :class:`Term` s that carry the weight (empty without reweighting).
        burn_in: its :class:`~instance_reweight.BurnInScheduler`, or ``None``.
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
        self, name: str, model: nn.Module, spec: _Spec, overrides: Mapping[str, Any]
    ) -> None:
        params = {**spec.defaults, **overrides}
        scheme = resolve_scheme(params["scheme"]) if spec.signal else None
        scheme_keys = set(scheme.defaults) - {"steps"} if scheme else set()
        valid = set(spec.defaults) | scheme_keys
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(
                f"Expected hyper-parameters of {name!r} among ({', '.join(sorted(valid))}), got "
                f"{', '.join(unknown)}."
            )
        self.name = name
        self.model = model
        self.params: Mapping[str, Any] = params
        self._spec = spec
        self._beta = check_number(params.get("beta", 0.0), "beta", minimum=0.0)
        self._margin = check_choice(params.get("margin", "adv"), "margin", _MARGINS)
        tau = params.get("tau")
        attack = dict(
            eps=params["eps"],
            step_size=params["step_size"],
            steps=params["steps"],
            random_start=params["random_start"],
            clip=params["clip"],
            norm=params["norm"],
        )
        self.attack = GeometryAwareAttack(
            model,
            loss=params["attack_loss"],
            tau=None if tau is None or callable(tau) else tau,
            **attack,
        )
        self._cw_attack = (
            GeometryAwareAttack(model, loss="cw", **attack)
            if spec.objective is Objective.RST
            else None
        )
        self.weighted_terms = spec.weighted
        self.weighting: Optional[InstanceWeighting] = None
        self.burn_in: Optional[BurnInScheduler] = None
        if scheme is not None:
            if scheme.signal not in (None, "any", spec.signal):  # "any": a user's callable
                valid_schemes = ", ".join(
                    sorted(k for k, s in SCHEMES.items() if s.signal == spec.signal)
                )
                raise ValueError(
                    f"Expected a scheme reading `{spec.signal}` for {name!r} ({valid_schemes}, 'uniform' or a "
                    f"callable), got {params['scheme']!r}."
                )
            if spec.objective is Objective.RST and params["normalize"] != "none":
                raise ValueError(
                    f"Expected normalize='none' for the official GAIR-RST objective w·KL + (1 − w)·KL_cw "
                    f"(w in [0, 1]), got {params['normalize']!r}."
                )
            scheme_params = {k: params[k] for k in scheme_keys - {"lam"} if k in params}
            if "steps" in scheme.defaults:
                scheme_params["steps"] = params["steps"]
            self.weighting = InstanceWeighting(
                params["scheme"],
                normalize=params["normalize"],
                scale=params["scale"],
                **scheme_params,
            )
            lam = params.get("lam") if "lam" in scheme.defaults or "lam" in overrides else None
            self.burn_in = BurnInScheduler(
                self.weighting, burn_in_epochs=params["burn_in_epochs"], lam=lam
            )
        self.awp: Optional[AdversarialWeightPerturbation] = None
        if "awp_gamma" in params:
            gamma = check_number(params["awp_gamma"], "awp_gamma", minimum=0.0, strict=True)
            self.awp = AdversarialWeightPerturbation(model, gamma=gamma)
            self._awp_warmup = check_int(params["awp_warmup"], "awp_warmup", 0, " (0-based epoch)")
        self.epoch = 0
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

    def set_epoch(self, epoch: int) -> None:
        """Move the burn-in, λ and τ schedules to ``epoch`` (0-based); call at the start of every epoch."""
        check_int(epoch, "epoch", 0, " (0-based)")
        if self.burn_in is not None:
            self.burn_in.step(epoch)
        tau = self.params.get("tau")
        if callable(tau):
            self.attack.tau = tau(epoch)
        self.epoch = epoch

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

        Args:
            x: inputs ``(N, *)`` inside the attack's ``clip``.
            y: class indices ``(N,)``.

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
        with self.training_step(x, y) as loss:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return loss.detach()

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
        objective = self._spec.objective
        logits_nat = None
        if objective is not Objective.AT or self._margin != "adv":
            # In the AT objective the natural forward only feeds the weight: no graph for it.
            with torch.no_grad() if objective is Objective.AT else contextlib.nullcontext():
                logits_nat = check_logits(model(x), x.shape[0], "model output")
        logits_adv = check_logits(model(x_adv), x.shape[0], "model output")
        logits_kl = logits_nat
        if self._spec.kl_forward:  # the official TRADES order: f(x), f(x_adv), f(x) again
            logits_kl = check_logits(model(x), x.shape[0], "model output")
        # The attack checks the labels with the step's one synchronisation; until then clamped
        # labels keep every term defined (no device-side assert on a GPU).
        y = y.long().clamp(0, logits_adv.shape[1] - 1)
        terms = self._terms(model, x, y, logits_nat, logits_adv, logits_kl, checks)
        rest = [t for k, t in terms.items() if k not in self.weighted_terms]
        loss = torch.stack(rest).sum(0).mean() if rest else logits_adv.new_zeros(())
        if weights is None:
            self.last_signal = self._signal(kappa, logits_nat, logits_adv, y, checks)
        if self.weighting is not None:
            # In the terms' own order, not the frozenset's (hash-seeded): the same sum every run.
            weighted = torch.stack([t for k, t in terms.items() if k in self.weighted_terms]).sum(0)
            if weights is None:
                # κ comes from the attack and PM from logits checked above: no check of their own.
                weights = self.weighting._weights(
                    **self.last_signal,
                    n=x.shape[0],
                    device=weighted.device,
                    checks=checks,
                    trusted=True,
                )
                self.last_weights = weights
            loss = loss + weighted_mean(weighted, weights)
        return loss

    def _terms(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        logits_nat: Optional[Tensor],
        logits_adv: Tensor,
        logits_kl: Optional[Tensor],
        checks: DeferredChecks,
    ) -> Dict[Term, Tensor]:
        """The per-example loss terms ``(N,)`` of the objective, each with its coefficient;
        ``logits_kl``: the natural logits TRADES' KL reads (``logits_nat`` but for ``kl_forward``)."""

        def ce(logits: Tensor) -> Tensor:
            return F.cross_entropy(at_least_float32(logits), y, reduction="none")

        objective = self._spec.objective
        if objective is Objective.AT or logits_nat is None:
            return {Term.CE_ADV: ce(logits_adv)}
        if objective is Objective.MART:
            ce_adv = ce(logits_adv)
            return {
                Term.CE_ADV: ce_adv,
                Term.BOOST: boosted_ce(logits_adv, y) - ce_adv,
                Term.MKL: self._beta * misclassification_aware_kl(logits_adv, logits_nat, y),
            }
        terms = {
            Term.CE_NAT: ce(logits_nat),
            Term.KL: self._beta
            * trades_kl(logits_adv, logits_nat if logits_kl is None else logits_kl),
        }
        if objective is Objective.RST and self._cw_attack is not None and self.reweighting:
            # w·KL + (1 − w)·KL_cw = w·(KL − KL_cw) + KL_cw; during burn-in w = 1 and x_cw is not needed.
            x_cw = self._cw_attack._attack(x, y, checks).adv
            kl_cw = self._beta * trades_kl(model(x_cw), logits_nat)
            terms.update({Term.KL: terms[Term.KL] - kl_cw, Term.KL_CW: kl_cw})
        return terms

    def _signal(
        self,
        kappa: Tensor,
        logits_nat: Optional[Tensor],
        logits_adv: Tensor,
        y: Tensor,
        checks: DeferredChecks,
    ) -> Dict[str, Tensor]:
        if self._spec.signal != "margin":
            return {"kappa": kappa}
        if self._margin == "adv" or logits_nat is None:
            read: Tuple[Tensor, ...] = (logits_adv,)
        else:
            read = (logits_nat,) if self._margin == "nat" else (logits_nat, logits_adv)
        for logits in read:
            checks.add_finite(logits, "logits (PM is read from them)")
        if len(read) == 1:
            return {"margin": margin_of(read[0], y)}
        return {"margin": margin_dif_of(read[0], read[1], y)}

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
