"""Input checks shared by every public piece, and the dtype rule they share.

One rule: a value of the wrong type raises ``TypeError``, a value of the right type but a wrong value
raises ``ValueError``; each message says what was expected, what came, and how to fix it. Checks that
need tensor values are gathered by :class:`DeferredChecks` and read with one host synchronisation.
"""

from __future__ import annotations

import difflib
import math
from typing import Callable, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn


def _type_name(value: object) -> str:
    return type(value).__name__


def check_tensor(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, got {_type_name(value)}.")
    return value


def check_model(model: object, name: str = "model") -> nn.Module:
    """An ``nn.Module`` whose parameters hold data: not a lazy module before its first forward, not
    a module on the meta device."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `{name}` to be a torch.nn.Module, got {_type_name(model)}.")
    params = list(model.parameters())
    if any(nn.parameter.is_lazy(p) for p in params):
        raise ValueError(
            f"Expected `{name}` with initialised parameters, got a lazy module (e.g. nn.LazyLinear) "
            f"before its first forward; run one forward on a batch first, e.g. `{name}(x[:1])`."
        )
    if any(p.is_meta for p in params):
        raise ValueError(
            f"Expected `{name}` with parameters that hold data, got parameters on the meta device; "
            f"materialise them with `{name}.to_empty(device=...)` and load the weights first."
        )
    return model


def check_labels(y: object, n: int, name: str = "y") -> Tensor:
    """Labels must be an integer tensor of shape (N,); their range is checked against the logits."""
    y = check_tensor(y, name)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(
            f"Expected `{name}` to hold integer class indices (torch.long), got dtype {y.dtype}; "
            f"convert with `{name}.long()` (one-hot or soft labels are not supported)."
        )
    if y.shape != (n,):
        raise ValueError(
            f"Expected `{name}` of shape ({n},) (one class index per example), got {tuple(y.shape)}."
        )
    return y


def wrong_shape(t: Tensor, dims: int, n: Optional[int]) -> Optional[str]:
    """``None`` if ``t`` has ``dims`` (1 or 2) dimensions and ``n`` rows (any number if ``n`` is
    ``None``), else the expected shape for the message: ``"(n,)"``, ``"(N,)"``, ``"(n, C)"``, ….

    Example:
        >>> wrong_shape(torch.zeros(3, 2), 1, None), wrong_shape(torch.zeros(3, 2), 2, 4)
        ('(N,)', '(4, C)')
    """
    if t.dim() == dims and (n is None or t.shape[0] == n):
        return None
    rows = "N" if n is None else str(n)
    return f"({rows},)" if dims == 1 else f"({rows}, C)"


def check_losses(losses: object, n: Optional[int], source: str) -> Tensor:
    """Per-example losses: a tensor of shape ``(N,)`` (``(n,)`` when ``n`` is known)."""
    if not isinstance(losses, Tensor):
        raise TypeError(
            f"Expected {source} to return a tensor of per-example losses, got {type(losses).__name__}."
        )
    if losses.dim() == 0:
        raise ValueError(
            f"Expected {source} to return one loss per example, shape (N,), got a scalar: it reduces over "
            "the batch. Build it with reduction='none' (e.g. nn.CrossEntropyLoss(reduction='none'))."
        )
    expected = wrong_shape(losses, 1, n)
    if expected:
        raise ValueError(
            f"Expected {source} to return one loss per example, shape {expected}, got {tuple(losses.shape)}; "
            "sum the per-class terms (e.g. `.sum(dim=1)`) so that each example has one loss."
        )
    if not losses.is_floating_point():
        raise TypeError(
            f"Expected {source} to return floating-point losses, got dtype {losses.dtype}: integer "
            "losses carry no gradient; compute the loss from the logits with torch operations."
        )
    return losses


def check_logits(logits: object, n: Optional[int] = None, name: str = "logits") -> Tensor:
    logits = check_tensor(logits, name)
    if not logits.is_floating_point():
        raise TypeError(
            f"Expected floating-point `{name}`, got dtype {logits.dtype}; return raw class scores "
            "(not argmax indices or rounded scores) from the model."
        )
    expected = wrong_shape(logits, 2, n)
    if expected:
        raise ValueError(
            f"Expected `{name}` of shape {expected} (one row of class scores per example), "
            f"got {tuple(logits.shape)}; flatten extra dimensions or return raw logits from the model."
        )
    if logits.shape[1] < 2:
        raise ValueError(
            f"Expected at least 2 classes in `{name}`, got shape {tuple(logits.shape)}: "
            "a margin against the runner-up class needs two classes."
        )
    return logits


def check_label_range(y: Tensor, num_classes: int, name: str = "y") -> None:
    """One host synchronisation: call outside hot loops."""
    if y.numel() and bool(((y < 0) | (y >= num_classes)).any()):
        raise ValueError(
            f"Expected every label in `{name}` to lie in [0, {num_classes - 1}] for {num_classes} "
            f"classes, got values in [{int(y.min())}, {int(y.max())}]."
        )


def labels_in_range(y: Tensor, num_classes: int) -> Tensor:
    """A device flag: every label lies in ``[0, num_classes)``."""
    return ((y >= 0) & (y < num_classes)).all()


def check_finite(t: Tensor, name: str) -> None:
    """One host synchronisation: call outside hot loops."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"Expected finite values in `{name}`, got NaN or Inf; check the data pipeline or, for "
            "logits, the model (a diverged model or a wrong input range)."
        )


class DeferredChecks:
    """Value checks gathered as device flags and read with one host synchronisation.

    Each :meth:`add` queues a boolean scalar tensor (True when fine) and the function that raises the
    matching error; :meth:`verify` reads every flag at once and calls the raiser of the first flag
    that failed (a raiser may look at the values again: that costs time only on the way to an error).

    Example:
        >>> checks = DeferredChecks()
        >>> checks.add(torch.tensor(False), lambda: check_finite(torch.tensor([math.nan]), "x"))
        >>> checks.verify()
        Traceback (most recent call last):
        ...
        ValueError: Expected finite values in `x`, got NaN or Inf; check the data pipeline or, for logits, the model (a diverged model or a wrong input range).
    """

    def __init__(self) -> None:
        self._flags: List[Tensor] = []
        self._raisers: List[Callable[[], None]] = []

    def add(self, flag: Tensor, raiser: Callable[[], None]) -> None:
        self._flags.append(flag.reshape(()).to(torch.bool))
        self._raisers.append(raiser)

    def add_labels_and_logits(
        self, y: Tensor, num_classes: int, logits_finite: Tensor, what: str = "logits"
    ) -> None:
        """Queue the range of the labels ``y`` and the flag that the logits were finite."""
        self.add(labels_in_range(y, num_classes), lambda: check_label_range(y, num_classes))
        self.add(logits_finite, lambda: _raise_not_finite(what))

    def add_finite(self, t: Tensor, what: str) -> None:
        """Queue the finiteness of ``t`` (logits), described as ``what`` in the error."""
        self.add(torch.isfinite(t).all(), lambda: _raise_not_finite(what))

    def verify(self) -> None:
        """Raise for the first failed flag: the one host synchronisation of every check queued."""
        flags, raisers = self._flags, self._raisers
        self._flags, self._raisers = [], []
        if not flags:
            return
        device = flags[0].device
        for fine, raiser in zip(torch.stack([f.to(device) for f in flags]).tolist(), raisers):
            if not fine:
                raiser()


def fail(message: str) -> None:
    """Raise ``ValueError(message)``: the raiser of a :class:`DeferredChecks` flag."""
    raise ValueError(message)


def _raise_not_finite(what: str) -> None:
    raise ValueError(
        f"Expected finite {what}, got NaN or Inf; check the model (diverged weights, or inputs on "
        "the wrong scale)."
    )


def check_number(
    value: object,
    name: str,
    *,
    minimum: float = -math.inf,
    maximum: float = math.inf,
    strict: bool = False,
    allow_inf: bool = False,
    hint: str = "",
) -> float:
    """A finite real number (or ``+inf`` with ``allow_inf``) in ``[minimum, maximum]``, as a float.

    ``strict`` excludes ``minimum`` itself; ``hint`` says what the number is or how to fix it.

    Example:
        >>> check_number(1, "eps", minimum=0.0)
        1.0
        >>> check_number("0.1", "eps", minimum=0.0)
        Traceback (most recent call last):
        ...
        TypeError: Expected `eps` to be a real number, got str '0.1'.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"Expected `{name}` to be a real number{hint}, got {_type_name(value)} {value!r}."
        )
    value = float(value)
    if (
        math.isnan(value)
        or value == -math.inf
        or (value == math.inf and not allow_inf)
        or (value <= minimum if strict else value < minimum)
        or value > maximum
    ):
        if minimum > -math.inf and maximum < math.inf:
            where = f" in {'(' if strict else '['}{minimum:g}, {maximum:g}]"
        elif minimum > -math.inf:
            where = f" {'>' if strict else '>='} {minimum:g}"
        else:
            where = f" <= {maximum:g}" if maximum < math.inf else ""
        kind = "a number (finite or +inf)" if allow_inf else "a finite number"
        raise ValueError(f"Expected `{name}` to be {kind}{where}{hint}, got {value}.")
    return value


def check_eps(
    eps: object, clip: Optional[Tuple[float, float]], norm: str, *, strict: bool = False
) -> float:
    """The radius ε of the ``norm`` ball, on the scale of the inputs: finite, >= 0 (> 0 with
    ``strict``) and, for ℓ∞ with a ``clip`` box, at most the box's width (a larger ε allows every
    input in the box: a pixel-scale ε such as 8 given for inputs in [0, 1]). An ℓ2 radius spans all
    features and may exceed one feature's range.

    Example:
        >>> check_eps(8, (0.0, 1.0), "linf")
        Traceback (most recent call last):
        ...
        ValueError: Expected `eps` on the scale of the inputs, at most 1 (the width of clip=(0, 1)) for the ℓ∞ ball, got 8; did you mean 8/255 ≈ 0.03137?
    """
    value = check_number(
        eps, "eps", minimum=0.0, strict=strict, hint=" (8/255 is the usual ℓ∞ radius)"
    )
    if clip is not None and norm == "linf" and value > clip[1] - clip[0]:
        # A pixel-scale ε (in 0..255) most likely meant ε/255 on images in [0, 1].
        fix = (
            f"did you mean {value:g}/255 ≈ {value / 255:.4g}?"
            if value <= 255
            else "give it on the scale of the inputs (8/255 ≈ 0.0314 is the usual radius)."
        )
        raise ValueError(
            f"Expected `eps` on the scale of the inputs, at most {clip[1] - clip[0]:g} (the width of "
            f"clip=({clip[0]:g}, {clip[1]:g})) for the ℓ∞ ball, got {value:g}; {fix}"
        )
    return value


def check_int(value: object, name: str, minimum: int, hint: str = "") -> int:
    """An int (not a bool) of at least ``minimum``; ``hint`` says what the number is.

    Example:
        >>> check_int(2.0, "steps", 0)
        Traceback (most recent call last):
        ...
        TypeError: Expected `steps` to be an int, got float 2.0; pass `int(steps)`.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        fix = f"; pass `int({name})`" if isinstance(value, float) and value.is_integer() else ""
        raise TypeError(
            f"Expected `{name}` to be an int{hint}, got {_type_name(value)} {value!r}{fix}."
        )
    if value < minimum:
        raise ValueError(f"Expected `{name}` to be an int >= {minimum}{hint}, got {value!r}.")
    return value


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(
            f"Expected `{name}` to be True or False, got {_type_name(value)} {value!r}."
        )
    return value


def check_clip(clip: object) -> Optional[Tuple[float, float]]:
    """``(low, high)`` as floats with ``low < high``, or ``None`` for inputs that are not images."""
    if clip is None:
        return None
    if (
        not isinstance(clip, (tuple, list))
        or len(clip) != 2
        or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in clip)
    ):
        raise TypeError(f"Expected `clip` as a pair of numbers (low, high), or None; got {clip!r}.")
    if not (math.isfinite(clip[0]) and math.isfinite(clip[1]) and clip[0] < clip[1]):
        raise ValueError(f"Expected `clip` as (low, high) with finite low < high, got {clip!r}.")
    return float(clip[0]), float(clip[1])


def check_choice(value: object, name: str, choices: Tuple[str, ...], alternative: str = "") -> str:
    """One of the strings ``choices``; ``alternative`` names what else the caller accepts (it is
    only said in the message, e.g. ``"None"`` or ``"a callable"``, never matched as a string).

    Example:
        >>> check_choice("None", "random_start", ("uniform", "normal"), alternative="None")
        Traceback (most recent call last):
        ...
        ValueError: Expected `random_start` to be one of 'uniform', 'normal' or None, got 'None'.
    """
    valid = ", ".join(map(repr, choices)) + (f" or {alternative}" if alternative else "")
    if not isinstance(value, str):
        raise TypeError(
            f"Expected `{name}` to be one of {valid}, got {_type_name(value)} {value!r}."
        )
    if value not in choices:
        raise ValueError(f"Expected `{name}` to be one of {valid}, got {value!r}.")
    return value


def check_base_loss(base_loss: object) -> Callable[..., Tensor]:
    """A callable per-example loss: not a torch loss that reduces over the batch."""
    if not callable(base_loss):
        raise TypeError(f"Expected `base_loss` to be callable, got {_type_name(base_loss)}.")
    reduction = getattr(base_loss, "reduction", "none")
    if reduction != "none":
        raise ValueError(
            f"Expected `base_loss` to return one loss per example, got a loss with reduction={reduction!r}; "
            f"build it with reduction='none', e.g. {_type_name(base_loss)}(reduction='none')."
        )
    return base_loss


def check_generator(generator: object) -> Optional[torch.Generator]:
    """A :class:`torch.Generator` or ``None`` (torch's global generator)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"Expected `generator` to be a torch.Generator or None, got {_type_name(generator)}; "
            "pass e.g. torch.Generator().manual_seed(0)."
        )
    return generator


def check_generator_device(generator: torch.Generator, device: torch.device) -> None:
    """The generator draws on ``device`` (a CPU generator cannot draw CUDA tensors, nor the reverse)."""
    g = generator.device
    if g.type != device.type or None not in (g.index, device.index) and g.index != device.index:
        raise ValueError(
            f"Expected `generator` on the inputs' device {device}, got a generator on "
            f"{generator.device}; create it with torch.Generator(device={str(device)!r})."
        )


def check_name(value: object, name: str, names: Iterable[str], alternative: str = "") -> str:
    """One of ``names``, matched without regard to case, returned as spelt in ``names``; a near miss
    is answered with "did you mean …?" (:func:`difflib.get_close_matches`).

    Example:
        >>> check_name("GAIRAT", "name", ("at", "gairat"))
        'gairat'
        >>> check_name("mail_at", "name", ("mail-at", "mail-trades"))
        Traceback (most recent call last):
        ...
        ValueError: Expected `name` to be one of 'mail-at', 'mail-trades', got 'mail_at'; did you mean 'mail-at'?
    """
    choices = tuple(names)
    valid = ", ".join(map(repr, choices)) + (f" or {alternative}" if alternative else "")
    if not isinstance(value, str):
        raise TypeError(
            f"Expected `{name}` to be one of {valid}, got {_type_name(value)} {value!r}."
        )
    by_case = {c.casefold(): c for c in choices}
    if value.casefold() in by_case:
        return by_case[value.casefold()]
    close = near_miss(value, choices)
    hint = f"; did you mean {close!r}?" if close else "."
    raise ValueError(f"Expected `{name}` to be one of {valid}, got {value!r}{hint}")


def near_miss(value: str, names: Iterable[str]) -> Optional[str]:
    """The one of ``names`` closest to ``value`` regardless of case, if any is close."""
    by_case = {c.casefold(): c for c in names}
    close = difflib.get_close_matches(value.casefold(), list(by_case), n=1)
    return by_case[close[0]] if close else None


def did_you_mean(
    unknown: Iterable[str], valid: Iterable[str], aliases: Optional[Mapping[str, str]] = None
) -> str:
    """The end of an error message: `` 'x': did you mean 'y'?`` for each unknown keyword ``x`` with
    a valid one ``y`` close to it, or named for it in ``aliases`` (another code's word for ours).

    Example:
        >>> did_you_mean(["lamda", "alpha", "xyz"], ["lam", "step_size"], {"alpha": "step_size"})
        " 'lamda': did you mean 'lam'? 'alpha': did you mean 'step_size'?"
    """
    names = list(valid)
    hints = []
    for key in unknown:
        alias = (aliases or {}).get(key)
        close = alias if alias in names else near_miss(key, names)
        if close:
            hints.append(f" {key!r}: did you mean {close!r}?")
    return "".join(hints)


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32 if it is half or bfloat16 (autocast), unchanged if float32 or float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
