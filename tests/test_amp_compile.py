"""Mixed precision and torch.compile: the attack and the loss give float32's κ and weights."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

import instance_reweight as ir


def _clear_margin_problem():
    """Linear two-class problem whose iterates stay ≥ c/2 from the boundary (see test_attack)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -1.0, 2.0, 1.0], [-0.5, 1.0, 0.0, -1.0]]))
        model[0].bias.copy_(torch.tensor([-1.5, 0.0]))
    w = model[0].weight[0] - model[0].weight[1]
    ks = torch.arange(-2, 9).float().repeat(4)
    x = 0.5 + ((ks + 0.5) * 0.05 * w.abs().sum())[:, None] * w / (w @ w)
    return model, x, torch.zeros(len(ks), dtype=torch.long)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attack_and_loss_under_autocast_match_float32(dtype):
    model, x, y = _clear_margin_problem()
    attack = ir.GeometryAwareAttack(model, eps=0.4, step_size=0.05, steps=6, random_start=None)
    gairat = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat", steps=6)
    mail = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "mail")
    reference = attack(x, y)
    ref_gairat = gairat(model(reference.adv), y, kappa=reference.kappa)
    ref_weights = gairat.last_weights
    logits = model(reference.adv)
    ref_mail = mail(logits, y, margin=ir.probabilistic_margin(logits, y))
    with torch.autocast("cpu", dtype=dtype):
        x_adv, kappa = attack(x, y)
        loss = gairat(model(x_adv), y, kappa=kappa)
        logits_low = model(x_adv)
        margin = ir.probabilistic_margin(logits_low, y)
        loss_mail = mail(logits_low, y, margin=margin)
    assert logits_low.dtype == dtype  # the model really ran in low precision
    assert torch.equal(kappa, reference.kappa) and torch.equal(x_adv, reference.adv)
    assert (
        torch.equal(gairat.last_weights, ref_weights) and gairat.last_weights.dtype == torch.float32
    )
    assert loss.dtype == torch.float32 and margin.dtype == torch.float32
    torch.testing.assert_close(loss, ref_gairat, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(loss_mail, ref_mail, rtol=2e-2, atol=1e-3)


def test_weights_stay_finite_with_large_low_precision_logits():
    logits = torch.tensor([[3e4, -3e4, 0.0], [-3e4, 3e4, 1.0]], dtype=torch.bfloat16)
    y = torch.tensor([0, 0])
    margin = ir.probabilistic_margin(logits, y)
    assert margin.tolist() == [1.0, -1.0]
    weights = ir.instance_weights("mail", margin=margin, slope=1000.0, bias=0.0)
    assert torch.isfinite(weights).all() and weights.dtype == torch.float32
    losses = nn.CrossEntropyLoss(reduction="none")(logits.float(), y)
    assert torch.isfinite(ir.instance_reweighted_loss(losses, "mail", margin=margin))


def _backends():
    yield "aot_eager"
    has_compiler = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    yield pytest.param(
        "inductor",
        marks=pytest.mark.skipif(not has_compiler, reason="inductor on CPU needs a C++ compiler"),
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(_backends()))
def test_compiled_model_gives_the_eager_kappa_and_loss(backend):
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is unavailable in this torch build")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).train()
    compiled = torch.compile(model, backend=backend)
    x, y = torch.rand(32, 6), torch.randint(0, 4, (32,))
    kwargs = dict(eps=0.1, step_size=0.02, steps=5, random_start=None)
    eager = ir.GeometryAwareAttack(model, **kwargs)(x, y)
    x_adv, kappa = ir.GeometryAwareAttack(compiled, **kwargs)(x, y)
    assert torch.equal(kappa, eager.kappa)
    torch.testing.assert_close(x_adv, eager.adv)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    criterion = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat", steps=5)
    compiled_loss = torch.compile(
        criterion, backend=backend
    )  # the κ check breaks the graph, and works
    loss = compiled_loss(compiled(x_adv), y, kappa=kappa)
    expected = criterion(model(x_adv), y, kappa=kappa)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
