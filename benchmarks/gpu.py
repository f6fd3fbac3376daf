"""GPU benchmark of issue 7: training-step throughput, MFU, the speed-up over the official-code style.

For each model and batch size, one interleaved run times a GAIRAT training step (PGD-K attack with κ,
train-mode forward, κ-weighted CE, backward, SGD step) on GPU-resident data in every combination of
precision (float32, bf16 autocast), memory format (NCHW, channels_last) and mode (eager,
``torch.compile``), next to the same step in the official-code style in float32 (full backward in
every attack step, κ by a per-example host loop; :mod:`workloads`). It reports:

- ``throughput``: seconds per step and images per second of every variant (and its first call,
  which includes compilation);
- ``mfu``: model FLOPs per second against the GPU's dense bf16 peak, counting a forward as
  measured by ``torch.utils.flop_counter`` (ResNet-18: 1.11 GFLOP per 32×32 image), an input-only
  backward as one forward and a full backward as two — ``(2K + 3)`` forwards per image and step;
- ``fast_vs_official``: per variant, the official-style step time over that variant's, paired round
  by round (target: ≥ 3× for the fast path, and MFU ≥ 35 %).

``--parts agreement`` trains a model for a few epochs on the fast path (bf16, channels_last) and
compares PGD-20 robust accuracy with the attack and the final forward in float32 against bf16
autocast (target: within 0.5 points); ``--data`` points at CIFAR-10, otherwise synthetic data only
checks the code path.

``--quick`` shrinks everything (batch 4, K = 2, one step per round) so that the script runs end to end
on a CPU in seconds. See ``benchmarks/README.md`` for the commands that fit in 10-minute runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import workloads as w
from common import (
    build_model,
    checked_flags,
    command_line,
    default_output,
    example_module,
    header,
    interleave,
    markdown_table,
    paired_ratio,
    ratio_cell,
    repeat,
    save,
    seconds_cell,
    spread,
    synchronizer,
    synthetic_batch,
)
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import instance_reweight as ir

SEED = 0
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendor's data sheets; the first
# name found in torch.cuda.get_device_name() wins, so the specific H100 forms come first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
)
PRECISIONS: Mapping[str, Optional[torch.dtype]] = {"float32": None, "bfloat16": torch.bfloat16}
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
MODES = ("eager", "compiled")
OFFICIAL = "official style, float32, nchw, eager"
PARTS = ("grid", "agreement")


@dataclass(frozen=True)
class Config:
    """One fast-path setting of the library's training step."""

    precision: str
    memory_format: str
    mode: str

    @property
    def label(self) -> str:
        return f"ours, {self.precision}, {self.memory_format}, {self.mode}"


def forward_flops(model: nn.Module, device: torch.device) -> float:
    """FLOPs of one forward pass on one 3×32×32 image, counted by ``FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.rand(1, 3, 32, 32, device=device))
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, override: Optional[float]) -> Optional[float]:
    """The dense bf16 peak of the GPU (``override`` wins); None where unknown, e.g. on a CPU."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def autocast(device: torch.device, precision: str) -> Callable[[], ContextManager[object]]:
    """A factory of the autocast context of ``precision`` (no autocast for float32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def _compile(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    # ``mode`` is an inductor option; other backends (e.g. "eager" in the smoke test) take none.
    mode = args.compile_mode if args.compile_backend == "inductor" else None
    return torch.compile(model, backend=args.compile_backend, mode=mode, dynamic=False)


def ours(
    base: nn.Module, config: Config, x: Tensor, y: Tensor, args: argparse.Namespace
) -> Callable[[], None]:
    """``args.iters`` library GAIRAT steps on a copy of ``base`` in ``config``."""
    fmt = FORMATS[config.memory_format]
    net = copy.deepcopy(base).to(memory_format=fmt)
    if config.mode == "compiled":
        net = _compile(net, args)
    step = w.trainer(
        net,
        w.library_attack(net, args.steps),
        w.gairat_loss(args.steps),
        autocast=autocast(x.device, config.precision),
    )
    x = x.contiguous(memory_format=fmt)
    return repeat(lambda: step(x, y), args.iters)


def official(base: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace) -> Callable[[], None]:
    """``args.iters`` official-style GAIRAT steps in float32 on a copy of ``base``."""
    net = copy.deepcopy(base)
    attack = functools.partial(w.official_style_attack, net, steps=args.steps)
    step = w.trainer(net, attack, w.official_gairat_loss(args.steps))
    return repeat(lambda: step(x, y), args.iters)


def first_calls(
    variants: Mapping[str, Callable[[], None]], device: torch.device
) -> Tuple[Dict[str, Callable[[], None]], Dict[str, float], Dict[str, str]]:
    """Run every variant once (compilation, autotuning), timed; set aside those that fail.

    Returns:
        The variants that ran, their first-call seconds, and the error of each that did not.
    """
    sync = synchronizer(device)
    kept: Dict[str, Callable[[], None]] = {}
    seconds: Dict[str, float] = {}
    errors: Dict[str, str] = {}
    for name, fn in variants.items():
        sync()
        start = time.perf_counter()
        try:
            fn()
            sync()
        except RuntimeError as error:  # out of memory or a compiler failure: measure the others
            errors[name] = f"{type(error).__name__}: {str(error)[:300]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        kept[name] = fn
        seconds[name] = time.perf_counter() - start
    return kept, seconds, errors


def grid(
    model_name: str, batch: int, args: argparse.Namespace, device: torch.device
) -> Dict[str, Dict[str, Any]]:
    """Every configuration and the official style for one model and batch size, interleaved."""
    torch.manual_seed(SEED)
    base = build_model(model_name, device)
    flops_per_step = batch * forward_flops(base, device) * (2 * args.steps + 3)
    x, y = synthetic_batch(batch, device, SEED)
    configs = [Config(p, f, m) for p in args.precisions for f in args.formats for m in args.modes]
    variants = {OFFICIAL: official(base, x, y, args)}
    variants.update({c.label: ours(base, c, x, y, args) for c in configs})
    variants, first, errors = first_calls(variants, device)
    times = interleave(variants, rounds=args.rounds, warmup=args.warmup, sync=synchronizer(device))
    peak = peak_tflops(device, args.peak_tflops)
    key = f"{model_name}, batch {batch}"
    settings = {"model": model_name, "batch": batch, **args.settings}
    sections: Dict[str, Dict[str, Any]] = {"throughput": {}, "mfu": {}, "fast_vs_official": {}}
    for name, seconds in times.items():
        per_step = spread([t / args.iters for t in seconds])
        tflops = flops_per_step / per_step["median"] / 1e12
        sections["throughput"][f"{key}: {name}"] = {
            "seconds_per_step": per_step,
            "images_per_s": batch / per_step["median"],
            "first_call_s": first[name],
            **settings,
        }
        sections["mfu"][f"{key}: {name}"] = {
            "model_tflops_per_s": tflops,
            "peak_bf16_tflops": peak,
            "mfu": tflops / peak if peak else None,
            "flops_per_step": flops_per_step,
            **settings,
        }
        if name != OFFICIAL and OFFICIAL in times:
            sections["fast_vs_official"][f"{key}: {name}"] = {
                "speedup": paired_ratio(times, OFFICIAL, name),
                **settings,
            }
    for name, error in errors.items():
        sections["throughput"][f"{key}: {name}"] = {"error": error, **settings}
    return sections


def _agreement_data(
    args: argparse.Namespace, data: Any
) -> Tuple[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor], str]:
    """CIFAR-10 train and test sets (uint8) from ``--data``, or synthetic images with random labels."""
    if args.data is not None:
        test = data.load_cifar10(args.data, train=False)
        return data.load_cifar10(args.data, train=True), test, f"CIFAR-10 ({args.data})"
    generator = torch.Generator().manual_seed(SEED)

    def fake(n: int) -> Tuple[Tensor, Tensor]:
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
        return images, torch.randint(0, 10, (n,), generator=generator)

    return fake(args.train_examples), fake(args.eval_examples), "synthetic (code path only)"


def pgd20_accuracy(
    model: nn.Module, test: Tuple[Tensor, Tensor], precision: str, args: argparse.Namespace
) -> Dict[str, float]:
    """Natural and PGD-20 accuracy (ε = 8/255, step ε/4, uniform start; GAIRAT's protocol), with
    the attack and the final forward in ``precision``, on the first ``--eval-examples`` images."""
    device = next(model.parameters()).device
    to_float = example_module("data").to_float
    attack = ir.GeometryAwareAttack(model, eps=w.EPS, step_size=w.EPS / 4, steps=20)
    images, labels = (t[: args.eval_examples] for t in test)
    correct = torch.zeros(2, dtype=torch.long, device=device)
    torch.manual_seed(SEED)  # the same random starts for both precisions
    with autocast(device, precision)():
        for i in range(0, images.shape[0], args.eval_batch):
            x = to_float(images[i : i + args.eval_batch].to(device))
            x = x.contiguous(memory_format=torch.channels_last)
            y = labels[i : i + args.eval_batch].to(device)
            x_adv, _ = attack(x, y)
            with torch.no_grad():
                correct += torch.stack([(model(v).argmax(dim=1) == y).sum() for v in (x, x_adv)])
    natural, robust = (c / images.shape[0] for c in correct.tolist())
    return {"natural": natural, "pgd20": robust}


def agreement(args: argparse.Namespace, device: torch.device) -> Dict[str, Dict[str, Any]]:
    """Train on the fast path for ``--epochs``, then PGD-20 accuracy in float32 and bf16."""
    data = example_module("data")
    train, test, source = _agreement_data(args, data)
    torch.manual_seed(SEED)
    model = build_model(args.agreement_model, device).to(memory_format=torch.channels_last)
    attack = w.library_attack(model, args.steps)
    step = w.trainer(model, attack, w.mean_ce, autocast=autocast(device, "bfloat16"))
    loader = data.DeviceLoader(*train, batch_size=args.train_batch, augment=True, device=device)
    sync = synchronizer(device)
    epoch_seconds: List[float] = []
    for _ in range(args.epochs):
        sync()
        start = time.perf_counter()
        for x, y in loader:
            step(x.contiguous(memory_format=torch.channels_last), y)
        sync()
        epoch_seconds.append(time.perf_counter() - start)
    model.eval()
    accuracy = {p: pgd20_accuracy(model, test, p, args) for p in PRECISIONS}
    difference = 100 * (accuracy["bfloat16"]["pgd20"] - accuracy["float32"]["pgd20"])
    key = f"{args.agreement_model}, AT (PGD-{args.steps}) {args.epochs} epochs, batch {args.train_batch}"
    return {
        "bf16_agreement": {
            key: {
                "data": source,
                "epoch_seconds": spread(epoch_seconds),
                "accuracy": accuracy,
                "pgd20_difference_points": difference,
                "within_half_point": abs(difference) <= 0.5,
                "eval_examples": min(args.eval_examples, test[0].shape[0]),
                **args.settings,
            }
        }
    }


def _grid_rows(sections: Mapping[str, Mapping[str, Any]]) -> List[List[object]]:
    rows: List[List[object]] = []
    for key, entry in sections["throughput"].items():
        if "error" in entry:
            rows.append([key, entry["error"][:60], "", "", "", "", ""])
            continue
        mfu = sections["mfu"][key]
        speedup = sections["fast_vs_official"].get(key)
        rows.append(
            [
                key,
                seconds_cell(entry["seconds_per_step"]),
                f"{entry['images_per_s']:.0f}",
                f"{mfu['model_tflops_per_s']:.3g}",
                f"{100 * mfu['mfu']:.1f} %" if mfu["mfu"] is not None else "—",
                ratio_cell(speedup["speedup"]) if speedup else "—",
                f"{entry['first_call_s']:.1f}",
            ]
        )
    return rows


def _agreement_rows(section: Mapping[str, Any]) -> List[List[object]]:
    return [
        [
            key,
            r["data"],
            f"{r['epoch_seconds']['median']:.1f}",
            f"{100 * r['accuracy']['float32']['natural']:.2f}",
            f"{100 * r['accuracy']['float32']['pgd20']:.2f}",
            f"{100 * r['accuracy']['bfloat16']['pgd20']:.2f}",
            f"{r['pgd20_difference_points']:+.2f}",
        ]
        for key, r in section.items()
    ]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--parts", nargs="+", choices=PARTS, default=["grid"])
    add(
        "--models", nargs="+", default=["resnet18", "wrn-34-10"], help="names of examples/models.py"
    )
    flags = checked_flags()
    count, optional = (
        flags.numeric(flags.AT_LEAST_ONE, True),
        flags.numeric(flags.NON_NEGATIVE, True),
    )
    add("--batches", nargs="+", type=count, default=[128, 512])
    add("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    add("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS))
    add("--modes", nargs="+", choices=MODES, default=list(MODES))
    add("--compile-mode", default="default", help="torch.compile mode (inductor only)")
    add("--compile-backend", default="inductor")
    add("--steps", type=count, default=10, help="PGD steps K")
    add("--rounds", type=count, default=5, help="timed rounds (medians of these)")
    add("--warmup", type=optional, default=2, help="untimed rounds after the first calls")
    add("--iters", type=count, default=3, help="training steps per variant and round")
    add(
        "--peak-tflops",
        type=flags.numeric(flags.POSITIVE),
        default=None,
        help="dense bf16 peak, if not in the table",
    )
    add("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark for all")
    add("--data", type=Path, default=None, help="folder with cifar-10-batches-bin (agreement)")
    add("--agreement-model", default="resnet18")
    add("--epochs", type=int, default=5, help="training epochs before the agreement check")
    add("--train-batch", type=int, default=128)
    add("--train-examples", type=int, default=50_000, help="synthetic training set size")
    add("--eval-examples", type=int, default=10_000)
    add("--eval-batch", type=int, default=500)
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add(
        "--quick",
        action="store_true",
        help="tiny sizes: checks the script end to end, on a CPU too",
    )
    add("--out", type=Path, default=None, help="JSON file (default: per machine)")
    return parser


QUICK = {
    "batches": [4],
    "steps": 2,
    "rounds": 2,
    "warmup": 1,
    "iters": 1,
    "epochs": 1,
    "train_batch": 16,
    "train_examples": 32,
    "eval_examples": 16,
    "eval_batch": 8,
}


def _settings(args: argparse.Namespace, command: str) -> Dict[str, Any]:
    names = (
        "steps",
        "rounds",
        "warmup",
        "iters",
        "compile_mode",
        "compile_backend",
        "cudnn_benchmark",
    )
    return {"command": command, **{k: getattr(args, k) for k in names}}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the chosen parts, print their tables, merge the results into the machine's JSON file.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        The results file's content after the merge.
    """
    args = _parser().parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    device = torch.device(args.device)
    command = command_line(argv)
    args.settings = _settings(args, command)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    # Eval/train mode, frozen parameters, dtype and memory format each guard a compiled graph.
    torch._dynamo.config.recompile_limit = 64
    sections: Dict[str, Dict[str, Any]] = {}
    if "grid" in args.parts:
        for model_name in args.models:
            for batch in args.batches:
                for name, results in grid(model_name, batch, args, device).items():
                    sections.setdefault(name, {}).update(results)
    if "agreement" in args.parts:
        sections.update(agreement(args, device))
    data = save(args.out or default_output(device), device, sections)
    print(
        header(
            device,
            command,
            f"K={args.steps}, {args.iters} steps per round, "
            f"{args.rounds} rounds after {args.warmup} warm-up, interleaved",
        )
    )
    if "throughput" in sections:
        print(
            markdown_table(
                [
                    "model, batch: variant",
                    "s/step median [min, max]",
                    "images/s",
                    "model TFLOP/s",
                    "MFU (bf16 peak)",
                    "speed-up vs official [95 % CI]",
                    "first call (s)",
                ],
                _grid_rows(sections),
            )
        )
    if "bf16_agreement" in sections:
        print(
            markdown_table(
                [
                    "model, training",
                    "data",
                    "s/epoch",
                    "natural (%)",
                    "PGD-20 float32 (%)",
                    "PGD-20 bf16 (%)",
                    "difference (points)",
                ],
                _agreement_rows(sections["bf16_agreement"]),
            )
        )
    return data


if __name__ == "__main__":
    checked_flags().run(main, "gpu.py")
