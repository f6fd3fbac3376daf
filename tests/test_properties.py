"""Properties of the weights for any input: range, monotonicity, mean exactly 1, batch-order invariance."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import instance_reweight as ir
from instance_reweight import schemes

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("ci")

steps = st.integers(min_value=1, max_value=50)
lams = st.one_of(st.floats(min_value=-50, max_value=50), st.just(math.inf))
slopes = st.floats(min_value=0, max_value=1e3)
biases = st.floats(min_value=-2, max_value=2)
margins = st.lists(st.floats(min_value=-1, max_value=1), min_size=1, max_size=64)


@st.composite
def kappas(draw):
    k = draw(steps)
    values = draw(st.lists(st.integers(min_value=0, max_value=k), min_size=1, max_size=64))
    return k, torch.tensor(values)


@given(kappas(), lams)
def test_gairat_weights_in_unit_interval_and_non_increasing(kk, lam):
    k, kappa = kk
    for fn in (schemes.gairat_tanh, schemes.gairat_sigmoid):
        w = fn(torch.arange(k + 1), steps=k, lam=lam)
        assert ((w >= 0) & (w <= 1)).all() and (w[1:] <= w[:-1]).all()
    w = schemes.gairat_linear(torch.arange(k + 1), steps=k)
    assert ((w > 0) & (w <= 1)).all() and (w[1:] < w[:-1]).all()


@given(margins, slopes, biases)
def test_mail_weights_in_unit_interval_and_non_increasing_in_pm(values, slope, bias):
    pm = torch.tensor(sorted(values))
    w = schemes.mail_sigmoid(pm, slope=slope, bias=bias)
    assert ((w >= 0) & (w <= 1)).all() and (w[1:] <= w[:-1]).all()
    hinge = schemes.hinge(pm, slope=slope, bias=bias)
    assert (hinge >= 0).all() and (hinge[1:] >= hinge[:-1]).all()  # as printed: grows with PM


@given(kappas(), lams)
def test_batch_normalised_weights_have_mean_one_and_are_finite(kk, lam):
    k, kappa = kk
    w = ir.instance_weights("gairat", kappa=kappa, steps=k, lam=lam)
    assert torch.isfinite(w).all() and (w >= 0).all() and w.dtype == torch.float32
    assert abs(w.double().mean().item() - 1.0) < 1e-6


@given(margins, slopes, biases, st.sampled_from(["mail", "hinge", "step"]))
def test_margin_weights_never_nan_and_mean_one(values, slope, bias, scheme):
    params = {"bias": bias, **({"alpha": 0.2} if scheme == "step" else {"slope": slope})}
    w = ir.instance_weights(scheme, margin=torch.tensor(values), **params)
    assert torch.isfinite(w).all() and abs(w.double().mean().item() - 1.0) < 1e-6


@given(kappas(), lams, st.randoms(use_true_random=False))
def test_invariant_to_batch_order(kk, lam, rng):
    k, kappa = kk
    losses = torch.rand(len(kappa), generator=torch.Generator().manual_seed(rng.randrange(2**31)))
    order = torch.tensor(rng.sample(range(len(kappa)), len(kappa)))
    w = ir.instance_weights("gairat", kappa=kappa, steps=k, lam=lam)
    assert torch.equal(
        ir.instance_weights("gairat", kappa=kappa[order], steps=k, lam=lam), w[order]
    )
    loss = ir.instance_reweighted_loss(losses, "gairat", kappa=kappa, steps=k, lam=lam)
    shuffled = ir.instance_reweighted_loss(
        losses[order], "gairat", kappa=kappa[order], steps=k, lam=lam
    )
    torch.testing.assert_close(shuffled, loss)


@given(
    st.lists(st.floats(min_value=-1e4, max_value=1e4), min_size=3, max_size=3), st.integers(0, 2)
)
def test_pm_of_any_finite_logits_is_in_range(row, label):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        pm = ir.probabilistic_margin(
            torch.tensor([row]).to(dtype).clamp(-6e4, 6e4), torch.tensor([label])
        )
        assert pm.dtype == torch.float32 and -1 <= pm.item() <= 1
