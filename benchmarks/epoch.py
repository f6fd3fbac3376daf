"""Seconds per epoch of a preset's training on the examples' fast path, the data loader's own cost apart.

The network, batch size and optimiser come from a preset of ``examples/presets.py`` (default
``mail-resnet18``); the method (default ``mail-at``) is built as ``examples/train.py`` builds it, with
the preset's hyper-parameters, and set to the first epoch after the preset's burn-in, so that the
reweighting is on. The fast path is set up as ``examples/training.py`` sets it up: bf16 autocast,
channels-last on a GPU, TF32 and ``cudnn.benchmark`` on (``--precision fp32`` gives the exact path);
the data are synthetic CIFAR-shaped ``uint8`` images in a :class:`data.DeviceLoader` on the device
(random crop and flip on the device, as for CIFAR-10). Three timed passes of ``--steps`` batches each:

- ``loader``: the loader alone (shuffled indices, gather, crop, flip, conversion to float);
- ``step``: the training step alone, on ``RESIDENT`` batches drawn beforehand and cycled;
- ``together``: both, as the training loop runs them.

Each pass ends early once it has run ``--max-seconds`` (the host clock, checked between steps without
synchronising, so the queue keeps the device busy), and gives seconds per step and per epoch of the
preset's data set (391 steps for CIFAR-10 at batch 128). The device is synchronised before and after
each pass.

Run ``python benchmarks/epoch.py --device cuda`` on a GPU; ``--model smallcnn --batch-size 8
--train-examples 64 --steps 3`` checks it on a CPU in seconds. Results merge into
``benchmarks/results/<machine>.json`` (section ``epoch_seconds``).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from common import (
    checked_flags,
    command_line,
    default_output,
    example_module,
    header,
    markdown_table,
    save,
    synchronizer,
)
from torch import Tensor, nn

SEED = 0
RESIDENT = 8
# Image side of each data set (CIFAR-10/100 and SVHN: 32).
IMAGE_SIZE = {"mnist": 28}
# Training examples per epoch of each data set of examples/data.py (the official splits).
TRAIN_SPLIT = {"cifar10": 50_000, "cifar100": 50_000, "svhn": 73_257, "mnist": 60_000}
PASSES = ("loader", "step", "together")

Batch = Tuple[Tensor, Tensor]


def timed_pass(
    batches: Iterable[Batch],
    work: Callable[[Tensor, Tensor], object],
    *,
    steps: int,
    max_seconds: float,
    sync: Callable[[], None],
) -> Dict[str, float]:
    """Seconds of up to ``steps`` calls ``work(x, y)`` over ``batches``, cut at ``max_seconds``.

    Example:
        >>> batches = itertools.repeat((torch.zeros(1), torch.zeros(1)))
        >>> timed_pass(batches, lambda x, y: None, steps=3, max_seconds=60.0,
        ...            sync=lambda: None)["steps"]
        3
    """
    sync()
    start = time.perf_counter()
    done = 0
    for x, y in itertools.islice(batches, steps):
        work(x, y)
        done += 1
        if time.perf_counter() - start > max_seconds:
            break
    sync()
    seconds = time.perf_counter() - start
    return {"steps": done, "seconds": seconds, "seconds_per_step": seconds / done}


def training_step(
    method: Any,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    fast: bool,
    channels_last: bool,
) -> Callable[[Tensor, Tensor], None]:
    """One step of the loop of ``examples/training.py`` (its ``train_step``): bf16 autocast on the
    fast path, channels-last input if asked."""
    train_step = example_module("training").train_step
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast)

    def step(x: Tensor, y: Tensor) -> None:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        train_step(method, optimizer, x, y, autocast)

    return step


def synthetic_dataset(n: int, in_channels: int, num_classes: int, size: int = 32) -> Batch:
    """``n`` uniform ``uint8`` images of ``size``×``size`` and random labels: the timing does not
    depend on them."""
    generator = torch.Generator().manual_seed(SEED)
    images = torch.randint(
        0, 256, (n, in_channels, size, size), dtype=torch.uint8, generator=generator
    )
    return images, torch.randint(0, num_classes, (n,), generator=generator)


def time_method(
    method_name: str,
    recipe: Any,
    loader: Any,
    args: argparse.Namespace,
    device: torch.device,
    channels_last: bool,
) -> Dict[str, Dict[str, float]]:
    """The ``step`` and ``together`` passes of one method on a fresh copy of the preset's network."""
    config_module = example_module("config")
    info = example_module("data").dataset_info(recipe.data)
    config = config_module.TrainConfig(
        method=method_name,
        data=recipe.data,
        model=args.model or recipe.model,
        batch_size=args.batch_size or recipe.batch_size,
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        optimizer=recipe.optimizer,
        overrides=recipe.overrides_for(method_name, config_module.accepted_overrides(method_name)),
        precision=args.precision,
    )
    torch.manual_seed(SEED)
    module = (
        example_module("models")
        .build_model(config.model, info.num_classes, info.in_channels)
        .to(device)
    )
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    forward: nn.Module = torch.compile(module) if args.compile else module
    method = config_module.make_method(config, forward)
    method.set_epoch(reweighting_epoch(recipe))
    optimizer = config_module.make_optimizer(config, module.parameters())  # the preset's
    fast = args.precision == "bf16"
    step = training_step(method, optimizer, device, fast=fast, channels_last=channels_last)
    forward.train()
    resident = list(itertools.islice(loader, RESIDENT))
    sync = synchronizer(device)
    run = dict(steps=args.steps, max_seconds=args.max_seconds, sync=sync)
    timed_pass(itertools.cycle(resident), step, **{**run, "steps": args.warmup})
    return {
        "step": timed_pass(itertools.cycle(resident), step, **run),
        "together": timed_pass(endless(loader), step, **run),
    }


def endless(loader: Any) -> Iterable[Batch]:
    """The loader's batches epoch after epoch (a short synthetic set ends before ``--steps``)."""
    return itertools.chain.from_iterable(iter(loader) for _ in itertools.count())


def reweighting_epoch(recipe: Any) -> int:
    """The first 0-based epoch after the preset's burn-in (0 without one): reweighting is on there."""
    return int(recipe.method_overrides.get("*", {}).get("burn_in_epochs", 0))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--preset", default="mail-resnet18", help="a preset of examples/presets.py")
    add(
        "--methods", nargs="+", default=["mail-at"], help="methods of ir.methods, one after another"
    )
    add("--model", default=None, help="another network than the preset's (a CPU check)")
    add("--batch-size", type=int, default=None, help="another batch size than the preset's")
    add("--precision", choices=("bf16", "fp32"), default=None, help="default: bf16 on a GPU")
    add("--compile", action="store_true", help="torch.compile the network, as train.py --compile")
    add(
        "--train-examples", type=int, default=None, help="synthetic set size (default: the split's)"
    )
    add("--steps", type=int, default=300, help="batches per timed pass")
    add(
        "--warmup", type=int, default=10, help="untimed steps first (cudnn autotuning, compilation)"
    )
    add("--max-seconds", type=float, default=30.0, help="wall-clock cap of each timed pass")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--out", type=Path, default=None, help="JSON file (default: per machine)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Time the passes, print their table, merge them into the results file.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        The results file's content after the merge.
    """
    args = _parser().parse_args(argv)
    for name in ("steps", "warmup", "max_seconds", "batch_size", "train_examples"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            option = "--" + name.replace("_", "-")
            raise ValueError(
                f"Expected {option} >= {0 if name == 'warmup' else 1}, got {value}. Pass a "
                "positive count (or seconds); omit --batch-size and --train-examples for the preset's."
            )
    device = torch.device(args.device)
    if args.precision is None:
        args.precision = "bf16" if device.type == "cuda" else "fp32"
    recipe = example_module("presets").get_preset(args.preset)
    info = example_module("data").dataset_info(recipe.data)
    batch = args.batch_size or recipe.batch_size
    split = recipe.train_size or TRAIN_SPLIT[recipe.data]
    steps_per_epoch = -(-split // batch)
    fast = args.precision == "bf16"
    channels_last = fast and device.type == "cuda"
    if device.type == "cuda":  # as examples/training.py: TF32 and autotuning on the fast path only
        torch.backends.cuda.matmul.allow_tf32 = fast
        torch.backends.cudnn.allow_tf32 = fast
        torch.backends.cudnn.benchmark = fast
    images, labels = synthetic_dataset(
        args.train_examples or split,
        info.in_channels,
        info.num_classes,
        IMAGE_SIZE.get(recipe.data, 32),
    )
    loader = example_module("data").DeviceLoader(
        images,
        labels,
        batch_size=batch,
        shuffle=True,
        augment=info.augment,
        generator=torch.Generator(device=device).manual_seed(SEED),
        device=device,
        seed=SEED,
    )
    sync = synchronizer(device)
    run = dict(steps=args.steps, max_seconds=args.max_seconds, sync=sync)
    loader_pass = timed_pass(endless(loader), lambda x, y: None, **run)
    command = command_line(argv)
    model = args.model or recipe.model
    results: Dict[str, Dict[str, Any]] = {}
    table: List[List[object]] = []
    for method_name in args.methods:
        passes = {
            "loader": dict(loader_pass),
            **time_method(method_name, recipe, loader, args, device, channels_last),
        }
        for stats in passes.values():
            stats["seconds_per_epoch"] = stats["seconds_per_step"] * steps_per_epoch
        key = (
            f"{args.preset}, {method_name}, {model}, batch {batch}, {args.precision}"
            f"{', compiled' if args.compile else ''}"
        )
        together = passes["together"]["seconds_per_epoch"]
        results[key] = {
            **passes,
            "seconds_per_epoch": together,
            "loader_share": passes["loader"]["seconds_per_epoch"] / together,
            "steps_per_epoch": steps_per_epoch,
            "reweighting_epoch": reweighting_epoch(recipe),
            "channels_last": channels_last,
            "command": command,
            **{
                k: getattr(args, k) for k in ("preset", "steps", "warmup", "max_seconds", "compile")
            },
        }
        table.append(
            [key, *(f"{1000 * passes[p]['seconds_per_step']:.3g}" for p in PASSES),
             f"{together:.1f}", f"{100 * results[key]['loader_share']:.1f} %"]
        )  # fmt: skip
    data = save(args.out or default_output(device), device, {"epoch_seconds": results})
    print(header(device, command, f"{args.steps} steps per pass (at most {args.max_seconds} s) "
                 f"after {args.warmup} warm-up; {steps_per_epoch} steps per epoch"))  # fmt: skip
    headers = ["preset, method, model, batch, precision", "loader (ms/step)", "step (ms/step)",
               "together (ms/step)", "s/epoch", "loader share"]  # fmt: skip
    print(markdown_table(headers, table))
    return data


if __name__ == "__main__":
    checked_flags().run(main, "epoch.py")
