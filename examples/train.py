"""Adversarial training with any method of ``ir.methods`` on CIFAR-10/100, SVHN or MNIST.

Examples::

    # MAIL-AT on ResNet-18 as in MAIL Table 2 (prints the recipe and where it deviates)
    python examples/train.py --preset mail-resnet18 --method mail-at --data-root data

    # continue it after an interruption, bit-exact (the same command with --resume, or just this)
    python examples/train.py --out runs/mail-resnet18-mail-at-s0 --resume

    # one shared burn-in prefix, then several methods from it
    python examples/train.py --preset mail-resnet18 --method at --stop-after 74 --out runs/prefix
    python examples/train.py --preset mail-resnet18 --method gairat --init-from runs/prefix/checkpoint.pt

    # several GPUs (global batch 128 split over them; exact global weights)
    torchrun --nproc_per_node 4 examples/train.py --preset mail-wrn32 --method mail-at --normalize global

See ``docs/examples.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import arguments
import run_files
import training
from arguments import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, numeric
from config import (
    MOMENTUM,
    OPTIMIZERS,
    Runtime,
    TrainConfig,
    accepted_overrides,
    parse_schedule,
    resolve_device,
)
from data import DATASETS
from models import MODELS
from presets import PRESETS, get_preset

import instance_reweight as ir


def parse_set(items: Sequence[str]) -> Dict[str, Any]:
    """``["lam=-1", "clip=null", "eps=8/255"]`` -> ``{"lam": -1, "clip": None, "eps": 0.0313...}``.

    Values are read as JSON when they parse (numbers, ``null``, ``true``, lists), as a number when
    they are a fraction (``8/255``), else as strings; NaN and ±Infinity are refused.
    """
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"Expected --set KEY=VALUE (e.g. --set lam=-1), got {item!r}.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            try:
                out[key] = arguments.parse_number(value)
            except ValueError:
                out[key] = value  # a word, e.g. random_start=normal
        if isinstance(out[key], float) and not math.isfinite(out[key]):
            raise ValueError(
                f"Expected --set {key}=VALUE with a finite number, got {item!r}. Give e.g. "
                f"--set {key}=0.1 (or a fraction, 8/255)."
            )
    return out


def parse_lr_schedule(text: str) -> List[List[float]]:
    """``"60:0.01,90:0.001"`` -> ``[[60, 0.01], [90, 0.001]]`` (0-based epoch: new learning rate)."""
    return parse_schedule(text, "--lr-schedule", float, "75:0.01,90:0.001", "LR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Presets: "
        + ", ".join(PRESETS)
        + " (--list-presets says what each follows). Docs: docs/examples.md.",
    )
    what = parser.add_argument_group("what to train (defaults: the preset's, else TrainConfig's)")
    what.add_argument("--preset", help="a paper recipe; see --list-presets")
    what.add_argument("--list-presets", action="store_true", help="describe the presets and exit")
    what.add_argument("--method", help=f"one of {', '.join(ir.methods.names())}")
    what.add_argument(
        "--variant",
        choices=("paper", "official"),
        help="the papers' equations (default) or the official code's objective",
    )
    what.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a hyper-parameter of the method (repeatable), e.g. --set lam=-1 --set eps=0.031",
    )
    what.add_argument(
        "--normalize",
        choices=("batch", "global", "none"),
        help="weight normalisation of reweighting methods; 'global' makes DDP runs equal single-GPU ones",
    )
    what.add_argument(
        "--norm",
        choices=ir.attack.NORMS,
        help="threat model of training and monitoring (set --set eps=... --set step_size=... with it)",
    )
    what.add_argument(
        "--eps-ramp-epochs",
        type=numeric(NON_NEGATIVE, example="5"),
        metavar="T",
        help="ε and the attack step grow linearly per batch from 0 to their values over the first T "
        "epochs (0: none)",
    )
    what.add_argument("--data", choices=sorted(DATASETS))
    what.add_argument("--model", choices=sorted(MODELS))
    what.add_argument("--epochs", type=numeric(AT_LEAST_ONE, integer=True))
    what.add_argument(
        "--batch-size", type=numeric(AT_LEAST_ONE, integer=True), help="global batch size"
    )
    what.add_argument("--lr", type=numeric(POSITIVE, example="0.1"), help="initial learning rate")
    what.add_argument("--lr-schedule", help="EPOCH:LR,... (0-based epochs), e.g. 75:0.01,90:0.001")
    what.add_argument(
        "--optimizer", choices=OPTIMIZERS, help="sgd (default) or adam (default betas, no momentum)"
    )
    what.add_argument(
        "--momentum",
        type=numeric(MOMENTUM, example="0.9"),
        help="SGD momentum (refused with --optimizer adam)",
    )
    what.add_argument("--weight-decay", type=numeric(NON_NEGATIVE, example="5e-4"))
    what.add_argument("--seed", type=numeric(NON_NEGATIVE, integer=True))
    what.add_argument(
        "--fp32",
        action="store_true",
        help="the exact float32 path (no bf16 autocast, no TF32, no channels-last); always on a CPU",
    )
    what.add_argument(
        "--monitor-size",
        type=numeric(NON_NEGATIVE, integer=True),
        help="training and test examples for the per-epoch natural/PGD-20 check (0: none; default 1000)",
    )
    what.add_argument(
        "--train-size",
        type=numeric(AT_LEAST_ONE, integer=True),
        metavar="N",
        help="train on a fixed class-balanced subset of N examples (default: the whole split)",
    )
    what.add_argument(
        "--test-size",
        type=numeric(AT_LEAST_ONE, integer=True),
        metavar="N",
        help="monitor and evaluate on a fixed class-balanced subset of N test examples",
    )
    what.add_argument(
        "--max-steps-per-epoch",
        type=numeric(AT_LEAST_ONE, integer=True),
        metavar="N",
        help="end every epoch after N batches: a smoke run, e.g. --epochs 1 --max-steps-per-epoch 5",
    )
    what.add_argument(
        "--best-window",
        type=numeric(NON_NEGATIVE, integer=True),
        nargs=2,
        metavar=("FIRST", "LAST"),
        help="0-based epochs among which best.pt is kept on the monitored test PGD accuracy",
    )
    how = parser.add_argument_group("how to run it")
    how.add_argument(
        "--data-root",
        help="folder holding the data set (default: data; on --resume, the run's own)",
    )
    how.add_argument(
        "--out",
        type=arguments.output_folder("--out"),
        help="run folder (default: runs/<preset or model>-<method>-s<seed>)",
    )
    how.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its checkpoint"
    )
    how.add_argument(
        "--init-from", type=Path, help="branch: start from this checkpoint with --method"
    )
    how.add_argument(
        "--stop-after",
        type=numeric(AT_LEAST_ONE, integer=True),
        metavar="EPOCHS",
        help="stop once this many epochs are done",
    )
    how.add_argument(
        "--max-minutes",
        type=numeric(NON_NEGATIVE, example="30"),
        help="stop before an epoch that would end after this",
    )
    how.add_argument(
        "--device",
        type=arguments.device,
        help="e.g. cuda:1 or cpu (default: cuda if available, else cpu)",
    )
    how.add_argument("--compile", action="store_true", help="torch.compile the network")
    how.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def describe_presets() -> str:
    lines = []
    for recipe in PRESETS.values():
        lines.append(f"{recipe.name}: {recipe.model} on {recipe.data}, {recipe.epochs} epochs")
        lines.append(f"  follows: {recipe.follows}")
        lines.extend(f"  deviates: {d}" for d in recipe.deviations)
    return "\n".join(lines)


def given_settings(args: argparse.Namespace, method: Optional[str]) -> Dict[str, Any]:
    """The settings the preset and the explicit options give (not TrainConfig's own defaults)."""
    given: Dict[str, Any] = {}
    recipe = get_preset(args.preset) if args.preset else None
    if recipe is not None:
        given.update(
            preset=recipe.name,
            data=recipe.data,
            model=recipe.model,
            epochs=recipe.epochs,
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            lr_schedule=[list(p) for p in recipe.lr_schedule],
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            optimizer=recipe.optimizer,
            best_window=list(recipe.best_window) if recipe.best_window else None,
        )
        given.update(
            {k: getattr(recipe, k) for k in ("train_size", "monitor_size") if getattr(recipe, k)}
        )
    explicit = {
        "method": args.method,
        "variant": args.variant,
        "data": args.data,
        "model": args.model,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_schedule": parse_lr_schedule(args.lr_schedule)
        if args.lr_schedule is not None
        else None,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "optimizer": args.optimizer,
        "seed": args.seed,
        "precision": "fp32" if args.fp32 else None,
        "monitor_size": args.monitor_size,
        "best_window": args.best_window,
        "train_size": args.train_size,
        "test_size": args.test_size,
        "max_steps_per_epoch": args.max_steps_per_epoch,
    }
    given.update({k: v for k, v in explicit.items() if v is not None})
    if given.get("optimizer") == "adam":
        if args.momentum is not None:
            raise ValueError(
                f"Expected no --momentum with --optimizer adam (Adam's betas, the defaults (0.9, "
                f"0.999), play that part), got --momentum {args.momentum}. Leave --momentum out."
            )
        given["momentum"] = 0.0
    user = parse_set(args.set)
    for key in ("normalize", "norm", "eps_ramp_epochs"):
        if getattr(args, key) is not None:
            user[key] = getattr(args, key)
    if method is not None and (recipe is not None or user):
        accepted = accepted_overrides(method, given.get("variant", "paper"))
        given["overrides"] = {**(recipe.overrides_for(method, accepted) if recipe else {}), **user}
    return given


def resolve(args: argparse.Namespace, out: Optional[Path]) -> TrainConfig:
    """The run's settings: the resumed run's, else TrainConfig defaults < preset < options."""
    saved = run_files.saved_config(out) if args.resume and out is not None else None
    if saved is not None:
        return TrainConfig.from_dict(
            {**saved, **given_settings(args, args.method or saved["method"])}
        )
    if args.method is None:
        raise ValueError(
            f"Expected --method (one of {', '.join(ir.methods.names())}), got none; only --resume "
            "of an existing run may leave it out."
        )
    given = given_settings(args, args.method)
    given.setdefault("model", default_model(given.get("data", "cifar10")))
    if "precision" not in given:
        device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
        given["precision"] = "bf16" if device.type == "cuda" else "fp32"
    return TrainConfig.from_dict(given)


def default_model(data: str) -> str:
    """The network a data set trains on unless told: SmallCNN for MNIST (the TRADES MNIST network of
    GAIRAT's MNIST runs), ResNet-18 for the 32×32 colour sets."""
    return "smallcnn" if data == "mnist" else "resnet18"


def default_out(args: argparse.Namespace) -> Optional[Path]:
    if args.out is not None:
        return args.out
    if args.method is None:
        return None
    data = args.data or "cifar10"
    name = args.preset or f"{data}-{args.model or default_model(data)}"
    return Path("runs") / f"{name}-{args.method}-s{args.seed or 0}"


def main(argv: Optional[Sequence[str]] = None) -> Optional[training.RunResult]:
    """Runs ``train.py`` with ``argv``; returns the :class:`training.RunResult` (None for listings)."""
    args = build_parser().parse_args(argv)
    if args.list_presets:
        print(describe_presets())
        return None
    if args.resume and args.init_from is not None:
        raise ValueError("Expected --resume or --init-from, got both: a run continues or branches.")
    out = default_out(args)
    if out is None:
        raise ValueError("Expected --out (the run to resume) or --method, got neither.")
    arguments.check_writable_folder(out, "--out")
    config = resolve(args, out)
    # --resume and --init-from read the data where the run (or the prefix) read it, unless told.
    started = out if args.resume else args.init_from.parent if args.init_from else None
    data_root = args.data_root or (started and run_files.recorded_data_root(started)) or "data"
    main_process = os.environ.get("RANK", "0") == "0"
    if main_process:
        print(describe_run(config, out, args))
    try:
        return training.train(
            config,
            out,
            Runtime(
                data_root=data_root,
                device=args.device,
                channels_last=False if config.precision == "fp32" else None,
                compile=args.compile,
                progress=not args.no_progress,
                max_minutes=args.max_minutes,
            ),
            resume=args.resume,
            init_from=args.init_from,
            stop_after=args.stop_after,
            log_to=sys.stdout if main_process else None,
        )
    except KeyboardInterrupt:
        raise SystemExit(interrupted_message(out)) from None


def interrupted_message(out: Path) -> str:
    """One line for Ctrl-C: what is saved and how to continue."""
    status = run_files.read_status(out)
    if not status:
        return f"train.py: interrupted before the first epoch ended; nothing was saved in {out}."
    done = status["epochs_done"]
    return (
        f"train.py: interrupted; {out / 'checkpoint.pt'} holds epochs 0..{done - 1} (the epoch "
        f"under way is dropped, so a resumed run stays exact). Continue with: "
        f"python examples/train.py --out {out} --resume"
    )


_RECIPE_OPTIONS = (
    "data",
    "model",
    "epochs",
    "batch_size",
    "lr",
    "lr_schedule",
    "momentum",
    "weight_decay",
    "optimizer",
)


def describe_run(config: TrainConfig, out: Path, args: argparse.Namespace) -> str:
    lines = [f"run folder: {out}"]
    if config.preset:
        recipe = get_preset(config.preset)
        lines.append(f"preset {recipe.name} follows: {recipe.follows}")
        lines.extend(f"  deviates: {d}" for d in recipe.deviations)
        changed = {k: v for k, v in vars(args).items() if k in _RECIPE_OPTIONS and v is not None}
        if changed or args.set:
            lines.append(
                f"  changed on the command line: {changed or ''} {' '.join(args.set)}".rstrip()
            )
    if args.init_from is not None:
        lines.append(
            f"branching from {args.init_from}: keeps its parameters, BatchNorm statistics, optimiser "
            f"state, epoch (learning-rate position) and random streams; continues with {config.method}"
        )
    lines.append("settings: " + json.dumps(config.to_dict()))
    return "\n".join(lines)


if __name__ == "__main__":
    arguments.run(main, "train.py")
