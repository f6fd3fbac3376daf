"""Issue 7's three ratios, each pair of variants measured side by side in its own interleaved run.

1. ``kappa_overhead`` — :class:`~instance_reweight.GeometryAwareAttack` against
   :func:`workloads.plain_pgd`, the same PGD-K without κ and without input checks (target ≤ 1.03 on a
   CPU, ≤ 1.01 on a GPU); and, to show κ's own share, the plain loop with its two κ lines added back
   against the plain loop.
2. ``weights_overhead`` — a GAIRAT training step (κ weights) against plain AT, and a MAIL-AT step
   (PM_adv weights) against the same step with mean CE (target ≤ 1.01). Each variant trains its own
   copy of the model from the same initial weights.
3. ``attack_vs_official`` — the official-code style attack (full backward, per-example κ loop)
   against :class:`~instance_reweight.GeometryAwareAttack` (target ≥ 1.2 on a CPU).

Each comparison is its own run of two variants, alternating A, B, B, A, … so that every ratio is
taken between neighbours in time, then summarised by the median of the per-round ratios with its
95 % confidence interval. A 1 % difference can lie inside that interval on a shared machine, so the
two overhead comparisons also give an *isolated* cost: the extra work alone (κ's argmax-compare-add,
K times; the weighting head — PM, weights, weighted loss and its backward to the logits — beyond
mean CE), timed over many repetitions in the same interleaved way, as a share of the measured
attack or step.

Run ``python benchmarks/ratios.py`` (SmallCNN, batch 64) and
``python benchmarks/ratios.py --model resnet18 --batch 16 --only official`` on a CPU; add
``--device cuda`` on a GPU. Results merge into ``benchmarks/results/<machine>.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import workloads as w
from common import (
    build_model,
    checked_flags,
    command_line,
    default_output,
    header,
    interleave,
    markdown_table,
    paired_ratio,
    ratio_cell,
    repeat,
    save,
    spread,
    synchronizer,
    synthetic_batch,
)
from torch import Tensor, nn

BENCHMARKS = ("kappa", "weights", "official")
SECTIONS = {
    "kappa": "kappa_overhead",
    "weights": "weights_overhead",
    "official": "attack_vs_official",
}
HEAD_REPS = 200
SEED = 0
# comparison → (sign, bound) of its target on a CPU and on a GPU; None: no target of its own.
TARGETS: Mapping[str, Mapping[str, Optional[Tuple[str, float]]]] = {
    "kappa_only": {"cpu": None, "cuda": None},
    "attack": {"cpu": ("≤", 1.03), "cuda": ("≤", 1.01)},
    "gairat": {"cpu": ("≤", 1.01), "cuda": ("≤", 1.01)},
    "mail": {"cpu": ("≤", 1.01), "cuda": ("≤", 1.01)},
    "speedup": {"cpu": ("≥", 1.2), "cuda": ("≥", 1.2)},
}


class Bench:
    """The batch, the device's synchronisation and the run lengths that every comparison shares."""

    def __init__(self, x: Tensor, y: Tensor, steps: int, rounds: int, warmup: int) -> None:
        self.x, self.y, self.steps = x, y, steps
        self.rounds, self.warmup = rounds, warmup
        self.sync = synchronizer(x.device)

    def compare(
        self, base: Tuple[str, Callable[[], object]], variant: Tuple[str, Callable[[], object]]
    ) -> Dict[str, Any]:
        """Time ``variant`` against ``base`` (name, seeded callable), interleaved."""
        times = interleave(
            dict([base, variant]), rounds=self.rounds, warmup=self.warmup, sync=self.sync
        )
        return {
            "baseline": base[0],
            "variant": variant[0],
            "seconds": {name: spread(t) for name, t in times.items()},
            "ratio": paired_ratio(times, variant[0], base[0]),
        }

    def per_call(self, heads: Mapping[str, Callable[[], object]]) -> Dict[str, float]:
        """Median seconds per call of each small piece of work, ``HEAD_REPS`` calls at a time."""
        times = interleave(
            {k: repeat(fn, HEAD_REPS) for k, fn in heads.items()},
            rounds=self.rounds,
            warmup=1,
            sync=self.sync,
        )
        return {k: spread(v)["median"] / HEAD_REPS for k, v in times.items()}


def _seeded(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` after fixing the seed, so that both variants draw the same random start."""

    def run() -> object:
        torch.manual_seed(SEED)
        return fn()

    return run


def kappa_overhead(model: nn.Module, bench: Bench) -> Dict[str, Any]:
    """GeometryAwareAttack against the same PGD-K without κ, and κ's own share."""
    x, y, steps = bench.x, bench.y, bench.steps
    attack = w.library_attack(model, steps)
    plain = ("plain PGD", _seeded(lambda: w.plain_pgd(model, x, y, steps=steps)))
    with_kappa = (
        "plain PGD + κ",
        _seeded(lambda: w.plain_pgd(model, x, y, steps=steps, count_kappa=True)),
    )
    ours = ("GeometryAwareAttack", _seeded(lambda: attack(x, y)))
    comparisons = {
        "kappa_only": bench.compare(plain, with_kappa),
        "attack": bench.compare(plain, ours),
    }
    with torch.no_grad():
        logits = model.eval()(x)
    kappa = torch.zeros_like(y)
    head = bench.per_call({"κ": lambda: kappa.add_(logits.argmax(dim=1) == y)})
    plain_seconds = comparisons["kappa_only"]["seconds"]["plain PGD"]["median"]
    comparisons["kappa_only"]["isolated"] = steps * head["κ"] / plain_seconds
    outputs = [fn() for _, fn in (plain, with_kappa, ours)]
    return {
        "comparisons": comparisons,
        "identical": all(w.same_result(outputs[2], o) for o in outputs[:2]),
    }


def weights_overhead(model: nn.Module, bench: Bench) -> Dict[str, Any]:
    """A GAIRAT step against an AT step and a MAIL-AT step against a mean-CE step."""
    x, y, steps = bench.x, bench.y, bench.steps
    losses = {"AT": w.mean_ce, "GAIRAT": w.gairat_loss(steps), "MAIL-AT": w.mail_loss()}

    def variant(name: str, loss: str, start: str) -> Tuple[str, Callable[[], object]]:
        net = copy.deepcopy(model)
        step = w.trainer(net, w.library_attack(net, steps, start), losses[loss])
        return name, _seeded(lambda: step(x, y))

    comparisons = {
        "gairat": bench.compare(
            variant("AT", "AT", "uniform"), variant("GAIRAT", "GAIRAT", "uniform")
        ),
        "mail": bench.compare(
            variant("AT, normal start", "AT", "normal"), variant("MAIL-AT", "MAIL-AT", "normal")
        ),
    }
    logits = torch.randn(x.shape[0], 10, device=x.device, requires_grad=True)
    kappa = torch.randint(0, steps + 1, y.shape, device=x.device)
    head = bench.per_call(
        {k: (lambda fn=fn: fn(logits, y, kappa).backward()) for k, fn in losses.items()}
    )
    for key, name in (("gairat", "GAIRAT"), ("mail", "MAIL-AT")):
        step_seconds = comparisons[key]["seconds"][comparisons[key]["baseline"]]["median"]
        comparisons[key]["isolated"] = (head[name] - head["AT"]) / step_seconds
    return {"comparisons": comparisons}


def attack_vs_official(model: nn.Module, bench: Bench) -> Dict[str, Any]:
    """The official-code style attack against GeometryAwareAttack: the speed-up."""
    x, y, steps = bench.x, bench.y, bench.steps
    attack = w.library_attack(model, steps)
    ours = ("GeometryAwareAttack", _seeded(lambda: attack(x, y)))
    official = (
        "official style",
        _seeded(lambda: w.official_style_attack(model, x, y, steps=steps)),
    )
    comparison = bench.compare(ours, official)  # ratio: official time over ours, the speed-up
    ours_out, official_out = ours[1](), official[1]()
    return {
        "comparisons": {"speedup": comparison},
        "identical": w.same_result(ours_out, official_out),
        "kappa_identical": bool(torch.equal(ours_out[1], official_out[1])),
    }


RUNNERS = {"kappa": kappa_overhead, "weights": weights_overhead, "official": attack_vs_official}
NAMES = {
    "kappa_only": "κ bookkeeping alone",
    "attack": "GeometryAwareAttack / plain PGD",
    "gairat": "GAIRAT step / AT step",
    "mail": "MAIL-AT step / mean-CE step",
    "speedup": "official style / GeometryAwareAttack",
}
HEADERS = (
    "comparison", "setting", "baseline (s)", "variant (s)", "ratio median [95 % CI]", "range",
    "isolated cost", "target", "met",
)  # fmt: skip


def met(median: float, target: Optional[Tuple[str, float]]) -> str:
    """``"yes"``/``"no"`` against a ``(sign, bound)`` target, ``"—"`` without one.

    Example:
        >>> met(1.02, ("≤", 1.03)), met(1.1, ("≥", 1.2)), met(1.0, None)
        ('yes', 'no', '—')
    """
    if target is None:
        return "—"
    sign, bound = target
    return "yes" if (median <= bound if sign == "≤" else median >= bound) else "no"


def rows(
    config: str, comparisons: Mapping[str, Mapping[str, Any]], device: str
) -> List[List[object]]:
    """Table rows of one configuration's comparisons."""
    table = []
    for key, c in comparisons.items():
        r, s = c["ratio"], c["seconds"]
        target = TARGETS[key][device]
        table.append([
            NAMES[key],
            config,
            f"{s[c['baseline']]['median']:.3g}",
            f"{s[c['variant']]['median']:.3g}",
            ratio_cell(r),
            f"{r['min']:.3f}–{r['max']:.3f}",
            f"{100 * c['isolated']:+.2f} %" if "isolated" in c else "",
            f"{target[0]} {target[1]}" if target else "—",
            met(r["median"], target),
        ])  # fmt: skip
    return table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", default="smallcnn", help="a name of examples/models.py")
    flags = checked_flags()
    count, optional = (
        flags.numeric(flags.AT_LEAST_ONE, True),
        flags.numeric(flags.NON_NEGATIVE, True),
    )
    add("--batch", type=count, default=64)
    add("--steps", type=count, default=10, help="PGD steps K")
    add("--rounds", type=count, default=25, help="timed rounds per comparison (medians of these)")
    add("--warmup", type=optional, default=2, help="untimed rounds first")
    add("--threads", type=count, default=os.cpu_count(), help="torch.set_num_threads")
    add("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    add("--device", default="cpu")
    add("--out", type=Path, default=None, help="JSON file (default: per machine)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the chosen comparisons, print their table, merge them into the results file.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        The results file's content after the merge.
    """
    args = _parser().parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    model = build_model(args.model, device)
    bench = Bench(*synthetic_batch(args.batch, device, SEED), args.steps, args.rounds, args.warmup)
    config = f"{args.model}, batch {args.batch}, K={args.steps}"
    command = command_line(argv)
    settings = {
        "command": command,
        **{k: getattr(args, k) for k in ("model", "batch", "steps", "rounds", "warmup", "threads")},
    }
    sections: Dict[str, Dict[str, Any]] = {}
    table: List[List[object]] = []
    for name in args.only:
        result = RUNNERS[name](model, bench)
        sections[SECTIONS[name]] = {config: {**result, **settings}}
        table += rows(config, result["comparisons"], device.type)
    data = save(args.out or default_output(device), device, sections)
    print(header(device, command, f"{args.rounds} rounds per comparison after {args.warmup} "
                 "warm-up, interleaved; medians of per-round ratios"))  # fmt: skip
    print(markdown_table(HEADERS, table))
    return data


if __name__ == "__main__":
    checked_flags().run(main, "ratios.py")
