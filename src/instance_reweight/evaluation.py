r"""Robustness evaluation that shows gradient masking: natural, PGD-20/100, PGD+, CW∞, logit-scaled
PGD, LM-PGD, APGD-CE and AutoAttack, by name, with the GAIRAT, MAIL and RobustBench protocols.

An example counts as robust under an attack iff the model classifies it correctly at :math:`x` and
at every point the attack returns (every restart, every logit scale α; with ``every_iterate`` every
PGD iterate too). Results are kept per example (:func:`robust_masks`), so restarts, scales and
subsets combine per example, never by averaging accuracies.

Instance-reweighted training is known to look robust under PGD and to fail under AutoAttack and
logit-scaled PGD (MAIL Table 2: GAIRAT 33.35 % AA against AT 44.90 %), so every protocol reports
both next to PGD-20. See ``docs/evaluation.md``.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sized
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import torch
from torch import Tensor, nn

from ._checks import (
    check_choice,
    check_clip,
    check_eps,
    check_finite,
    check_int,
    check_label_range,
    check_labels,
    check_tensor,
)
from ._eval_attacks import (
    Clip,
    LineSearchMomentumPGD,
    Run,
    autoattack,
    lm_pgd,
    logit_scaled_pgd,
    logits_of,
    natural,
    pgd,
    robust_to_all,
)
from .attack import NORMS, frozen_for_attack

__all__ = [
    "ATTACKS",
    "PROTOCOLS",
    "LineSearchMomentumPGD",
    "Protocol",
    "evaluate",
    "robust_accuracy",
    "robust_masks",
    "settings",
]

Data = Union[Tuple[Tensor, Tensor], Iterable[Any]]
Options = Mapping[str, Mapping[str, Any]]
NumExamples = Union[int, Mapping[str, int], None]


class _Attack(NamedTuple):
    # (model, *, eps, clip, norm, **options) -> run(x, y) -> robust mask; options checked here, once.
    build: Callable[..., Run]
    defaults: Callable[[float, str], Dict[str, Any]]  # ε, norm -> the attack's options


def _pgd_defaults(
    steps: int,
    step_size: Optional[float] = None,
    *,
    restarts: int = 1,
    every_iterate: bool = False,
    **extra: Any,
) -> Callable[[float, str], Dict[str, Any]]:
    """PGD options as a function of ε and the norm; ``step_size=None`` is ε/4 (GAIRAT's PGD-20).

    A fixed ``step_size`` is an ℓ∞ number (PGD+'s 0.01 for ε = 0.031): under ℓ2 every step is ε/4.
    """
    return lambda eps, norm: dict(
        steps=steps,
        step_size=eps / 4 if step_size is None or norm == "l2" else step_size,
        restarts=restarts,
        random_start="uniform",
        every_iterate=every_iterate,
        **extra,
    )


def _lm_pgd_defaults(eps: float, norm: str) -> Dict[str, Any]:
    """MAIL Figure 1a at ε = 8/255: α_max = 6/255 = 0.75·ε, α_min = 4/255 (``None``: ⅔·α_max)."""
    return dict(
        steps=50,
        step_size=0.75 * eps,
        min_step=None,
        min_step_steps=15,
        momentum=0.8,
        line_search=5,
        restarts=1,
        random_start="uniform",
        every_iterate=False,
        loss="ce",
    )


_REGISTRY: Dict[str, _Attack] = {
    "natural": _Attack(natural, lambda eps, norm: {}),
    "pgd20": _Attack(pgd, _pgd_defaults(20, loss="ce")),
    "pgd100": _Attack(pgd, _pgd_defaults(100, loss="ce")),
    "pgd+": _Attack(pgd, _pgd_defaults(40, 0.01, restarts=5, every_iterate=True, loss="ce")),
    "cw": _Attack(pgd, _pgd_defaults(30, loss="cw")),
    "pgd20-ls": _Attack(
        logit_scaled_pgd, _pgd_defaults(20, alphas=(1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0))
    ),
    "lm-pgd": _Attack(lm_pgd, _lm_pgd_defaults),
    "apgd-ce": _Attack(
        functools.partial(autoattack, version="custom", attacks=("apgd-ce",)),
        lambda eps, norm: dict(restarts=1, seed=0),
    ),
    "aa": _Attack(autoattack, lambda eps, norm: dict(version="standard", seed=0, attacks=None)),
}

ATTACKS: Tuple[str, ...] = tuple(_REGISTRY)
"""The attack names :func:`evaluate` accepts: ``"natural"``; ``"pgd20"``, ``"pgd100"``: PGD-K with step
ε/4 and a uniform start; ``"pgd+"``: 5 restarts × 40 steps of 0.01, every iterate must be correct;
``"cw"``: 30 steps of ε/4 on the CW margin (confidence 50); ``"pgd20-ls"``: PGD-20 on CE(α·logits) for
α ∈ {1e-4, …, 10}, robust only for every α; ``"lm-pgd"``: :class:`LineSearchMomentumPGD`;
``"apgd-ce"`` and ``"aa"`` (AutoAttack standard; ``{"aa": {"version": "custom", "attacks":
["apgd-ce", "apgd-t"]}}`` runs a subset of its attacks) through ``pyautoattack``."""


class Protocol(NamedTuple):
    """A named evaluation setting: ε, attacks, per-attack options, per-attack subset sizes, norm."""

    eps: float
    attacks: Tuple[str, ...]
    options: Mapping[str, Mapping[str, Any]] = {}
    num_examples: Mapping[str, int] = {}
    norm: str = "linf"


_MAIL_STEP = {"step_size": 0.003}
PROTOCOLS: Dict[str, Protocol] = {
    # GAIRAT Appendix C.8: ε = 0.031, PGD-20 with step ε/4 and a uniform start, PGD+ 5 × 40 steps of 0.01.
    "gairat": Protocol(0.031, ("natural", "pgd20", "pgd+", "cw", "pgd20-ls", "aa")),
    # MAIL Section 4: PGD-100 (step 0.003 in its code), CW, APGD-CE, AutoAttack on the first 1000 test images.
    "mail": Protocol(
        0.031,
        ("natural", "pgd20", "pgd100", "apgd-ce", "cw", "pgd20-ls", "aa"),
        {"pgd20": _MAIL_STEP, "pgd100": _MAIL_STEP, "pgd20-ls": _MAIL_STEP},
        {"aa": 1000},
    ),
    # RobustBench: ε = 8/255 on every test image.
    "robustbench": Protocol(8 / 255, ("natural", "pgd20", "pgd20-ls", "aa")),
    # RobustBench's ℓ2 track: ε = 0.5 on every test image.
    "robustbench-l2": Protocol(0.5, ("natural", "pgd20", "pgd20-ls", "aa"), norm="l2"),
}
"""Protocol presets by name; every field can be overridden in :func:`evaluate`."""

_DEFAULT = Protocol(8 / 255, ("natural", "pgd20", "pgd20-ls", "aa"))


def robust_masks(
    model: nn.Module,
    data: Data,
    *,
    attacks: Union[str, Sequence[str], None] = None,
    eps: Optional[float] = None,
    protocol: Optional[str] = None,
    options: Optional[Options] = None,
    num_examples: NumExamples = None,
    batch_size: int = 256,
    clip: Clip = (0.0, 1.0),
    progress: bool = False,
    norm: Optional[str] = None,
) -> Dict[str, Tensor]:
    r"""Per-example robustness under each attack: the masks :func:`evaluate` averages.

    .. math::
        m_i^{a} = \mathbb{1}\bigl[f(x_i) = y_i\bigr]
            \prod_{x' \in A_a(x_i)} \mathbb{1}\bigl[f(x') = y_i\bigr]

    where :math:`A_a(x_i)` are the points attack :math:`a` returns for :math:`x_i` (one per restart
    or logit scale; every iterate with ``every_iterate``). Each attack after the natural check runs
    only on the examples still robust. Masks of one data set combine by ``&`` (a per-example worst
    case over attacks) and subsets by indexing.

    Args: as :func:`evaluate`.

    Shape:
        - Output: ``{attack: (n_attack,) bool}`` on the CPU, ``n_attack`` the examples that attack
          saw (all, or its ``num_examples``), in data order.

    Returns:
        A dict from attack name to mask, in the order of ``attacks``.

    Raises: as :func:`evaluate`.

    Example:
        >>> model = nn.Linear(2, 2)  # class 1 iff x_0 > 0.5
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        ...     _ = model.bias.copy_(torch.tensor([0.0, -0.5]))
        >>> x, y = torch.tensor([[0.2, 0.0], [0.45, 0.0], [0.7, 0.0]]), torch.tensor([0, 0, 0])
        >>> robust_masks(model, (x, y), attacks=["natural", "pgd20"], eps=0.1)
        {'natural': tensor([ True,  True, False]), 'pgd20': tensor([ True, False, False])}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be a torch.nn.Module, got {type(model).__name__}.")
    clip = check_clip(clip)
    config = settings(
        attacks=attacks,
        eps=eps,
        protocol=protocol,
        options=options,
        num_examples=num_examples,
        clip=clip,
        norm=norm,
    )
    runs = _built(model, config, clip)
    batches, total = _batches(data, check_int(batch_size, "batch_size", 1))
    device = _device(model)
    float32 = torch.autocast(device.type if device is not None else "cpu", enabled=False)
    # Attacks need autograd, also when the caller is under torch.inference_mode().
    with frozen_for_attack(model), float32, torch.inference_mode(False):
        batches = _progress(batches, total, progress)
        return _masks(model, runs, config["num_examples"], batches, device, clip)


def _built(model: nn.Module, config: Mapping[str, Any], clip: Clip) -> Dict[str, Run]:
    """Every attack of ``config``, built once before any work: a bad option value (or a missing
    extra) fails here."""
    return {
        name: _REGISTRY[name].build(
            model, eps=config["eps"], clip=clip, norm=config["norm"], **params
        )
        for name, params in config["attacks"].items()
    }


def _masks(
    model: nn.Module,
    runs: Mapping[str, Run],
    sizes: Mapping[str, Optional[int]],
    batches: Iterable[Any],
    device: Optional[torch.device],
    clip: Clip,
) -> Dict[str, Tensor]:
    """Each attack's masks over the batches, in data order, on its first ``sizes[name]`` examples
    (all for ``None``); the batches stop once every attack has its examples."""
    limits = [n for n in sizes.values() if n is not None]
    limit = max(limits) if len(limits) == len(sizes) else None
    masks: Dict[str, List[Tensor]] = {name: [] for name in runs}
    seen = 0
    for batch in batches:
        x, y = _checked_batch(batch, device, clip)
        correct = _correct(model, x, y)
        for name, run in runs.items():
            n_max = sizes[name]
            n = x.shape[0] if n_max is None else max(0, min(x.shape[0], n_max - seen))
            if n:
                masks[name].append(robust_to_all([run], x[:n], y[:n], correct[:n]).cpu())
        seen += x.shape[0]
        if limit is not None and seen >= limit:
            break
    if seen == 0:
        raise ValueError("Expected at least one example in `data`, got none.")
    return {name: torch.cat(parts) for name, parts in masks.items()}


def evaluate(
    model: nn.Module,
    data: Data,
    *,
    attacks: Union[str, Sequence[str], None] = None,
    eps: Optional[float] = None,
    protocol: Optional[str] = None,
    options: Optional[Options] = None,
    num_examples: NumExamples = None,
    batch_size: int = 256,
    clip: Clip = (0.0, 1.0),
    progress: bool = True,
    norm: Optional[str] = None,
) -> Dict[str, float]:
    r"""Accuracy under each attack: the columns of the GAIRAT and MAIL tables for your model.

    .. math::
        \mathrm{acc}_a = \frac{1}{n_a} \sum_{i=1}^{n_a} m_i^{a}

    with :math:`m^{a}` the per-example masks of :func:`robust_masks`. The model runs in eval mode,
    in float32 (autocast off), with autograd on for the attacks (also under ``no_grad`` or
    ``inference_mode``), with its parameters frozen; every submodule's mode and every
    ``requires_grad`` flag are restored afterwards, also on error.

    Settings come from, in increasing precedence: each attack's defaults (see :data:`ATTACKS` and
    :func:`settings`), the ``protocol`` (:data:`PROTOCOLS`), then ``eps``, ``attacks``,
    ``options`` and ``num_examples``.

    Args:
        model: classifier returning logits ``(N, C)``, float32 parameters, inputs in ``clip``.
        data: an ``(x, y)`` pair of tensors (split into ``batch_size`` chunks) or an iterable of
            ``(x, y, ...)`` batches such as a ``DataLoader``; batches move to the model's device.
        attacks: attack names (see :data:`ATTACKS`); ``None`` for the protocol's, else
            ``("natural", "pgd20", "pgd20-ls", "aa")``.
        eps: radius ε of the ``norm`` ball on the input scale; ``None`` for the protocol's, else
            8/255.
        protocol: ``"gairat"``, ``"mail"``, ``"robustbench"``, ``"robustbench-l2"`` or ``None``.
        options: per-attack overrides, e.g. ``{"pgd20": {"step_size": 0.003}}``.
        num_examples: evaluate only the first ``n`` examples: an int for every attack, or per
            attack, e.g. ``{"aa": 1000}`` (MAIL); ``None`` for all (or the protocol's).
        batch_size: chunk size for an ``(x, y)`` pair (a DataLoader keeps its own).
        clip: input box, ``None`` for inputs that are not images (not for AutoAttack).
        progress: show a progress bar (tqdm if installed, else a line on stderr).
        norm: the threat model, ``"linf"`` or ``"l2"`` (every attack but ``"lm-pgd"``; under ℓ2
            every PGD step is ε/4); ``None`` for the protocol's, else ``"linf"``.

    Returns:
        ``{attack: accuracy in [0, 1]}`` as plain floats (JSON-serialisable), in ``attacks`` order.

    Raises:
        ValueError: on an unknown attack, protocol or option; a bad ``eps`` (negative, or larger
            than the input range); inputs outside ``clip`` or not finite; labels out of range;
            empty data; a model with non-float32 parameters.
        TypeError: on data that is not an ``(x, y)`` pair or an iterable of batches.
        ImportError: for ``"aa"`` or ``"apgd-ce"`` without ``pyautoattack``, before any work.

    Example:
        >>> model = nn.Linear(2, 2)  # class 1 iff x_0 > 0.5
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        ...     _ = model.bias.copy_(torch.tensor([0.0, -0.5]))
        >>> x, y = torch.tensor([[0.2, 0.0], [0.45, 0.0]]), torch.tensor([0, 0])
        >>> evaluate(model, (x, y), attacks=["natural", "pgd20", "pgd+"], eps=0.1, progress=False)
        {'natural': 1.0, 'pgd20': 0.5, 'pgd+': 0.5}
    """
    masks = robust_masks(
        model,
        data,
        attacks=attacks,
        eps=eps,
        protocol=protocol,
        options=options,
        num_examples=num_examples,
        batch_size=batch_size,
        clip=clip,
        progress=progress,
        norm=norm,
    )
    return {name: int(mask.sum()) / mask.numel() for name, mask in masks.items()}


def robust_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    attack: str = "pgd20",
    eps: float = 8 / 255,
    batch_size: int = 256,
    clip: Clip = (0.0, 1.0),
    progress: bool = False,
    norm: str = "linf",
    **overrides: Any,
) -> float:
    r"""Accuracy of ``model`` on ``(x, y)`` under one attack, e.g. ``attack="pgd+"``.

    .. math::
        \mathrm{acc} = \frac{1}{N} \sum_i \mathbb{1}\bigl[f(x_i) = y_i\bigr]
            \prod_{x' \in A(x_i)} \mathbb{1}\bigl[f(x') = y_i\bigr]

    Args:
        model: classifier returning logits ``(N, C)``.
        x: inputs inside ``clip``.
        y: class indices.
        attack: one of :data:`ATTACKS`.
        eps: radius ε of the ``norm`` ball.
        batch_size: examples per attack call.
        clip: input box.
        progress: show a progress bar.
        norm: ``"linf"`` or ``"l2"``.
        **overrides: the attack's options (see :func:`settings`), e.g. ``steps=50``.

    Shape:
        - x: ``(N, *)``.
        - y: ``(N,)``.

    Returns:
        The accuracy in [0, 1], a float.

    Raises: as :func:`evaluate`.

    Example:
        >>> model = nn.Linear(2, 2)  # class 1 iff x_0 > 0.5
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        ...     _ = model.bias.copy_(torch.tensor([0.0, -0.5]))
        >>> x, y = torch.tensor([[0.2, 0.0], [0.45, 0.0]]), torch.tensor([0, 0])
        >>> robust_accuracy(model, x, y, attack="cw", eps=0.1, steps=10)
        0.5
    """
    result = evaluate(
        model,
        (x, y),
        attacks=(attack,),
        eps=eps,
        options={attack: overrides},
        batch_size=batch_size,
        clip=clip,
        progress=progress,
        norm=norm,
    )
    return result[attack]


def settings(
    *,
    attacks: Union[str, Sequence[str], None] = None,
    eps: Optional[float] = None,
    protocol: Optional[str] = None,
    options: Optional[Options] = None,
    num_examples: NumExamples = None,
    clip: Clip = (0.0, 1.0),
    norm: Optional[str] = None,
) -> Dict[str, Any]:
    """The settings :func:`evaluate` would run with these arguments, to inspect or to record.

    Args: as :func:`evaluate`.

    Returns:
        ``{"eps": ε, "norm": norm, "attacks": {name: options}, "num_examples": {name: n or None}}``.

    Raises:
        ValueError: on an unknown attack, protocol or option name, or a bad ``eps``.

    Example:
        >>> s = settings(protocol="mail", attacks=["pgd100", "aa"])
        >>> s["eps"], s["attacks"]["pgd100"]["step_size"], s["num_examples"]
        (0.031, 0.003, {'pgd100': None, 'aa': 1000})
    """
    preset = (
        _DEFAULT
        if protocol is None
        else PROTOCOLS[check_choice(protocol, "protocol", tuple(PROTOCOLS))]
    )
    norm_ = check_choice(preset.norm if norm is None else norm, "norm", NORMS)
    eps_ = check_eps(preset.eps if eps is None else eps, check_clip(clip), norm_, strict=True)
    names = _check_names(preset.attacks if attacks is None else attacks)
    user = _check_mapping(options, "options", names)
    limits = {**preset.num_examples, **_num_examples(num_examples, names)}
    resolved = {}
    for name in names:
        params = _REGISTRY[name].defaults(eps_, norm_)
        given = {**preset.options.get(name, {}), **user.get(name, {})}
        unknown = sorted(set(given) - set(params))
        if unknown:
            raise ValueError(
                f"Expected options for {name!r} among {sorted(params) or 'none'}, got {unknown}."
            )
        resolved[name] = {**params, **given}
    return {
        "eps": eps_,
        "norm": norm_,
        "attacks": resolved,
        "num_examples": {name: limits.get(name) for name in names},
    }


def _check_names(attacks: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    names = (attacks,) if isinstance(attacks, str) else tuple(attacks)
    if not names:
        raise ValueError(
            f"Expected at least one attack among {', '.join(map(repr, ATTACKS))}, got none."
        )
    for name in names:
        check_choice(name, "attack", ATTACKS)
    return tuple(dict.fromkeys(names))


def _check_mapping(value: object, name: str, names: Tuple[str, ...]) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(
            f"Expected `{name}` as a dict keyed by attack name, got {type(value).__name__}."
        )
    extra = sorted(set(value) - set(names))
    if extra:
        raise ValueError(
            f"Expected `{name}` keys among the attacks run {list(names)}, got {extra}."
        )
    return dict(value)


def _num_examples(value: NumExamples, names: Tuple[str, ...]) -> Dict[str, int]:
    given = (
        dict.fromkeys(names, value)
        if isinstance(value, int)
        else _check_mapping(value, "num_examples", names)
    )
    return {name: check_int(n, f"num_examples[{name!r}]", 1) for name, n in given.items()}


def _device(model: nn.Module) -> Optional[torch.device]:
    """The model's device (``None`` for a model without parameters: the data stays put)."""
    param = next(model.parameters(), None)
    if param is None:
        return None
    wrong = {
        p.dtype for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32
    }
    if wrong:
        raise ValueError(
            f"Expected a float32 model (evaluation runs in float32), got parameters in {sorted(map(str, wrong))}; "
            "evaluate a float32 copy: `copy.deepcopy(model).float()`."
        )
    return param.device


def _batches(data: Data, batch_size: int) -> Tuple[Iterable[Any], Optional[int]]:
    """``(batches, number of batches or None)`` for an ``(x, y)`` pair or an iterable of batches."""
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        x, y = data
        n = x.shape[0] if x.dim() else 0
        if y.dim() != 1 or y.shape[0] != n:
            raise ValueError(
                f"Expected `x` (N, *) and `y` (N,) with the same N, got {tuple(x.shape)} and {tuple(y.shape)}."
            )
        return (
            (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)
        ), math.ceil(n / batch_size)
    if isinstance(data, (Tensor, str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise TypeError(
            f"Expected `data` as an (x, y) pair of tensors or an iterable of (x, y) batches such as "
            f"a DataLoader, got {type(data).__name__}."
        )
    return data, len(data) if isinstance(data, Sized) else None


def _checked_batch(
    batch: object, device: Optional[torch.device], clip: Clip
) -> Tuple[Tensor, Tensor]:
    """``(x, y)`` of one batch ``(x, y, ...)``, checked, in float32 on the model's device."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(
            f"Expected each batch of `data` as (x, y) (extra items ignored), got {type(batch).__name__}; "
            "a Dataset should return (image, label) pairs."
        )
    x = check_tensor(batch[0], "x")
    if not x.is_floating_point() or x.dim() < 2:
        raise TypeError(
            f"Expected `x` as a floating-point batch (N, *), got {x.dtype} of shape {tuple(x.shape)}."
        )
    y = check_labels(batch[1], x.shape[0])
    x, y = (
        x.to(device=device or x.device, dtype=torch.float32),
        y.to(device=device or x.device, dtype=torch.long),
    )
    check_finite(x, "x")
    if clip is not None and bool(((x < clip[0]) | (x > clip[1])).any()):
        raise ValueError(
            f"Expected `x` inside clip=({clip[0]:g}, {clip[1]:g}), got values in [{float(x.min()):.4g}, "
            f"{float(x.max()):.4g}]; feed unnormalised inputs (normalise inside the model) or pass clip=None."
        )
    return x, y


def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Natural correctness ``(N,)``; labels checked against the number of classes."""
    logits = logits_of(model, x)
    check_label_range(y, logits.shape[1])
    return logits.argmax(dim=1) == y


def _progress(batches: Iterable[Any], total: Optional[int], enabled: bool) -> Iterable[Any]:
    if not enabled:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _plain_progress(batches, total)
    return tqdm(batches, total=total, desc="evaluate", unit="batch")


def _plain_progress(batches: Iterable[Any], total: Optional[int]) -> Iterator[Any]:
    """The fallback bar: one updating line on stderr, ended also when the loop stops early."""
    try:
        for done, batch in enumerate(batches, 1):
            yield batch
            sys.stderr.write(f"\revaluate: {done}/{total if total is not None else '?'} batches")
            sys.stderr.flush()
    finally:
        sys.stderr.write("\n")
