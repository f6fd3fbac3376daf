"""Input checks shared by the public pieces (each raises with "Expected …, got …" and the fix), and
the dtype rule they share."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def check_tensor(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, got {type(value).__name__}.")
    return value


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


def check_logits(logits: object, n: int | None = None, name: str = "logits") -> Tensor:
    logits = check_tensor(logits, name)
    if logits.dim() != 2 or (n is not None and logits.shape[0] != n):
        expected = f"({n}, C)" if n is not None else "(N, C)"
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


def raise_if_invalid(
    labels_ok: Tensor, finite: Tensor, y: Tensor, num_classes: int, what: str
) -> None:
    """Report out-of-range labels or non-finite logits from two device flags, with one synchronisation."""
    labels_fine, logits_fine = torch.stack([labels_ok, finite]).tolist()
    if not labels_fine:
        check_label_range(y, num_classes)
    if not logits_fine:
        raise ValueError(
            f"Expected finite {what}, got NaN or Inf; check the model (diverged weights, or inputs on "
            "the wrong scale)."
        )


def check_finite(t: Tensor, name: str) -> None:
    """One host synchronisation: call outside hot loops."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"Expected finite values in `{name}`, got NaN or Inf; check the data pipeline or, for "
            "logits, the model (a diverged model or a wrong input range)."
        )


def check_number(value: object, name: str, *, minimum: float, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected `{name}` to be a number, got {type(value).__name__}.")
    value = float(value)
    if value != value or (value <= minimum if strict else value < minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"Expected `{name}` {bound}, got {value}.")
    return value


def check_int(value: object, name: str, minimum: int, hint: str = "") -> int:
    """An int (not a bool) of at least ``minimum``; ``hint`` says what the number is."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Expected `{name}` to be an int >= {minimum}{hint}, got {value!r}.")
    return value


def check_clip(clip: object) -> Optional[Tuple[float, float]]:
    """``(low, high)`` as floats with ``low < high``, or ``None`` for inputs that are not images."""
    if clip is None:
        return None
    if (
        not isinstance(clip, (tuple, list))
        or len(clip) != 2
        or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in clip)
        or not clip[0] < clip[1]
    ):
        raise ValueError(f"Expected `clip` as (low, high) with low < high, or None; got {clip!r}.")
    return float(clip[0]), float(clip[1])


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"Expected `{name}` to be one of {', '.join(map(repr, choices))}, got {value!r}."
        )
    return value


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32 if it is half or bfloat16 (autocast), unchanged if float32 or float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
