"""Measurement helpers shared by the benchmarks: interleaved timing, paired ratios, the machine, results.

Timings on a shared or throttled machine drift; comparing two variants measured minutes apart mixes
that drift into the ratio. :func:`interleave` therefore runs every variant once per round, in an
order that rotates from round to round, and :func:`paired_ratio` divides the two variants' times
round by round before taking the median, so a slow round slows both sides of its own ratio.
"""

from __future__ import annotations

import datetime
import importlib
import json
import math
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

import instance_reweight as ir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

Timings = Dict[str, List[float]]


def example_module(name: str) -> ModuleType:
    """A helper module of ``examples/`` (``"models"``, ``"data"``); ``examples/`` is not a package.

    Example:
        >>> example_module("models").__name__
        'models'
    """
    examples = str(ROOT / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    return importlib.import_module(name)


def build_model(name: str, device: torch.device) -> nn.Module:
    """A CIFAR-10 network of ``examples/models.py`` (3×32×32 inputs, 10 classes) on ``device``.

    Example:
        >>> build_model("smallcnn", torch.device("cpu"))(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return example_module("models").build_model(name, 10, 3).to(device)


def synthetic_batch(batch: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    """CIFAR-shaped images uniform in [0, 1] and random labels: the timing does not depend on values."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)
    return x.to(device), y.to(device)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for queued device work, so that a host clock brackets it (a no-op on the CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def repeat(fn: Callable[[], object], times: int) -> Callable[[], None]:
    """One timed unit of ``times`` calls of ``fn``: short work, measured above the clock's noise."""

    def run() -> None:
        for _ in range(times):
            fn()

    return run


def interleave(
    variants: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int,
    sync: Callable[[], None],
) -> Timings:
    """Seconds of each variant per round, the variants interleaved round by round.

    Round ``r`` runs the variants in their given order rotated by ``r`` (A, B, then B, A, …), so no
    variant always runs first. ``warmup`` untimed rounds come first (allocator, caches, compilation).

    Args:
        variants: name → callable doing one timed unit of work.
        rounds: timed rounds (≥ 1).
        warmup: untimed rounds before them.
        sync: waits for the device before and after each timed call.

    Returns:
        name → ``rounds`` wall-clock times in seconds.

    Example:
        >>> times = interleave({"a": lambda: None, "b": lambda: None}, rounds=3, warmup=1,
        ...                    sync=lambda: None)
        >>> [len(t) for t in times.values()]
        [3, 3]
    """
    names = list(variants)
    times: Timings = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            variants[name]()
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median_ci(values: Sequence[float], level: float = 0.95) -> Tuple[float, float]:
    """Distribution-free confidence interval of the median, from order statistics.

    ``[x_(j+1), x_(n-j)]`` with ``j`` the largest count whose binomial(n, ½) tail
    ``P(X ≤ j)`` is at most ``(1 − level)/2``; the whole range when the sample is too small.

    Example:
        >>> median_ci([float(i) for i in range(1, 26)])  # n = 25: the 8th and 18th values
        (8.0, 18.0)
    """
    v = sorted(values)
    n = len(v)
    tail, j = 0.0, -1
    while j + 1 < n:
        tail += math.comb(n, j + 1) / 2**n
        if tail > (1 - level) / 2:
            break
        j += 1
    return (v[0], v[-1]) if j < 0 else (v[j], v[n - 1 - j])


def spread(values: Sequence[float]) -> Dict[str, Any]:
    """Median with its 95 % confidence interval, quartiles, min, max and count of a sample.

    Example:
        >>> spread([1.0, 2.0, 3.0, 4.0, 5.0])["median"]
        3.0
    """
    v = np.asarray(values, dtype=np.float64)
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    return {
        "median": float(median),
        "ci95": [float(c) for c in median_ci(list(v))],
        "q1": float(q1),
        "q3": float(q3),
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
    }


def paired_ratio(times: Timings, numerator: str, denominator: str) -> Dict[str, Any]:
    """Spread of the per-round ratio ``numerator / denominator`` (measured in the same round).

    Example:
        >>> paired_ratio({"a": [2.0, 3.0], "b": [1.0, 1.0]}, "a", "b")["median"]
        2.5
    """
    return spread([a / b for a, b in zip(times[numerator], times[denominator])])


def machine(device: torch.device) -> Dict[str, Any]:
    """What ran the benchmark: device, threads, library versions, date."""
    info: Dict[str, Any] = {
        "device": device_name(device),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "instance_reweight": ir.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }
    if device.type == "cuda":
        info.update(
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return info


def device_name(device: torch.device) -> str:
    """``"NVIDIA H100 80GB HBM3"`` for a GPU, ``"2-core CPU"`` for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{os.cpu_count()}-core CPU"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"^model name\s*:\s*(.+)$", f.read(), flags=re.MULTILINE)
    except OSError:
        names = []
    return names[0].strip() if names else platform.processor() or "unknown"


def default_output(device: torch.device) -> Path:
    """``benchmarks/results/<machine>.json``, e.g. ``cpu-2core.json``, ``nvidia-h100-80gb-hbm3.json``."""
    name = device_name(device) if device.type == "cuda" else f"cpu-{os.cpu_count()}core"
    return RESULTS / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.json"


def command_line(argv: Optional[Sequence[str]]) -> str:
    """The command that reproduces this run."""
    script = Path(sys.argv[0]).resolve()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *args])


def save(
    path: Path, device: torch.device, sections: Mapping[str, Mapping[str, Any]]
) -> Dict[str, Any]:
    """Merge ``sections`` (section → configuration → result) into the JSON file at ``path``.

    Results of other configurations already in the file are kept, so several commands (one per
    model, say) fill one file per machine. ``device`` and ``machine`` describe the latest run.

    Returns:
        The whole file's content after the merge.
    """
    data: Dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    data["device"] = device_name(device)
    data["machine"] = machine(device)
    for section, results in sections.items():
        data.setdefault(section, {}).update(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, ready to paste into ``docs/performance.md``.

    Example:
        >>> print(markdown_table(["a", "b"], [[1, "x"]]))
        | a | b |
        |---|---|
        | 1 | x |
    """
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def header(device: torch.device, command: str, settings: str) -> str:
    """The lines printed above every table: machine, versions, command, settings."""
    info = machine(device)
    return (
        f"machine: {info['device']} ({info['cpu']}), {info['torch_threads']} torch threads\n"
        f"versions: torch {info['torch']}, instance_reweight {info['instance_reweight']}, "
        f"numpy {info['numpy']}, python {info['python']}\n"
        f"date: {info['date']}\ncommand: {command}\n{settings}"
    )


def ratio_cell(stats: Mapping[str, Any]) -> str:
    """``1.012 [1.004, 1.020]``: median of a per-round ratio and its 95 % confidence interval."""
    low, high = stats["ci95"]
    return f"{stats['median']:.3f} [{low:.3f}, {high:.3f}]"


def seconds_cell(stats: Mapping[str, float]) -> str:
    """``2.41 s [2.38, 2.52]``: median and [min, max] of per-round times."""
    return f"{stats['median']:.3g} s [{stats['min']:.3g}, {stats['max']:.3g}]"


def checked_flags() -> ModuleType:
    """``examples/arguments.py``: the flag types (:func:`numeric`, :func:`device`) and ``run``, which
    tells a user's mistake in one line with exit status 2, shared by the examples and the benchmarks."""
    return example_module("arguments")
