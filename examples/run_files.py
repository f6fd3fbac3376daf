"""The files of one run folder: what ``train.py`` writes, and how a run starts from them.

One run lives in one folder::

    OUT/config.json      the resolved settings (also inside every checkpoint), lineage, device
    OUT/checkpoint.pt    written atomically after every epoch; ``--resume`` continues from it
    OUT/best.pt          the best epoch of the preset's window on the monitored test PGD accuracy
    OUT/log.jsonl        one JSON object per epoch (see ``monitoring.EpochStats`` and ``monitor``)
    OUT/status.json      epochs done, whether the run is complete, the best epoch

Epochs follow one convention in every file and line: an *epoch* is named by its 0-based index, as
in ``for epoch in range(epochs)`` and ``method.set_epoch(epoch)`` (``log.jsonl``'s ``epoch``, the
best epoch, ``--lr-schedule``, ``--best-window``, plots); a *count* is ``epochs`` (asked for) or
``epochs_done`` (held by a checkpoint, an evaluation, ``status.json``), one more than the last epoch
trained. Checkpoints and evaluation files written before this convention name the count ``epoch``;
:func:`load_checkpoint` and :func:`epochs_done` read them.

The loop touches them through three calls: :func:`start` (a new, resumed or branched run),
:func:`write_start` (``config.json`` and the log kept) and :func:`save_epoch` (after every epoch).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from config import TrainConfig
from data import dataset_info
from models import build_model
from torch import Tensor, nn

CHECKPOINT_FORMAT = "instance_reweight-examples/1"
# Settings a branch must share with the run it starts from: the same network on the same data, and
# the optimiser whose state it continues.
BRANCH_FIXED = ("data", "model", "batch_size", "seed", "optimizer")
# Settings a resumed run may change: only how long it runs.
RESUME_MUTABLE = ("epochs",)


# --- writing and reading files ----------------------------------------------------------------


def state_digest(state: Any) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes, every other value's
    ``repr``, in order (lists and tuples alike, as a save/load may turn one into the other)."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"tensor {t.dtype} {tuple(value.shape)};".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(f"dict {len(value)};".encode())
            for key, item in value.items():
                feed(key)
                feed(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"seq {len(value)};".encode())
            for item in value:
                feed(item)
        else:
            digest.update(f"{value!r};".encode())

    feed(state)
    return digest.hexdigest()


def _write_replace(data: bytes, path: Path, verify: Optional[Callable[[Path], Any]] = None) -> None:
    """Writes ``data`` to a temporary file beside ``path``, fsyncs it, runs ``verify`` on it, then
    renames it over ``path`` and fsyncs the folder: ``path`` is always the old or the new whole file,
    and the old one stays until the new one is on disk and verified."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with os.fdopen(_create_exclusively(tmp), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _create_exclusively(tmp: Path) -> int:
    """A new file at ``tmp`` opened for writing, created exclusively (``O_EXCL``): whatever is
    there (a leftover of an interrupted write, or a symlink planted to redirect the write) is
    removed, never followed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        return os.open(tmp, flags, 0o666)
    except FileExistsError:
        tmp.unlink()  # removes a symlink itself, not its target
        return os.open(tmp, flags, 0o666)


def save_atomic(state: Dict[str, Any], path: Path) -> None:
    """``torch.save`` of ``state`` with its :func:`state_digest` under ``"sha256"``, written by
    :func:`_write_replace` and verified with :func:`load_checkpoint` before it replaces ``path``."""
    buffer = io.BytesIO()
    torch.save({**state, "sha256": state_digest(state)}, buffer)
    _write_replace(buffer.getvalue(), path, verify=load_checkpoint)


def write_json_atomic(obj: Any, path: Path) -> None:
    _write_replace((json.dumps(obj, indent=2) + "\n").encode(), path)


_UNREADABLE = (RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """A checkpoint written by ``train.py``, loaded with ``weights_only=True`` onto the CPU, its
    checksum verified (checkpoints written before checksums were stored load unverified).

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: for an empty, truncated or corrupted file (the checksum of its content differs
            from the one stored in it) or one not written by ``train.py``; the message names the
            file and what to do.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"Expected a checkpoint at '{path}', got no such file.")
    fix = (
        "Restore it from a copy, or delete it and train again (train.py --resume restarts a run "
        "whose checkpoint.pt is missing)."
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as err:
        size = Path(path).stat().st_size
        raise ValueError(
            f"Expected a complete checkpoint at '{path}', got a file of {size} bytes that torch.load "
            f"cannot read ({type(err).__name__}: {str(err)[:200]}). It is truncated or corrupted. {fix}"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"Expected a checkpoint written by examples/train.py ({CHECKPOINT_FORMAT}) at '{path}', "
            f"got {state.get('format') if isinstance(state, dict) else type(state).__name__}."
        )
    stored = state.pop("sha256", None)
    if stored is not None and stored != state_digest(state):
        raise ValueError(
            f"Expected the content of '{path}' to match the checksum stored with it, got a "
            f"different one: the file is corrupted (flipped bytes). {fix}"
        )
    if "epochs_done" not in state:
        state["epochs_done"] = state.pop("epoch")  # the count's name before the convention
    return state


def epochs_done(record: Dict[str, Any]) -> int:
    """The epochs an evaluation record (or checkpoint) holds: ``epochs_done``, or ``epoch`` in one
    written before the convention (the same count under its old name)."""
    return int(record["epochs_done"] if "epochs_done" in record else record["epoch"])


def model_from_checkpoint(state: Dict[str, Any]) -> nn.Module:
    """The network of a checkpoint, parameters loaded, float32, on the CPU."""
    config = TrainConfig.from_dict(state["config"])
    info = dataset_info(config.data)
    model = build_model(config.model, info.num_classes, info.in_channels)
    model.load_state_dict(state["model"])
    return model


def read_log(path: Path) -> List[Dict[str, Any]]:
    """The per-epoch records of a ``log.jsonl`` (empty if there is none).

    A last line cut short (no newline, not JSON: the process was killed while appending it) is
    dropped with a note on stderr; the epoch it logged is not in the checkpoint either (the record
    is appended before the checkpoint is written), so a resumed run trains it again.

    Raises:
        ValueError: for any other line that is not a JSON object, naming the file and the line.
    """
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number == len(lines):  # the last line, without its newline: an interrupted append
            print(
                f"note: dropped the unfinished last line of '{path}' ({len(line)} characters, "
                "cut short when the run was stopped); its epoch is trained again on --resume.",
                file=sys.stderr,
            )
        else:
            raise ValueError(
                f"Expected one JSON object per line in '{path}', got line {number} that is not "
                f"one ({line[:80]!r}). The file is corrupted: delete that line, and the run "
                "continues from its checkpoint (train.py --resume)."
            )
    return records


def read_json(path: Path) -> Dict[str, Any]:
    """A JSON object written by these scripts, empty if the file does not exist (yet)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def read_status(out: Path) -> Dict[str, Any]:
    """The run's ``status.json`` (epochs done, complete, best), empty if it has none yet."""
    return read_json(Path(out) / "status.json")


def recorded_data_root(out: Path) -> Optional[str]:
    """The ``--data-root`` the run in ``out`` was started with (its ``config.json``), if any."""
    return read_json(Path(out) / "config.json").get("data_root")


def mean_epoch_seconds(log: Sequence[Dict[str, Any]]) -> float:
    """Mean training seconds per epoch (monitoring excluded) of a log, NaN if empty."""
    seconds = [r["seconds"] for r in log if "seconds" in r]
    return sum(seconds) / len(seconds) if seconds else math.nan


def saved_config(out: Path) -> Optional[Dict[str, Any]]:
    """The settings of the run in ``out`` (from its checkpoint), or None if it has none yet."""
    checkpoint = out / "checkpoint.pt"
    return load_checkpoint(checkpoint)["config"] if checkpoint.is_file() else None


# --- the run's bookkeeping --------------------------------------------------------------------


@dataclass
class Start:
    """Where a run starts: the checkpoint it continues (None for a fresh run), its lineage (one
    segment per method it has trained with) and the log records it keeps."""

    checkpoint: Optional[Dict[str, Any]]
    lineage: List[Dict[str, Any]]
    log: List[Dict[str, Any]]
    resumed: bool

    @property
    def epoch(self) -> int:
        """The first epoch to train (0-based): the epochs the checkpoint holds."""
        return 0 if self.checkpoint is None else int(self.checkpoint["epochs_done"])

    @property
    def best(self) -> Optional[Dict[str, Any]]:
        """The run's best epoch so far; a branch starts its own."""
        return self.checkpoint.get("best") if self.resumed and self.checkpoint else None

    @property
    def burn_in(self) -> Optional[Dict[str, Any]]:
        """The burn-in state to continue; a branch starts its method's own."""
        return self.checkpoint["burn_in"] if self.resumed and self.checkpoint else None


def start(config: TrainConfig, out: Path, resume: bool, init_from: Optional[Path]) -> Start:
    """Reads what a new (nothing), resumed (``out``'s checkpoint) or branched (``init_from``) run
    starts from, after checking that its settings may continue or branch from it."""
    checkpoint = out / "checkpoint.pt"
    segment = {"method": config.method, "variant": config.variant, "overrides": config.overrides}
    if resume and checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        _check_same(
            _with_defaults(state["config"]),
            config.to_dict(),
            [k for k in state["config"] if k not in RESUME_MUTABLE],
            "settings as the run being resumed",
            "Resume with the run's own settings (train.py --out OUT --resume alone reads them), or "
            "branch a new run with --init-from.",
        )
        return Start(state, list(state["lineage"]), _log_before(out, state), resumed=True)
    if checkpoint.is_file():
        raise ValueError(
            f"Expected an empty run folder, got a checkpoint in '{out}'. Pass --resume to continue "
            "that run, or choose another --out."
        )
    if init_from is None:
        return Start(None, [{**segment, "first_epoch": 0}], [], resumed=False)
    state = load_checkpoint(init_from)
    _check_same(
        _with_defaults(state["config"]),
        config.to_dict(),
        BRANCH_FIXED,
        "data, model, batch size and seed as the checkpoint branched from",
        "Branch with the prefix's settings (the same --preset).",
    )
    lineage = list(state["lineage"]) + [{**segment, "first_epoch": int(state["epochs_done"])}]
    return Start(state, lineage, _log_before(init_from.parent, state), resumed=False)


def _with_defaults(saved: Dict[str, Any]) -> Dict[str, Any]:
    """A saved config with the settings added since it was written at their defaults (their old
    meaning, e.g. ``optimizer="sgd"``)."""
    return TrainConfig.from_dict(saved).to_dict()


def _check_same(
    old: Dict[str, Any], new: Dict[str, Any], keys: Sequence[str], what: str, fix: str
) -> None:
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    if diff:
        raise ValueError(f"Expected the same {what}, got {'; '.join(diff)}. {fix}")


def _log_before(folder: Path, state: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The log records of ``folder`` for the epochs its checkpoint ``state`` holds."""
    return [r for r in read_log(folder / "log.jsonl") if r["epoch"] < state["epochs_done"]]


def write_start(
    out: Path,
    config: TrainConfig,
    lineage: List[Dict[str, Any]],
    log: List[Dict[str, Any]],
    *,
    data_root: str,
    method: str,
    device: str,
    processes: int,
    compile: bool,
    channels_last: bool,
) -> None:
    """Writes ``config.json`` (what runs, and where and how) and ``log.jsonl`` with the records kept."""
    write_json_atomic(
        {
            "config": config.to_dict(),
            "data_root": data_root,
            "lineage": lineage,
            "method": method,
            "device": device,
            "processes": processes,
            "torch": torch.__version__,
            "compile": compile,
            "channels_last": channels_last,
        },
        out / "config.json",
    )
    _write_replace("".join(json.dumps(r) + "\n" for r in log).encode(), out / "log.jsonl")


def save_epoch(
    out: Path,
    config: TrainConfig,
    record: Dict[str, Any],
    training_state: Dict[str, Any],
    best: Optional[Dict[str, Any]],
) -> Optional[Dict[str, Any]]:
    """Appends the epoch's log record, then writes ``best.pt`` (if the epoch improves on ``best``),
    ``checkpoint.pt`` and ``status.json``; returns the best epoch so far.

    ``training_state`` is what continues the run: ``model``, ``optimizer`` and ``burn_in`` state
    dicts and the ``lineage``.
    """
    _append_line(out / "log.jsonl", json.dumps(record))
    done = record["epoch"] + 1
    header = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "epochs_done": done}
    if _improves(config, record, best):
        best = {"epoch": record["epoch"], "test_pgd_acc": record["test_pgd_acc"]}
        save_atomic({**header, "model": training_state["model"], "best": best}, out / "best.pt")
    save_atomic({**header, **training_state, "best": best}, out / "checkpoint.pt")
    write_json_atomic(
        {
            "epochs_done": done,
            "epochs": config.epochs,
            "complete": done >= config.epochs,
            "best": best,
        },
        out / "status.json",
    )
    return best


def _append_line(path: Path, line: str) -> None:
    """Appends ``line`` and a newline in one write, then fsyncs: a process killed meanwhile leaves
    at most an unfinished last line, which :func:`read_log` drops."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _improves(config: TrainConfig, record: Dict[str, Any], best: Optional[Dict[str, Any]]) -> bool:
    """Whether the epoch is in the best-checkpoint window and beats ``best`` on test PGD accuracy."""
    window, score = config.best_window, record.get("test_pgd_acc")
    if not window or score is None or not window[0] <= record["epoch"] <= window[1]:
        return False
    return best is None or score > best["test_pgd_acc"]
