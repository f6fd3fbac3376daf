"""normalize="global": under DDP the averaged gradient equals the single-process gradient on the whole batch."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import instance_reweight as ir

pytestmark = pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo"
)

SPLIT = (5, 3)  # unequal local batch sizes
CASES = {
    # name: (scheme, scheme parameters, signal)
    "gairat": ("gairat", {"steps": 4, "lam": 0.0}, "kappa"),
    "mail": ("mail", {"slope": 10.0, "bias": -0.5}, "margin"),
    "zero-sum": ("hinge", {"slope": 2.0, "bias": 1.0}, "margin"),  # every ω = 0: uniform fallback
}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _data():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(sum(SPLIT), 6, dtype=torch.float64, generator=generator), torch.randint(
        0, 3, (sum(SPLIT),), generator=generator
    )


def _step(model, attack_model, x, y, case, normalize):
    """One reweighted step; returns κ and the loss (its gradient lands in model's parameters)."""
    scheme, params, signal = CASES[case]
    attack = ir.GeometryAwareAttack(
        attack_model, eps=0.2, step_size=0.08, steps=4, random_start=None
    )
    x_adv, kappa = attack(x, y)
    criterion = ir.InstanceReweightedLoss(
        nn.CrossEntropyLoss(reduction="none"), scheme, normalize=normalize, **params
    )
    logits = model(x_adv)
    if signal == "kappa":
        loss = criterion(logits, y, kappa=kappa)
    else:
        loss = criterion(logits, y, margin=ir.probabilistic_margin(logits, y))
    loss.backward()
    return kappa, loss.detach()


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        x, y = _data()
        start = sum(SPLIT[:rank])
        local = slice(start, start + SPLIT[rank])
        results = {}
        for case in CASES:
            ddp = nn.parallel.DistributedDataParallel(_model())
            kappa, _ = _step(ddp, ddp, x[local], y[local], case, "global")
            results[case] = {
                "kappa": kappa,
                "grads": [p.grad.clone() for p in ddp.module.parameters()],
            }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_global_normalisation_gives_the_single_process_gradient(ranks, case):
    x, y = _data()
    model = _model()
    kappa, _ = _step(model, model, x, y, case, "batch")
    for rank in ranks:  # DDP all-reduced the gradients: every rank holds the same average
        for expected, got in zip((p.grad for p in model.parameters()), rank[case]["grads"]):
            # Equal up to the rounding of the float32 weights (the losses are float64).
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
    # The DDP-wrapped model was attacked through its module: κ is the single-process κ of each shard.
    torch.testing.assert_close(torch.cat([r[case]["kappa"] for r in ranks]), kappa)


def test_local_batch_normalisation_is_not_exact(ranks):
    """Guards the test above: per-rank normalisation would give a different gradient."""
    x, y = _data()
    grads = []
    for rank in range(2):
        model = _model()
        start = sum(SPLIT[:rank])
        _step(
            model,
            model,
            x[start : start + SPLIT[rank]],
            y[start : start + SPLIT[rank]],
            "mail",
            "batch",
        )
        grads.append([p.grad for p in model.parameters()])
    averaged = [(a + b) / 2 for a, b in zip(*grads)]
    gap = max(
        ((a - g).abs().max() / g.abs().max()).item()
        for a, g in zip(averaged, ranks[0]["mail"]["grads"])
    )
    assert gap > 0.05  # 0.114 on this data, against 1e-7 for normalize="global"


def test_global_without_process_group_equals_batch():
    kappa = torch.tensor([0, 2, 4, 1])
    torch.testing.assert_close(
        ir.instance_weights("gairat", kappa=kappa, normalize="global", steps=4),
        ir.instance_weights("gairat", kappa=kappa, normalize="batch", steps=4),
    )
    losses = F.cross_entropy(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), reduction="none")
    assert ir.instance_reweighted_loss(
        losses, "gairat", kappa=kappa, normalize="global", steps=4
    ) == (ir.instance_reweighted_loss(losses, "gairat", kappa=kappa, steps=4))
