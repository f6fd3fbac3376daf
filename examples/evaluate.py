"""Evaluates a checkpoint of ``train.py`` with ``ir.evaluation``: one protocol, JSON out.

Examples::

    python examples/evaluate.py runs/mail-resnet18-mail-at-s0/checkpoint.pt --protocol mail
    python examples/evaluate.py runs/x/best.pt --protocol gairat --attacks natural,pgd20,pgd+ \\
        --out runs/x/eval-best.json
    python examples/evaluate.py runs/x --eps 0.3 --attacks aa,apgd-ce,apgd-t,pgd20-ls \\
        --num-examples 1000 --name aa      # -> runs/x/eval-last-aa.json

The network runs in eval mode and float32 (``ir.evaluation`` switches autocast off), on the test split
of the data set it was trained on. Attacks run one at a time and the JSON is rewritten after each, so
an interrupted evaluation continues where it stopped when run again with the same arguments (each
attack's result is kept only if the checkpoint's epoch and the attack's settings are unchanged).
Accuracies are fractions in [0, 1].

The JSON keeps every image's outcome under every attack (``"records"``: True = still classified
correctly, for ``natural`` = correctly classified), for the test images ``first`` .. ``first + n − 1``,
packed with :func:`paired_stats.pack_flags`; :func:`read_records` unpacks them. An attack limited to
fewer images (e.g. the MAIL protocol's AutoAttack on the first 1,000) has its count in ``"n_of"``.
Besides ``ir.evaluation``'s attacks, ``apgd-t`` is AutoAttack's APGD-T on its own (9 target classes,
100 iterations, as inside AutoAttack standard), so one evaluation can report AutoAttack standard and
its APGD-CE and APGD-T side by side.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import arguments
import numpy as np
import paired_stats
import run_files
import torch
from config import TrainConfig, device_name, make_method, resolve_device
from data import DeviceLoader, load_dataset
from torch import nn

from instance_reweight import evaluation

# Attacks that need an optional package: checked before any work, not when their turn comes.
OPTIONAL_PACKAGES = {"aa": "pyautoattack", "apgd-ce": "pyautoattack", "apgd-t": "pyautoattack"}

# Attacks of this script that are one of ir.evaluation's with fixed options, under a name of their
# own (so that one evaluation can hold both): name -> (ir.evaluation attack, its options).
VARIANTS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "apgd-t": ("aa", {"version": "custom", "attacks": ["apgd-t"]}),
}
ATTACKS: Tuple[str, ...] = (*evaluation.ATTACKS, *VARIANTS)


def check_optional_packages(attacks: Sequence[str]) -> None:
    """Raises ``ImportError`` naming the package and the install command if an attack needs a
    package that is not installed."""
    missing = {a: OPTIONAL_PACKAGES[a] for a in attacks if a in OPTIONAL_PACKAGES}
    missing = {a: package for a, package in missing.items() if find_spec(package) is None}
    if missing:
        packages = sorted(set(missing.values()))
        raise ImportError(
            f"Expected the optional package {', '.join(packages)} for the attacks "
            f"{', '.join(missing)}, got it not installed. Install it with "
            "pip install 'instance-reweight[evaluation]' (pyautoattack==0.2.0), or leave those "
            "attacks out with --attacks."
        )


def trained_params(state: Dict[str, Any]) -> Dict[str, Any]:
    """The hyper-parameters the checkpoint's run trained with (ε, clip, ...; its overrides applied)."""
    config = TrainConfig.from_dict(state["config"])
    return dict(make_method(config, nn.Linear(1, 1)).params)


def resolve_threat(
    trained: Dict[str, Any],
    eps: Union[float, str, None],
    protocol: Optional[str],
    norm: Optional[str] = None,
) -> Tuple[float, str, str]:
    """``(ε, norm, where they came from)``: the protocol's ball for ``eps="protocol"``, else ``eps``
    if a number, else the ε the run trained with (``trained``: its :func:`trained_params`); the
    norm is ``norm`` if given, else the one that goes with ε (the protocol's, or the run's)."""
    if eps == "protocol":
        preset = evaluation.settings(protocol=protocol, attacks=("natural",))
        return float(preset["eps"]), norm or preset["norm"], f"protocol {protocol or 'default'}"
    norm = norm or trained.get("norm", "linf")
    if eps is None:
        return float(trained["eps"]), norm, "the checkpoint's training config"
    return float(eps), norm, "--eps"


def eps_tag(eps: float) -> str:
    """ε for a file name: ``8-255`` for 8/255, else ``0.031``."""
    pixels = eps * 255
    return f"{round(pixels)}-255" if abs(pixels - round(pixels)) < 1e-6 else f"{eps:g}"


def default_out(
    checkpoint: Path,
    protocol: Optional[str],
    eps: float,
    norm: str = "linf",
    name: Optional[str] = None,
) -> Path:
    """``eval-<last|best>-<name>.json`` beside the checkpoint, or without a ``name``
    ``eval-<last|best>-<protocol>-eps<ε>.json``: one file per protocol and ε, so a second
    evaluation never overwrites the first."""
    stem = checkpoint.stem.replace("checkpoint", "last")
    if name is not None:
        return checkpoint.with_name(f"eval-{stem}-{name}.json")
    ball = "" if norm == "linf" else f"-{norm}"
    return checkpoint.with_name(f"eval-{stem}-{protocol or 'default'}{ball}-eps{eps_tag(eps)}.json")


def checkpoint_file(path: Path) -> Path:
    """``path`` itself, or a run folder's final ``checkpoint.pt``."""
    return path / "checkpoint.pt" if path.is_dir() else path


def attack_settings(
    *,
    attacks: Optional[Sequence[str]],
    options: Optional[Dict[str, Dict[str, Any]]] = None,
    **common: Any,
) -> Dict[str, Any]:
    """:func:`ir.evaluation.settings` for :data:`ATTACKS`: a variant (:data:`VARIANTS`) takes its
    base attack's settings (the protocol's too) with its fixed options, then the user's.

    Args:
        attacks: names among :data:`ATTACKS` (``None``: the protocol's).
        options: per-attack options, keyed by these names.
        **common: ``eps``, ``norm``, ``protocol``, ``num_examples`` and ``clip`` of
            :func:`ir.evaluation.settings`.

    Raises:
        ValueError: an unknown attack, an option for an attack not run, or a bad setting.
    """
    names = (
        list(evaluation.settings(attacks=attacks, **common)["attacks"])
        if attacks is None
        else list(attacks)
    )
    unknown = [name for name in names if name not in ATTACKS]
    if unknown or not names:
        raise ValueError(f"Expected attacks among {', '.join(ATTACKS)}, got {unknown or 'none'}.")
    extra = sorted(set(options or {}) - set(names))
    if extra:
        raise ValueError(
            f"Expected --options keys among the attacks run {names}, got {extra}; add them to "
            "--attacks or drop their options."
        )
    out: Dict[str, Any] = {"attacks": {}, "num_examples": {}}
    for name in dict.fromkeys(names):
        base, fixed = VARIANTS.get(name, (name, {}))
        given = {**fixed, **(options or {}).get(name, {})}
        one = evaluation.settings(attacks=(base,), options={base: given}, **common)
        out.update(eps=one["eps"], norm=one["norm"])
        out["attacks"][name] = one["attacks"][base]
        out["num_examples"][name] = one["num_examples"][base]
    return {key: out[key] for key in ("eps", "norm", "attacks", "num_examples")}


def read_records(record: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """The per-image outcomes of an evaluation JSON, ``{attack: (n,) bool}`` (True: still correct
    under that attack) for test images ``first`` ..; empty for a JSON written before records."""
    records = record.get("records")
    if records is None:
        return {}
    sizes = records.get("n_of", {})
    return {
        name: paired_stats.unpack_flags(text, sizes.get(name, records["n"]))
        for name, text in records["flags"].items()
    }


def _records(flags: Dict[str, str], sizes: Dict[str, int]) -> Dict[str, Any]:
    """The JSON's ``"records"``: ``n`` images for every attack, but those in ``n_of``."""
    n = max(sizes.values(), default=0)
    out: Dict[str, Any] = {"first": 0, "n": n, "flags": flags}
    fewer = {name: size for name, size in sizes.items() if size != n}
    if fewer:
        out["n_of"] = fewer
    return out


def evaluate_checkpoint(
    checkpoint: Path,
    *,
    data_root: str,
    protocol: Optional[str] = None,
    attacks: Optional[Sequence[str]] = None,
    eps: Union[float, str, None] = None,
    norm: Optional[str] = None,
    options: Optional[Dict[str, Dict[str, Any]]] = None,
    num_examples: Optional[int] = None,
    batch_size: int = 500,
    device: Optional[str] = None,
    out: Optional[Path] = None,
    max_minutes: Optional[float] = None,
    progress: bool = True,
    state: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Evaluates one checkpoint; returns (and writes to ``out``, if given) the result record.

    Args:
        checkpoint: a ``checkpoint.pt`` or ``best.pt`` of ``train.py``, or a run folder (its
            ``checkpoint.pt``).
        data_root: folder holding the data set the run was trained on.
        protocol: ``"gairat"``, ``"mail"``, ``"robustbench"`` or ``None`` (``ir.evaluation``'s default).
        attacks: attack names among :data:`ATTACKS` (default: the protocol's).
        eps: radius: a number, ``None`` for the ε the checkpoint's run trained with, or
            ``"protocol"`` for the protocol's (e.g. MAIL's 0.031, as ``reproduce.py`` uses).
        norm: ``"linf"`` or ``"l2"`` (default: the protocol's with ``eps="protocol"``, else the
            norm the run trained with).
        options: per-attack options, e.g. ``{"pgd20": {"step_size": 0.003}}``.
        num_examples: evaluate only the first ``n`` test images (default: the protocol's subsets).
        batch_size: examples per attack call.
        device: where to run (default: cuda if available, else cpu).
        out: JSON file to write after every attack (its folder must exist); results already
            there are reused.
        max_minutes: start no attack after this many minutes (the record says ``"complete": false``).
        progress: show progress bars.
        state: the checkpoint already loaded with :func:`run_files.load_checkpoint` (else it is).

    Returns:
        ``{"checkpoint", "epochs_done", "config", "protocol", "eps_from", "settings", "accuracy":
        {attack: acc}, "seconds": {attack: s}, "complete", "device", "torch", "records": {"first",
        "n", "flags": {attack: packed outcomes}}, ...}`` (see :func:`read_records`).

    Raises:
        ImportError: if an attack needs an optional package that is missing, before any work.
        FileNotFoundError: no checkpoint, or no folder for ``out``, before any work.
        ValueError: an unknown attack or option, a bad setting, or an ``out`` that cannot be
            written, before any work.
    """
    start = time.perf_counter()
    if out is not None:
        arguments.check_output_file(Path(out), "--out")
    checkpoint = checkpoint_file(Path(checkpoint))
    state = run_files.load_checkpoint(checkpoint) if state is None else state
    config = TrainConfig.from_dict(state["config"])
    trained = trained_params(state)
    clip = trained["clip"]
    eps_value, norm_value, eps_from = resolve_threat(trained, eps, protocol, norm)
    settings = attack_settings(
        attacks=attacks,
        eps=eps_value,
        norm=norm_value,
        protocol=protocol,
        options=options,
        num_examples=num_examples,
        clip=clip,
    )
    check_optional_packages(list(settings["attacks"]))
    where = resolve_device(device)
    model = run_files.model_from_checkpoint(state).to(where)
    record: Dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "epochs_done": int(state["epochs_done"]),
        "config": state["config"],
        "protocol": protocol,
        "eps_from": eps_from,
        "settings": settings,
        "accuracy": {},
        "seconds": {},
        "complete": False,
        "mode": "eval, float32",
        "device": device_name(where),
        "torch": torch.__version__,
        "records": _records({}, {}),
    }
    previous = _previous(out, record)
    flags: Dict[str, str] = {}
    sizes: Dict[str, int] = {}
    images, labels = load_dataset(config.data, data_root, train=False, size=config.test_size)
    loader = DeviceLoader(images, labels, batch_size=batch_size, shuffle=False, device=where)
    for name, params in settings["attacks"].items():
        if name in previous:
            kept = previous[name]
            record["accuracy"][name], record["seconds"][name] = kept["accuracy"], kept["seconds"]
            flags[name], sizes[name] = kept["flags"], kept["n"]
            record["records"] = _records(flags, sizes)
            continue
        if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
            break
        tic = time.perf_counter()
        limit = settings["num_examples"][name]
        base = VARIANTS.get(name, (name, {}))[0]
        (mask,) = evaluation.robust_masks(
            model,
            loader,
            attacks=(base,),
            eps=settings["eps"],
            norm=settings["norm"],
            options={base: params},
            num_examples=None if limit is None else {base: limit},
            batch_size=batch_size,
            clip=clip,
            progress=progress,
        ).values()
        record["accuracy"][name] = int(mask.sum()) / mask.numel()
        record["seconds"][name] = time.perf_counter() - tic
        flags[name], sizes[name] = paired_stats.pack_flags(mask.numpy()), mask.numel()
        record["records"] = _records(flags, sizes)
        if out is not None:
            run_files.write_json_atomic(record, out)
    record["complete"] = len(record["accuracy"]) == len(settings["attacks"])
    if out is not None:
        run_files.write_json_atomic(record, out)
    return record


def _previous(out: Optional[Path], record: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The results in ``out`` that still apply, ``{attack: {"accuracy", "seconds", "flags", "n"}}``:
    same checkpoint epoch and config, same settings, and the per-image records kept (an attack of a
    JSON written before records runs again)."""
    if out is None or not out.is_file():
        return {}
    old = json.loads(out.read_text())
    same_epochs = "config" in old and run_files.epochs_done(old) == record["epochs_done"]
    same_run = same_epochs and old["config"] == record["config"]
    ball = ("eps", "norm")
    same = same_run and all(old.get("settings", {}).get(k) == record["settings"][k] for k in ball)
    if not same:
        return {}
    outcomes = old.get("records", {"flags": {}})
    sizes = {name: len(mask) for name, mask in read_records(old).items()}
    return {
        name: {
            "accuracy": old["accuracy"][name],
            "seconds": old["seconds"][name],
            "flags": outcomes["flags"][name],
            "n": sizes[name],
        }
        for name, params in record["settings"]["attacks"].items()
        if name in old.get("accuracy", {})
        and name in sizes
        and old["settings"]["attacks"].get(name) == json.loads(json.dumps(params))
        and old["settings"]["num_examples"].get(name) == record["settings"]["num_examples"][name]
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint", type=Path, help="checkpoint.pt or best.pt of train.py, or its run folder"
    )
    parser.add_argument(
        "--protocol",
        choices=sorted(evaluation.PROTOCOLS),
        help="evaluation preset (default: natural, pgd20, pgd20-ls, aa at 8/255)",
    )
    parser.add_argument(
        "--attacks",
        help=f"comma-separated, among {', '.join(ATTACKS)} (apgd-t: AutoAttack's APGD-T alone)",
    )
    parser.add_argument(
        "--eps",
        type=_eps_arg,
        help="radius, or 'protocol' for the protocol's (default: the ε the run trained with)",
    )
    parser.add_argument(
        "--norm",
        choices=evaluation.NORMS,
        help="threat model (default: the protocol's with --eps protocol, else the run's)",
    )
    parser.add_argument(
        "--options",
        type=_options_arg,
        help='per-attack options as JSON, e.g. \'{"pgd20": {"step_size": 0.003}}\'',
    )
    parser.add_argument(
        "--num-examples",
        type=arguments.numeric(arguments.AT_LEAST_ONE, integer=True),
        help="only the first N test images",
    )
    parser.add_argument(
        "--batch-size", type=arguments.numeric(arguments.AT_LEAST_ONE, integer=True), default=500
    )
    parser.add_argument(
        "--data-root", help="default: the run's own --data-root (its config.json), else data"
    )
    parser.add_argument(
        "--device", type=arguments.device, help="default: cuda if available, else cpu"
    )
    parser.add_argument(
        "--name",
        type=_name_arg,
        help="write eval-<last|best>-NAME.json beside the checkpoint (an evaluation pass's name)",
    )
    parser.add_argument(
        "--out",
        type=arguments.output_file("--out"),
        help="JSON file, in a folder that exists (default: eval-<last|best>-<protocol>-eps<ε>.json "
        "beside the checkpoint)",
    )
    parser.add_argument(
        "--max-minutes",
        type=arguments.numeric(arguments.NON_NEGATIVE, example="30"),
        help="start no attack after this many minutes",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Runs ``evaluate.py`` with ``argv``; returns the result record."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.name is not None and args.out is not None:
        parser.error(
            "expected --name (eval-<last|best>-NAME.json beside the checkpoint) or --out (the "
            "file itself), got both; give one"
        )
    checkpoint = checkpoint_file(args.checkpoint)
    state = run_files.load_checkpoint(checkpoint)
    eps, norm, _ = resolve_threat(trained_params(state), args.eps, args.protocol, args.norm)
    out = arguments.check_output_file(
        args.out or default_out(checkpoint, args.protocol, eps, norm, args.name), "--out"
    )
    data_root = args.data_root or run_files.recorded_data_root(checkpoint.parent) or "data"
    record = evaluate_checkpoint(
        checkpoint,
        data_root=data_root,
        protocol=args.protocol,
        attacks=args.attacks.split(",") if args.attacks else None,
        eps=args.eps,
        norm=args.norm,
        options=args.options,
        num_examples=args.num_examples,
        batch_size=args.batch_size,
        device=args.device,
        out=out,
        max_minutes=args.max_minutes,
        progress=not args.no_progress,
        state=state,
    )
    accuracy = ", ".join(f"{k} {100 * v:.2f}%" for k, v in record["accuracy"].items())
    done = "" if record["complete"] else " (incomplete: run again to continue)"
    print(
        f"{checkpoint} (after epoch {record['epochs_done'] - 1}, 0-based), protocol "
        f"{args.protocol or 'default'}, ε = {eps:.4g} ({_BALL[norm]}, "
        f"{eps_tag(eps).replace('-', '/')}; from "
        f"{record['eps_from']}): {accuracy}{done} -> {out}"
    )
    return record


_BALL = {"linf": "ℓ∞", "l2": "ℓ2"}


def _name_arg(text: str) -> str:
    if not text or not all(c.isalnum() or c in "._-" for c in text):
        raise argparse.ArgumentTypeError(
            f"expected a pass name of letters, digits, '.', '_' or '-' (e.g. full), got {text!r}"
        )
    return text


def _eps_arg(text: str) -> Union[float, str]:
    if text == "protocol":
        return text
    try:
        return _RADIUS(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"Expected a finite number >= 0 (e.g. 0.0314 or 8/255) or 'protocol', got {text!r}"
        ) from None


_RADIUS = arguments.numeric(arguments.NON_NEGATIVE)


def _options_arg(text: str) -> Dict[str, Dict[str, Any]]:
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        options = err
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise argparse.ArgumentTypeError(
            "Expected a JSON object of per-attack option objects, e.g. "
            f'\'{{"pgd20": {{"step_size": 0.003}}}}\', got {text!r}'
        )
    return options


if __name__ == "__main__":
    arguments.run(main, "evaluate.py")
