r"""Every method of both papers by name: the attack, the forwards and the loss, with the papers' defaults.

:func:`get` binds a method to a model; a training loop calls :meth:`Method.set_epoch` once per epoch
and backpropagates :meth:`Method.loss` for every batch, so switching method is changing a string.
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

``variant="official"`` gives the official codes' objectives where they differ from the papers:
``gair-trades`` becomes the GAIR-RST code's mean CE(f(x), y) + β·mean [w·KL(x_kl) + (1 − w)·KL(x_cw)]
with unnormalised w (GAIRAT Eq. 13; x_cw from a CW attack), and the MAIL methods use 3·ω, unnormalised.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import at_least_float32, check_choice, check_int, check_number
from .attack import GeometryAwareAttack
from .loss import InstanceReweightedLoss
from .losses import boosted_ce, misclassification_aware_kl, trades_kl
from .margin import probabilistic_margin, probabilistic_margin_dif
from .scheduler import BurnInScheduler
from .schemes import SCHEMES, resolve_scheme

__all__ = ["Method", "fat_tau", "get", "names"]


def fat_tau(epoch: int) -> int:
    """FAT's τ as GAIRAT Table 1 runs FAT and GAIR-FAT: 0, then 3 from epoch 40 and 6 from epoch 70.

    Example:
        >>> [fat_tau(e) for e in (0, 39, 40, 69, 70)]
        [0, 0, 3, 3, 6]
    """
    return 0 if epoch < 40 else 3 if epoch < 70 else 6


@dataclass(frozen=True)
class _Spec:
    """A method: which loss terms it sums, which of them carry the weight, what the weight reads."""

    objective: str
    """``"at"``, ``"trades"``, ``"mart"`` or ``"rst"`` (GAIR-RST, the official GAIR-TRADES code)."""
    weighted: Tuple[str, ...] = ()
    signal: Optional[str] = None
    """``"kappa"`` (GAIRAT), ``"margin"`` (MAIL) or ``None`` (no reweighting)."""
    defaults: Mapping[str, Any] = field(default_factory=dict)


# Threat model of both papers (SPEC §4); TRADES, MART and all MAIL code start at x + 0.001·N(0, I).
_PGD = {
    "eps": 8 / 255,
    "step_size": 2 / 255,
    "steps": 10,
    "attack_loss": "ce",
    "random_start": "uniform",
    "clip": (0.0, 1.0),
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

_METHODS: Mapping[str, _Spec] = {
    "at": _Spec("at", defaults=_PGD),
    "trades": _Spec("trades", defaults={**_KL, "beta": 6.0}),
    "mart": _Spec("mart", defaults={**_NORMAL, "beta": 5.0}),
    "fat": _Spec("at", defaults={**_PGD, "tau": fat_tau}),
    # GAIRAT Table 1 (WRN-32-10); GAIR-TRADES Appendix C.9; GAIR-MART Appendix C.7 (from epoch 75).
    "gairat": _Spec(
        "at", ("ce_adv",), "kappa", {**_PGD, **_GAIR, "burn_in_epochs": 60, "lam": 0.0}
    ),
    "gair-fat": _Spec(
        "at",
        ("ce_adv",),
        "kappa",
        {**_PGD, **_GAIR, "tau": fat_tau, "burn_in_epochs": 60, "lam": 0.0},
    ),
    "gair-trades": _Spec(
        "trades",
        ("ce_nat",),
        "kappa",
        {**_KL, **_GAIR, "beta": 6.0, "burn_in_epochs": 75, "lam": -1.0},
    ),
    "gair-mart": _Spec(
        "mart",
        ("ce_adv",),
        "kappa",
        {**_NORMAL, **_GAIR, "beta": 5.0, "burn_in_epochs": 75, "lam": -1.0},
    ),
    # MAIL Section 4.1: γ, β of the weight; β of TRADES and MART; the initial 74 epochs burn in.
    "mail-at": _Spec(
        "at", ("ce_adv",), "margin", {**_NORMAL, **_MAIL, "slope": 10.0, "bias": -0.5}
    ),
    "mail-trades": _Spec(
        "trades", ("kl",), "margin", {**_KL, **_MAIL, "beta": 5.0, "slope": 2.0, "bias": 0.0}
    ),
    "mail-mart": _Spec(
        "mart",
        ("ce_adv", "boost"),
        "margin",
        {**_NORMAL, **_MAIL, "beta": 6.0, "slope": 2.0, "bias": 0.0},
    ),
}


def _official(
    spec: _Spec, objective: Optional[str] = None, weighted: Tuple[str, ...] = (), **defaults: Any
) -> _Spec:
    return replace(
        spec,
        objective=objective or spec.objective,
        weighted=weighted or spec.weighted,
        defaults={**spec.defaults, **defaults},
    )


# The official codes' objectives, where they differ from the papers' equations.
_OFFICIAL: Mapping[str, _Spec] = {
    "gair-trades": _official(_METHODS["gair-trades"], "rst", ("kl",), normalize="none"),
    **{
        name: _official(_METHODS[name], normalize="none", scale=3.0)
        for name in ("mail-at", "mail-trades", "mail-mart")
    },
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
        ValueError: on an unknown name, variant or hyper-parameter (the message lists the valid ones),
            or an invalid value.

    Example:
        >>> method = get("gairat", nn.Linear(4, 3), burn_in_epochs=30, lam=-1.0)
        >>> method.params["burn_in_epochs"], method.params["eps"] == 8 / 255
        (30, True)
    """
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(
            f"Expected `name` to be one of {', '.join(map(repr, _METHODS))}, got {name!r}."
        )
    check_choice(variant, "variant", _VARIANTS)
    if variant == "official" and name not in _OFFICIAL:
        raise ValueError(
            f"Expected variant='paper' for {name!r}, got 'official': only {', '.join(map(repr, _OFFICIAL))} "
            "have an official-code variant."
        )
    return Method(
        name, model, _OFFICIAL[name] if variant == "official" else _METHODS[name], overrides
    )


def _per_example(losses: Tensor) -> Tensor:
    return losses


class Method:
    r"""One adversarial-training method bound to a model: attack, forwards, loss, schedules.

    Build it with :func:`get`. For every batch, :meth:`loss` runs the attack (model in eval mode,
    see :class:`~instance_reweight.GeometryAwareAttack`), then the natural forward (when the loss or
    the weight needs it) and the adversarial forward as separate calls in the model's own mode (call
    ``model.train()`` as usual: BatchNorm then sees each batch separately, as in the official codes),
    and returns the scalar to backpropagate. The weight is computed without gradient from κ of the
    attack or from PM of the forward that gives the loss (detached).

    Hyper-parameters (every one a keyword of :func:`get`; those a method does not use are rejected):

    - ``eps``, ``step_size``, ``steps`` (K, also the GAIRAT schemes' K), ``attack_loss``
      (``"ce"``, ``"kl"``, ``"cw"`` or a callable), ``random_start``, ``clip``: the attack.
    - ``tau``: FAT's early-stop budget, an int or a callable ``epoch -> τ`` (``fat``, ``gair-fat``).
    - ``beta``: the TRADES / MART trade-off.
    - ``scheme``, ``normalize``, ``scale``, ``burn_in_epochs`` and the scheme's parameters
      (``lam`` — a number or a callable ``epoch -> λ`` —, ``slope``, ``bias``, ``alpha``): the weight.
    - ``margin``: which PM the MAIL methods read, ``"adv"`` (PM_adv, MAIL's default), ``"nat"`` or
      ``"dif"`` (these two run the natural forward in the AT objective too).

    Attributes:
        name: the method's name.
        params: every hyper-parameter, defaults and overrides merged.
        attack: the :class:`~instance_reweight.GeometryAwareAttack`.
        criterion: the :class:`~instance_reweight.InstanceReweightedLoss` of the weighted terms, or
            ``None`` for a method without reweighting.
        burn_in: its :class:`~instance_reweight.BurnInScheduler`, or ``None``.
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
        )
        self.attack = GeometryAwareAttack(
            model,
            loss=params["attack_loss"],
            tau=None if tau is None or callable(tau) else tau,
            **attack,
        )
        self._cw_attack = (
            GeometryAwareAttack(model, loss="cw", **attack) if spec.objective == "rst" else None
        )
        self.criterion: Optional[InstanceReweightedLoss] = None
        self.burn_in: Optional[BurnInScheduler] = None
        if scheme is not None:
            if scheme.signal not in (None, spec.signal):
                valid_schemes = ", ".join(
                    sorted(k for k, s in SCHEMES.items() if s.signal == spec.signal)
                )
                raise ValueError(
                    f"Expected a scheme reading `{spec.signal}` for {name!r} ({valid_schemes}, 'uniform' or a "
                    f"callable), got {params['scheme']!r}."
                )
            if spec.objective == "rst" and params["normalize"] != "none":
                raise ValueError(
                    f"Expected normalize='none' for the official GAIR-RST objective w·KL + (1 − w)·KL_cw "
                    f"(w in [0, 1]), got {params['normalize']!r}."
                )
            scheme_params = {k: params[k] for k in scheme_keys - {"lam"} if k in params}
            if "steps" in scheme.defaults:
                scheme_params["steps"] = params["steps"]
            self.criterion = InstanceReweightedLoss(
                _per_example,
                params["scheme"],
                normalize=params["normalize"],
                scale=params["scale"],
                **scheme_params,
            )
            lam = params.get("lam") if "lam" in scheme.defaults or "lam" in overrides else None
            self.burn_in = BurnInScheduler(
                self.criterion, burn_in_epochs=params["burn_in_epochs"], lam=lam
            )
        self.epoch = 0
        self.last_signal: Dict[str, Tensor] = {}
        self.last_weights: Optional[Tensor] = None
        self.set_epoch(0)

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
        """
        x_adv, kappa = self.attack(x, y)
        y = y.long()
        objective = self._spec.objective
        logits_nat = None
        if objective != "at" or self._margin != "adv":
            # In the AT objective the natural forward only feeds the weight: no graph for it.
            with torch.no_grad() if objective == "at" else contextlib.nullcontext():
                logits_nat = self.model(x)
        logits_adv = self.model(x_adv)
        terms = self._terms(x, y, logits_nat, logits_adv)
        self.last_signal = self._signal(kappa, logits_nat, logits_adv, y)
        rest = [t for k, t in terms.items() if k not in self._spec.weighted]
        loss = torch.stack(rest).sum(0).mean() if rest else logits_adv.new_zeros(())
        if self.criterion is None:
            return loss
        weighted = torch.stack([terms[k] for k in self._spec.weighted]).sum(0)
        loss = loss + self.criterion(weighted, **self.last_signal)
        self.last_weights = self.criterion.last_weights
        return loss

    def _terms(
        self, x: Tensor, y: Tensor, logits_nat: Optional[Tensor], logits_adv: Tensor
    ) -> Dict[str, Tensor]:
        """The per-example loss terms ``(N,)`` of the objective, each with its coefficient."""

        def ce(logits: Tensor) -> Tensor:
            return F.cross_entropy(at_least_float32(logits), y, reduction="none")

        objective = self._spec.objective
        if objective == "at" or logits_nat is None:
            return {"ce_adv": ce(logits_adv)}
        if objective == "mart":
            ce_adv = ce(logits_adv)
            return {
                "ce_adv": ce_adv,
                "boost": boosted_ce(logits_adv, y) - ce_adv,
                "mkl": self._beta * misclassification_aware_kl(logits_adv, logits_nat, y),
            }
        terms = {"ce_nat": ce(logits_nat), "kl": self._beta * trades_kl(logits_adv, logits_nat)}
        if objective == "rst" and self._cw_attack is not None and self.reweighting:
            # w·KL + (1 − w)·KL_cw = w·(KL − KL_cw) + KL_cw; during burn-in w = 1 and x_cw is not needed.
            x_cw = self._cw_attack(x, y).adv
            kl_cw = self._beta * trades_kl(self.model(x_cw), logits_nat)
            terms.update(kl=terms["kl"] - kl_cw, kl_cw=kl_cw)
        return terms

    def _signal(
        self, kappa: Tensor, logits_nat: Optional[Tensor], logits_adv: Tensor, y: Tensor
    ) -> Dict[str, Tensor]:
        if self._spec.signal != "margin":
            return {"kappa": kappa}
        if self._margin == "adv" or logits_nat is None:
            return {"margin": probabilistic_margin(logits_adv, y)}
        if self._margin == "nat":
            return {"margin": probabilistic_margin(logits_nat, y)}
        return {"margin": probabilistic_margin_dif(logits_nat, logits_adv, y)}

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
