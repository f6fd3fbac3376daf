"""Evaluates a checkpoint of ``train.py`` with ``ir.evaluation``: one protocol, JSON out.

Examples::

    python examples/evaluate.py runs/mail-resnet18-mail-at-s0/checkpoint.pt --protocol mail
    python examples/evaluate.py runs/x/best.pt --protocol gairat --attacks natural,pgd20,pgd+ \\
        --out runs/x/eval-best.json

The network runs in eval mode and float32 (``ir.evaluation`` switches autocast off), on the test split
of the data set it was trained on. Attacks run one at a time and the JSON is rewritten after each, so
an interrupted evaluation continues where it stopped when run again with the same arguments (each
attack's result is kept only if the checkpoint's epoch and the attack's settings are unchanged).
Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import training
from data import DeviceLoader, load_dataset

from instance_reweight import evaluation


def evaluate_checkpoint(
    checkpoint: Path,
    *,
    data_root: str,
    protocol: Optional[str] = None,
    attacks: Optional[Sequence[str]] = None,
    eps: Optional[float] = None,
    options: Optional[Dict[str, Dict[str, Any]]] = None,
    num_examples: Optional[int] = None,
    batch_size: int = 500,
    device: Optional[str] = None,
    out: Optional[Path] = None,
    max_minutes: Optional[float] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Evaluates one checkpoint; returns (and writes to ``out``, if given) the result record.

    Args:
        checkpoint: a ``checkpoint.pt`` or ``best.pt`` of ``train.py``.
        data_root: folder holding the data set the run was trained on.
        protocol: ``"gairat"``, ``"mail"``, ``"robustbench"`` or ``None`` (``ir.evaluation``'s default).
        attacks: attack names (default: the protocol's).
        eps: ℓ∞ radius (default: the protocol's).
        options: per-attack options, e.g. ``{"pgd20": {"step_size": 0.003}}``.
        num_examples: evaluate only the first ``n`` test images (default: the protocol's subsets).
        batch_size: examples per attack call.
        device: where to run (default: cuda if available, else cpu).
        out: JSON file to write after every attack; results already there are reused.
        max_minutes: start no attack after this many minutes (the record says ``"complete": false``).
        progress: show progress bars.

    Returns:
        ``{"checkpoint", "epoch", "config", "protocol", "settings", "accuracy": {attack: acc},
        "seconds": {attack: s}, "complete", "device", "torch", ...}``.
    """
    start = time.perf_counter()
    state = training.load_checkpoint(checkpoint)
    config = training.TrainConfig.from_dict(state["config"])
    where = training.resolve_device(device)
    model = training.model_from_checkpoint(state).to(where)
    clip = config.overrides.get("clip", (0.0, 1.0))
    settings = evaluation.settings(
        attacks=attacks,
        eps=eps,
        protocol=protocol,
        options=options,
        num_examples=num_examples,
        clip=clip,
    )
    record: Dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "epoch": int(state["epoch"]),
        "config": state["config"],
        "protocol": protocol,
        "settings": settings,
        "accuracy": {},
        "seconds": {},
        "complete": False,
        "mode": "eval, float32",
        "device": training.device_name(where),
        "torch": torch.__version__,
    }
    previous = _previous(out, record)
    images, labels = load_dataset(config.data, data_root, train=False)
    loader = DeviceLoader(images, labels, batch_size=batch_size, shuffle=False, device=where)
    for name, params in settings["attacks"].items():
        if name in previous["accuracy"]:
            record["accuracy"][name] = previous["accuracy"][name]
            record["seconds"][name] = previous["seconds"][name]
            continue
        if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
            break
        tic = time.perf_counter()
        limit = settings["num_examples"][name]
        result = evaluation.evaluate(
            model,
            loader,
            attacks=(name,),
            eps=settings["eps"],
            options={name: params},
            num_examples=None if limit is None else {name: limit},
            batch_size=batch_size,
            clip=clip,
            progress=progress,
        )
        record["accuracy"][name] = result[name]
        record["seconds"][name] = time.perf_counter() - tic
        if out is not None:
            training.write_json_atomic(record, out)
    record["complete"] = len(record["accuracy"]) == len(settings["attacks"])
    if out is not None:
        training.write_json_atomic(record, out)
    return record


def _previous(out: Optional[Path], record: Dict[str, Any]) -> Dict[str, Any]:
    """The results in ``out`` that still apply: same checkpoint epoch and config, same settings."""
    if out is None or not out.is_file():
        return {"accuracy": {}, "seconds": {}}
    old = json.loads(out.read_text())
    same_run = old.get("epoch") == record["epoch"] and old.get("config") == record["config"]
    same = same_run and old.get("settings", {}).get("eps") == record["settings"]["eps"]
    keep = [
        name
        for name, params in record["settings"]["attacks"].items()
        if same
        and name in old.get("accuracy", {})
        and old["settings"]["attacks"].get(name) == json.loads(json.dumps(params))
        and old["settings"]["num_examples"].get(name) == record["settings"]["num_examples"][name]
    ]
    return {
        "accuracy": {k: old["accuracy"][k] for k in keep},
        "seconds": {k: old["seconds"][k] for k in keep},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pt or best.pt of train.py")
    parser.add_argument(
        "--protocol",
        choices=sorted(evaluation.PROTOCOLS),
        help="evaluation preset (default: natural, pgd20, pgd20-ls, aa at 8/255)",
    )
    parser.add_argument("--attacks", help=f"comma-separated, among {', '.join(evaluation.ATTACKS)}")
    parser.add_argument("--eps", type=float, help="ℓ∞ radius (default: the protocol's)")
    parser.add_argument(
        "--options",
        type=json.loads,
        help='per-attack options as JSON, e.g. \'{"pgd20": {"step_size": 0.003}}\'',
    )
    parser.add_argument("--num-examples", type=int, help="only the first N test images")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument(
        "--out", type=Path, help="JSON file (default: eval-<protocol>.json beside the checkpoint)"
    )
    parser.add_argument("--max-minutes", type=float, help="start no attack after this many minutes")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Runs ``evaluate.py`` with ``argv``; returns the result record."""
    args = build_parser().parse_args(argv)
    stem = args.checkpoint.stem.replace("checkpoint", "last")
    out = args.out or args.checkpoint.with_name(f"eval-{stem}-{args.protocol or 'default'}.json")
    record = evaluate_checkpoint(
        args.checkpoint,
        data_root=args.data_root,
        protocol=args.protocol,
        attacks=args.attacks.split(",") if args.attacks else None,
        eps=args.eps,
        options=args.options,
        num_examples=args.num_examples,
        batch_size=args.batch_size,
        device=args.device,
        out=out,
        max_minutes=args.max_minutes,
        progress=not args.no_progress,
    )
    accuracy = ", ".join(f"{k} {100 * v:.2f}%" for k, v in record["accuracy"].items())
    state = "" if record["complete"] else " (incomplete: run again to continue)"
    print(f"{args.checkpoint} (epoch {record['epoch']}): {accuracy}{state} -> {out}")
    return record


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, ImportError) as err:
        sys.exit(f"evaluate.py: error: {err}")
