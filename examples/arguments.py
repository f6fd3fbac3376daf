"""The scripts' command lines: flags checked when they are parsed, and how a user's mistake is told.

Every numeric flag has an argparse ``type=`` from :func:`numeric`: a finite number (``8/255`` is read
as the fraction) in the flag's :class:`Bounds`, so a bad value is refused before any data is read or
file written, with argparse's exit status 2. ``--device`` (:func:`device`) and the output paths
(:func:`output_folder`, :func:`output_file`) are checked the same way.

A *user error* is what :func:`run` reports in one line with exit status 2 instead of a traceback: a
``ValueError``, ``TypeError``, ``OSError`` or ``ImportError`` whose message follows the house rule
(it starts with ``Expected``) and that was raised by this package's code (``examples/``,
``benchmarks/``, ``instance_reweight``), i.e. by a validator or a file check. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

import instance_reweight as ir

Number = Union[int, float]


@dataclass(frozen=True)
class Bounds:
    """A range of finite numbers: ``low`` and ``high`` included unless ``open_low``/``open_high``.

    Example:
        >>> Bounds(0, open_low=True), Bounds(0, 1, open_high=True), Bounds(1)
        (> 0, in [0, 1), >= 1)
    """

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: Number) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return math.isfinite(value) and above and below

    def __repr__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"

    def check(self, value: Any, what: str, integer: bool = False) -> Number:
        """``value`` if it is a finite number (an ``int`` if ``integer``) in these bounds, else a
        ``TypeError`` or ``ValueError`` naming ``what``."""
        kinds = (int,) if integer else (int, float)
        noun = "an integer" if integer else "a finite number"
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise TypeError(f"Expected {what} to be {noun} {self}, got {value!r}.")
        if value not in self:
            raise ValueError(f"Expected {what} to be {noun} {self}, got {value!r}.")
        return value


POSITIVE = Bounds(0, open_low=True)
NON_NEGATIVE = Bounds(0)
AT_LEAST_ONE = Bounds(1)

_FRACTION = re.compile(r"\s*([^/\s]+)\s*/\s*([^/\s]+)\s*")


def parse_number(text: str) -> float:
    """A float from ``"0.1"``, ``"1e-3"`` or a fraction ``"8/255"``; ``ValueError`` otherwise.

    Example:
        >>> parse_number("8/255") == 8 / 255, parse_number("0.5")
        (True, 0.5)
    """
    fraction = _FRACTION.fullmatch(text)
    if fraction is None:
        return float(text)
    numerator, denominator = (float(part) for part in fraction.groups())
    if denominator == 0:  # not a finite number: the callers refuse it as they refuse inf
        return math.nan if numerator == 0 else math.copysign(math.inf, numerator)
    return numerator / denominator


def numeric(bounds: Bounds, integer: bool = False, example: str = "") -> Callable[[str], Number]:
    """An argparse ``type=``: the flag's text as an ``int`` (``integer``) or a finite float (a
    fraction like ``8/255`` allowed) in ``bounds``; anything else is refused at parse time."""
    noun = "an integer" if integer else "a finite number (or a fraction like 8/255)"
    hint = f", e.g. {example}" if example else ""

    def parse(text: str) -> Number:
        try:
            value: Number = int(text) if integer else parse_number(text)
        except ValueError:
            value = math.nan
        if value not in bounds:
            raise argparse.ArgumentTypeError(f"Expected {noun} {bounds}{hint}, got {text!r}")
        return value

    return parse


def device(text: str) -> str:
    """An argparse ``type=`` for ``--device``: a device torch knows (``cpu``, ``cuda``,
    ``cuda:1``, ``mps``) that this machine has."""
    try:
        where = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"Expected a device such as cpu, cuda or cuda:1, got {text!r}"
        ) from None
    if where.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (where.index is not None and where.index >= count):
            have = f"GPUs cuda:0..cuda:{count - 1}" if count else "no CUDA GPU"
            raise argparse.ArgumentTypeError(
                f"Expected a device this machine has, got {text!r} ({have}); pass --device cpu "
                "or leave --device out"
            )
    elif where.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(
            f"Expected a device this machine has, got {text!r} (MPS is not available); pass "
            "--device cpu or leave --device out"
        )
    elif where.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"Expected cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def check_writable_folder(path: Path, flag: str) -> Path:
    """``path`` if it is a folder this process may write in, or one it may create (its nearest
    existing ancestor is a writable folder); else a ``ValueError`` naming ``flag``."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor or "."))
    if not existing.is_dir():
        raise ValueError(
            f"Expected {flag} '{path}' to be a folder or a path one can be made at, got '{existing}' "
            "that is a file. Pick another path."
        )
    _check_can_write_in(existing, path, flag)
    return path


def _check_can_write_in(folder: Path, path: Path, flag: str) -> None:
    """Creates and removes a temporary file in ``folder``: the one test that holds for every user
    (root included) and file system (read-only mounts, ``/proc``)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(
            f"Expected {flag} '{path}' to be writable, got '{folder}' where no file can be made "
            f"({err.strerror}). Pick a folder of your own, or change its permissions."
        ) from None


def check_output_file(path: Path, flag: str) -> Path:
    """``path`` if it may be written as a file: its folder exists and is writable, and it is not
    a folder itself; else a ``FileNotFoundError`` or ``ValueError`` naming ``flag``."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"Expected the folder of {flag} '{path}' to exist, got no folder '{path.parent}'; "
            "create it first (mkdir -p) or pick another path."
        )
    if path.is_dir():
        raise ValueError(
            f"Expected {flag} '{path}' to be a file, got a folder. Name a file in it instead."
        )
    _check_can_write_in(path.parent, path, flag)
    return path


def output_folder(flag: str) -> Callable[[str], Path]:
    """An argparse ``type=`` for a folder the script writes in: :func:`check_writable_folder`."""
    return _as_argument_type(lambda text: check_writable_folder(Path(text), flag))


def output_file(flag: str) -> Callable[[str], Path]:
    """An argparse ``type=`` for a file the script writes: :func:`check_output_file`."""
    return _as_argument_type(lambda text: check_output_file(Path(text), flag))


def _as_argument_type(check: Callable[[str], Path]) -> Callable[[str], Path]:
    def parse(text: str) -> Path:
        try:
            return check(text)
        except (ValueError, FileNotFoundError) as err:
            raise argparse.ArgumentTypeError(str(err).rstrip(".")) from None

    return parse


USER_ERRORS = (ValueError, TypeError, OSError, ImportError)
_EXAMPLES = Path(__file__).resolve().parent
# The scripts' own code: examples/, the benchmarks beside it, and the library.
_OURS = (
    str(_EXAMPLES),
    str(_EXAMPLES.parent / "benchmarks"),
    str(Path(ir.__file__).resolve().parent),
)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is a user's mistake (see the module docstring): a :data:`USER_ERRORS` with
    an ``Expected …`` message, raised by this package's code."""
    if not isinstance(err, USER_ERRORS) or not str(err).startswith("Expected"):
        return False
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(_OURS)


def run(main: Callable[[Optional[Sequence[str]]], Any], prog: str) -> None:
    """Runs a script's ``main``: a user error (:func:`is_user_error`) is one line on stderr,
    ``<prog>: error: <message>``, and exit status 2 (argparse's); any other exception is raised
    with its traceback."""
    try:
        main(None)
    except USER_ERRORS as err:
        if not is_user_error(err):
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
