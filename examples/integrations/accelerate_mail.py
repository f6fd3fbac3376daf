"""MAIL-AT or GAIRAT in a 🤗 Accelerate loop: the README's three lines after ``accelerator.prepare``.

    python examples/integrations/accelerate_mail.py                       # one process
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no examples/integrations/accelerate_mail.py --normalize global
    torchrun --nproc_per_node 2 examples/integrations/accelerate_mail.py --cpu --normalize global

On a machine without GPUs, add the script's ``--cpu`` to the ``accelerate launch`` line: Accelerate's
several-process launcher is the one named ``--multi_gpu`` (torchrun underneath), and ``--cpu`` makes each
process use the gloo backend. (``accelerate launch --num_processes 2`` alone starts one process on a CPU
machine.) The script prints how many processes trained.

Under several processes each one attacks and weights its own part of the global batch. With
``normalize="batch"`` each process normalises the weights over its own part, which is not the papers'
Σωℓ/Σω over the batch; ``normalize="global"`` all-reduces Σω over the process group that Accelerate
started and scales the local loss, so that after DistributedDataParallel's gradient averaging the
gradient is exactly that of one process on the whole batch (see docs/distributed.md). BatchNorm
statistics stay per process (use ``torch.nn.SyncBatchNorm`` for whole-batch statistics); the toy network
here has none.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

import instance_reweight as ir

sys.path.insert(0, str(Path(__file__).resolve().parent))

from logging_hook import EpochLogger  # noqa: E402
from toy import toy_data  # noqa: E402


def network() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10)
    )  # fmt: skip


def train(
    *,
    scheme: str = "mail",
    normalize: str = "batch",
    epochs: int = 4,
    burn_in_epochs: int = 2,
    batch_size: int = 64,
    random_start: Optional[str] = "normal",
    cpu: bool = False,
    log: Any = print,
) -> Dict[str, Any]:
    """Trains the toy network; returns its final parameters (on the CPU), the number of processes
    and whether this is the main one.

    ``batch_size`` is per process, as Accelerate's prepared loader gives each process its own batches
    (the global batch is ``batch_size × processes``).
    """
    accelerator = Accelerator(cpu=cpu)
    torch.manual_seed(0)
    model = network()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(toy_data(512), batch_size=batch_size)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    # The README's three lines, on the prepared (DDP-wrapped) model.
    attack = ir.GeometryAwareAttack(
        model, eps=0.1, step_size=0.025, steps=5, random_start=random_start
    )
    params: Dict[str, Any] = (
        dict(slope=10.0, bias=-0.5) if scheme == "mail" else dict(steps=5, lam=-1.0)
    )
    criterion = ir.InstanceReweightedLoss(
        nn.CrossEntropyLoss(reduction="none"), scheme, normalize=normalize, **params
    )
    burn_in = ir.BurnInScheduler(criterion, burn_in_epochs=burn_in_epochs)
    hook = EpochLogger(log, steps=5)

    for epoch in range(epochs):
        burn_in.step(epoch)
        model.train()
        for x, y in loader:
            x_adv, kappa = attack(x, y)
            logits = model(x_adv)
            if scheme == "mail":
                margin = ir.probabilistic_margin(logits, y)  # PM_adv
                loss = criterion(logits, y, margin=margin)
            else:
                margin = None
                loss = criterion(logits, y, kappa=kappa)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            hook.add(loss, criterion, kappa=kappa if margin is None else None, margin=margin)
        hook.log_epoch(epoch)
    return {
        "processes": accelerator.num_processes,
        "main": accelerator.is_main_process,
        "params": {
            k: v.detach().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()
        },
    }


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheme", choices=("mail", "gairat"), default="mail")
    parser.add_argument("--normalize", choices=("batch", "global"), default="batch")
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--no-random-start", action="store_true", help="start the attack at x")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    parser.add_argument("--save", type=Path, help="write the final parameters here (rank 0)")
    args = parser.parse_args(argv)
    result = train(
        scheme=args.scheme,
        normalize=args.normalize,
        batch_size=args.batch_size,
        random_start=None if args.no_random_start else "normal",
        cpu=args.cpu,
    )
    if result["main"]:
        print(f"trained in {result['processes']} process(es)")
        if args.save is not None:
            torch.save(result["params"], args.save)
    return result


if __name__ == "__main__":
    main()
