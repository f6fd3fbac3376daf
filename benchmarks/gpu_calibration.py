"""GPU calibration (issue 29): every GPU benchmark of this folder in one command of at most 9 minutes.

One run on one H100 or H200 measures, in this order of priority, each stage a child process with a
time budget of its own:

1. ``ratios`` — ``ratios.py`` with ResNet-18 at batch 128: κ's cost, the weighting's cost, the
   attack's speed-up over the official-code style;
2. ``grid-eager-b128`` — ``gpu.py``: the GAIRAT training step in float32 and bf16 × NCHW and
   channels_last, eager, next to the official style: seconds per step, images per second, MFU against
   the GPU's dense bf16 peak (989.4 TFLOP/s for an H100 SXM or an H200; ``null`` with a note for a GPU
   not in ``gpu.PEAK_BF16_TFLOPS``), ``fast_vs_official``;
3. ``epoch-mail-resnet18`` — ``epoch.py``: seconds per epoch of the MAIL ResNet-18 preset (MAIL-AT,
   reweighting on) on the examples' fast path over 300 steps of synthetic CIFAR-shaped data, the data
   loader alone, the step alone on resident batches, and the two together;
4. ``grid-compiled-b128-<precision>-<format>`` — the four ``torch.compile`` variants, one process
   each (a compilation cut off at its budget loses that variant only), the fast path first;
5. ``grid-eager-b512``, ``grid-compiled-b512-bfloat16-channels_last`` — batch 512;
6. ``agreement`` — ``gpu.py --parts agreement``: 2 epochs of PGD-10 AT on the fast path, then PGD-20
   robust accuracy of 2,000 test images with the attack in float32 and in bf16 (CIFAR-10 with
   ``--data``; otherwise synthetic data, which checks the code path only).

A stage starts only if the time left of ``--budget`` covers its own budget, else it is recorded as
``skipped: budget``; a stage that outruns its budget is stopped (``timeout``). Results are written as
they come, into ``--out`` (default ``$OUT``): each script's own JSON file (``ratios.json``,
``gpu.json``, ``epoch.json``), all children's output in ``calibration.log``, and after every stage
the combined file ``<machine>.json`` (e.g. ``nvidia-h100-80gb-hbm3.json``, replaced atomically): the
sections of every finished stage, in the layout of ``benchmarks/results/<machine>.json`` (device,
machine with torch version and date, ``throughput``, ``mfu``, ``fast_vs_official``, …), and a
``calibration`` section with each stage's status, seconds and exact command, and the bf16 peak used.
A run cut off at any point leaves every finished stage's results on disk. Five files in all, within
the device tool's eight.

``--smoke`` runs the same stages at tiny sizes (SmallCNN, batch 4, a few steps, one thread,
``torch.compile`` with the ``eager`` backend) so that the whole plan runs on a CPU in under a minute;
``tests/test_gpu_calibration.py`` runs it.

The GPU machine has PyTorch, numpy, tqdm and matplotlib but not this package: the command runs from
the repository checkout with ``PYTHONPATH=src``. Nothing needs carrying; the scripts need neither
``pyautoattack`` nor network access. On the day a GPU is lent, the device tool's call is::

    run(command="PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/gpu_calibration.py",
        timeout_s=540)

``--budget 480`` (the default) ends the script after 8 minutes and ``timeout_s=540`` stops it at 9,
so a machine's start (1–2 minutes) and this call leave about 4 of the session's 15 device minutes
for one rerun on the still-warm machine, e.g. of the stages the first run skipped::

    run(command="PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/gpu_calibration.py "
                "--budget 180 --stages grid-eager-b512 agreement", timeout_s=220)

The files come back through ``$OUT``; copy ``<machine>.json`` to ``benchmarks/results/``. For the
agreement on CIFAR-10, see ``benchmarks/README.md`` (the data set travels in two calls).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from common import ROOT, checked_flags, command_line, default_output, device_name, save
from gpu import peak_tflops

import instance_reweight as ir

LOG = "calibration.log"
DEFAULT_BUDGET_S = 480.0
# Compiled variants, the fast path (bf16, channels_last) first.
COMPILED = (
    ("bfloat16", "channels_last"),
    ("bfloat16", "nchw"),
    ("float32", "channels_last"),
    ("float32", "nchw"),
)


# --smoke: the same stages at tiny sizes, compiled with the "eager" backend (no inductor build).
SMOKE = {
    "ratios": ["--batch", "4", "--steps", "2", "--rounds", "1", "--warmup", "0", "--threads", "1"],
    "gpu": ["--steps", "2", "--rounds", "1", "--warmup", "0", "--iters", "1",
            "--compile-backend", "eager"],
    "epoch": ["--model", "smallcnn", "--batch-size", "8", "--train-examples", "64", "--steps", "3",
              "--warmup", "1"],
    "agreement": ["--epochs", "1", "--train-batch", "16", "--train-examples", "32",
                  "--eval-examples", "16", "--eval-batch", "8"],
}  # fmt: skip


@dataclass(frozen=True)
class Stage:
    """One child process of the calibration.

    Attributes:
        name: the stage's name (``--stages`` takes these).
        budget_s: seconds it may run; it starts only if that much of the total budget is left.
        argv: the child's arguments after the Python interpreter, a script path relative to the
            repository root first.
        output: the JSON file, under ``--out``, that the child writes its results to (None: none).
    """

    name: str
    budget_s: float
    argv: Tuple[str, ...]
    output: Optional[str] = None

    @property
    def command(self) -> str:
        """The command that reproduces the stage, run from the repository root."""
        return shlex.join(["python", *self.argv])


def plan(
    out: Path,
    device: str,
    *,
    smoke: bool = False,
    data: Optional[Path] = None,
    peak: Optional[float] = None,
) -> List[Stage]:
    """Every stage, in the order they run; see the module docstring.

    Example:
        >>> [s.name for s in plan(Path("out"), "cuda")][:3]
        ['ratios', 'grid-eager-b128', 'epoch-mail-resnet18']
    """
    model = "smallcnn" if smoke else "resnet18"
    gpu = [
        "benchmarks/gpu.py", "--device", device, "--models", model, "--cudnn-benchmark",
        *(["--peak-tflops", str(peak)] if peak is not None else []),
        *(SMOKE["gpu"] if smoke else []),
        "--out", str(out / "gpu.json"),
    ]  # fmt: skip

    def grid(name: str, batch: int, budget: float, *options: str) -> Stage:
        batches = ["--batches", "4" if smoke else str(batch)]
        return Stage(name, budget, (*gpu, *batches, *options), "gpu.json")

    return [
        Stage(
            "ratios",
            90,
            ("benchmarks/ratios.py", "--device", device, "--model", model,
             *(SMOKE["ratios"] if smoke else ["--batch", "128", "--rounds", "15"]),
             "--out", str(out / "ratios.json")),
            "ratios.json",
        ),
        grid("grid-eager-b128", 128, 75, "--modes", "eager"),
        Stage(
            "epoch-mail-resnet18",
            90,
            ("benchmarks/epoch.py", "--device", device, "--preset", "mail-resnet18",
             "--methods", "mail-at", "--precision", "bf16",
             *(SMOKE["epoch"] if smoke else ["--steps", "300", "--max-seconds", "25"]),
             "--out", str(out / "epoch.json")),
            "epoch.json",
        ),
        *(
            grid(f"grid-compiled-b128-{p}-{f}", 128, 120, "--modes", "compiled",
                 "--precisions", p, "--formats", f)
            for p, f in COMPILED
        ),
        grid("grid-eager-b512", 512, 60, "--modes", "eager"),
        grid("grid-compiled-b512-bfloat16-channels_last", 512, 120, "--modes", "compiled",
             "--precisions", "bfloat16", "--formats", "channels_last"),
        Stage(
            "agreement",
            120,
            (*gpu, "--parts", "agreement", "--agreement-model", model,
             *(SMOKE["agreement"] if smoke else ["--epochs", "2", "--eval-examples", "2000"]),
             *(["--data", str(data)] if data else [])),
            "gpu.json",
        ),
    ]  # fmt: skip


def run_stage(stage: Stage, log: Path, env: Mapping[str, str]) -> Dict[str, Any]:
    """Run one stage as a child process, its output appended to ``log``; stop it at its budget.

    Returns:
        ``status`` (``"ok"``, ``"failed: exit code N"`` or ``"timeout: stopped at its budget of
        B s"``), ``seconds``, ``budget_s`` and ``command``.
    """
    start = time.perf_counter()
    with open(log, "a") as sink:
        sink.write(f"\n=== {stage.name}: {stage.command}\n")
        sink.flush()
        child = subprocess.Popen(
            [sys.executable, *stage.argv], cwd=ROOT, env=dict(env), stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            code = child.wait(timeout=stage.budget_s)
            status = "ok" if code == 0 else f"failed: exit code {code}"
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            status = f"timeout: stopped at its budget of {stage.budget_s:g} s"
    return {
        "status": status,
        "seconds": time.perf_counter() - start,
        "budget_s": stage.budget_s,
        "command": stage.command,
    }


def update_combined(
    path: Path, device: torch.device, stage_file: Optional[Path], calibration: Dict[str, Any]
) -> Dict[str, Any]:
    """Merge a finished stage's results and the calibration record into the combined file.

    The merge is :func:`common.save`'s (section by section, configuration by configuration) on a
    copy, which then replaces the file: a run stopped at any moment leaves a whole file.
    """
    sections: Dict[str, Any] = {}
    if stage_file is not None and stage_file.is_file():
        results = json.loads(stage_file.read_text())
        sections = {k: v for k, v in results.items() if k not in ("device", "machine")}
    sections["calibration"] = calibration
    partial = path.with_name(path.name + ".partial")
    if path.is_file():
        shutil.copyfile(path, partial)
    data = save(partial, device, sections)
    os.replace(partial, path)
    return data


def peak_note(device: torch.device, peak: Optional[float]) -> str:
    """Which dense bf16 peak the MFU figures divide by, or why they are null."""
    name = device_name(device)
    if peak is None:
        return (
            f"no dense bf16 peak known for {name!r}: mfu is null; rerun with --peak-tflops "
            "(the vendor's dense, not sparse, bf16 figure)"
        )
    return f"mfu = model TFLOP/s / {peak:g} TFLOP/s, the dense bf16 peak used for {name!r}"


def calibrate(
    stages: Sequence[Stage],
    out: Path,
    device: torch.device,
    *,
    budget_s: float,
    record: Dict[str, Any],
    env: Optional[Mapping[str, str]] = None,
) -> Dict[str, Any]:
    """Run ``stages`` in order within ``budget_s`` seconds, updating the combined file after each.

    Args:
        stages: what to run.
        out: the folder of every file written.
        device: the device measured (names the combined file).
        budget_s: seconds for all stages; a stage whose budget exceeds what is left is skipped.
        record: what the ``calibration`` section says besides the stages (command, peak, …).
        env: the children's environment (default: this process's).

    Returns:
        The combined file's content.
    """
    clock = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    combined = out / default_output(device).name
    log = out / LOG
    calibration: Dict[str, Any] = {
        **record,
        "budget_s": budget_s,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "stages": {s.name: {"status": "pending", "command": s.command} for s in stages},
    }
    data = update_combined(combined, device, None, calibration)
    for stage in stages:
        left = budget_s - (time.perf_counter() - clock)
        if stage.budget_s > left:
            result = {"status": "skipped: budget", "budget_s": stage.budget_s, "left_s": left,
                      "command": stage.command}  # fmt: skip
        else:
            print(f"=== {stage.name} (budget {stage.budget_s:g} s, {left:.0f} s left)", flush=True)
            offset = log.stat().st_size if log.is_file() else 0
            result = run_stage(stage, log, os.environ if env is None else env)
            with open(log) as f:
                f.seek(offset)
                print(f.read(), end="", flush=True)
        print(f"=== {stage.name}: {result['status']}", flush=True)
        calibration["stages"][stage.name] = result
        calibration["elapsed_s"] = time.perf_counter() - clock
        stage_file = out / stage.output if stage.output and result["status"] == "ok" else None
        data = update_combined(combined, device, stage_file, calibration)
    return data


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--out", type=Path, default=None, help="folder of the results (default: $OUT)")
    add("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all stages")
    add("--stages", nargs="+", default=None, help="names of the stages to run (default: all)")
    add(
        "--smoke", action="store_true", help="tiny sizes: the whole plan on a CPU in under a minute"
    )
    add("--data", type=Path, default=None, help="folder with cifar-10-batches-bin (agreement)")
    add("--peak-tflops", type=float, default=None, help="dense bf16 peak, if not in gpu.py's table")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the calibration; see the module docstring.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        The combined file's content.

    Raises:
        ValueError: without ``--out`` and ``$OUT``, or on an unknown stage name.
    """
    args = _parser().parse_args(argv)
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if out is None:
        raise ValueError(
            "Expected --out DIR or the environment variable OUT, got neither. Pass the folder the "
            "results go to, e.g. --out /tmp/calibration."
        )
    if args.budget < 0:
        raise ValueError(f"Expected --budget >= 0 seconds, got {args.budget}.")
    device = torch.device(args.device)
    stages = plan(out, args.device, smoke=args.smoke, data=args.data, peak=args.peak_tflops)
    if args.stages is not None:
        names = [s.name for s in stages]
        unknown = [n for n in args.stages if n not in names]
        if unknown:
            raise ValueError(f"Expected --stages among {', '.join(names)}, got {unknown}.")
        stages = [s for s in stages if s.name in args.stages]
    peak = peak_tflops(device, args.peak_tflops)
    # The children import the package this process imported, wherever it lies.
    package_root = str(Path(ir.__file__).resolve().parents[1])
    paths = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(paths))
    if args.smoke:  # one thread per child: a shared small CPU slows down under oversubscription
        env["OMP_NUM_THREADS"] = "1"
    record = {
        "command": command_line(argv),
        "smoke": args.smoke,
        "peak_bf16_tflops": peak,
        "peak_note": peak_note(device, peak),
        "log": LOG,
    }
    return calibrate(stages, out, device, budget_s=args.budget, record=record, env=env)


def _exit_status(results: Dict[str, Any]) -> int:
    """1 when a stage failed or timed out (a skipped stage is not a failure), else 0."""
    statuses = [s["status"] for s in results["calibration"]["stages"].values()]
    return 1 if any(s.startswith(("failed", "timeout")) for s in statuses) else 0


if __name__ == "__main__":
    checked_flags().run(lambda argv: sys.exit(_exit_status(main(argv))), "gpu_calibration.py")
