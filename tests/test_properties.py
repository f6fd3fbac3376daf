"""Properties of the weights for any input: range, monotonicity, mean 1, batch-order invariance.

Float32 results are compared with the tolerances PyTorch guarantees, never bit for bit: a sum in
another order, or a transcendental function at neighbouring inputs, may differ by an ulp.
The hypothesis profile (random by default, reproducible with HYPOTHESIS_PROFILE=ci) is in conftest.py.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import instance_reweight as ir
from instance_reweight import schemes

ULPS = 4 * torch.finfo(torch.float32).eps  # relative slack of a few float32 roundings

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


def non_increasing(w):
    """Up to a few ulps: float32 exp and log need not be monotone between neighbouring inputs."""
    return bool((w[1:] <= w[:-1] * (1 + ULPS)).all())


@given(steps, lams)
def test_gairat_weights_in_unit_interval_and_non_increasing(k, lam):
    for fn in (schemes.gairat_tanh, schemes.gairat_sigmoid):
        w = fn(torch.arange(k + 1), steps=k, lam=lam)
        assert ((w >= 0) & (w <= 1)).all() and non_increasing(w)
    w = schemes.gairat_linear(torch.arange(k + 1), steps=k)
    assert ((w > 0) & (w <= 1)).all() and non_increasing(w) and w[-1] < w[0]


@given(margins, slopes, biases)
def test_mail_weights_in_unit_interval_and_non_increasing_in_pm(values, slope, bias):
    pm = torch.tensor(sorted(values))
    w = schemes.mail_sigmoid(pm, slope=slope, bias=bias)
    assert ((w >= 0) & (w <= 1)).all() and non_increasing(w)
    hinge = schemes.hinge(pm, slope=slope, bias=bias)
    assert (hinge >= 0).all() and non_increasing(hinge.flip(0))  # as printed: grows with PM


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
@example((42, torch.tensor([0] * 18 + [15])), -3.0, random.Random(0))  # 1 ulp apart when shuffled
def test_invariant_to_batch_order(kk, lam, rng):
    k, kappa = kk
    losses = torch.rand(len(kappa), generator=torch.Generator().manual_seed(rng.randrange(2**31)))
    order = torch.tensor(rng.sample(range(len(kappa)), len(kappa)))
    w = ir.instance_weights("gairat", kappa=kappa, steps=k, lam=lam)
    # The normalising sum runs in another order: equal up to rounding, not bit for bit.
    torch.testing.assert_close(
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


@given(
    loss_steps=steps,
    attack_steps=st.integers(min_value=1, max_value=60),
    scheme=st.sampled_from(["gairat", "gairat-sigmoid", "gairat-linear"]),
)
def test_kappa_from_an_attack_with_more_steps_than_the_loss_is_refused(
    loss_steps, attack_steps, scheme
):
    """κ ∈ [0, K_attack]: once it exceeds the loss's K the mismatch is refused, never weighted."""
    kappa = torch.arange(attack_steps + 1)  # every count the attack can give
    criterion = ir.InstanceReweightedLoss(
        torch.nn.CrossEntropyLoss(reduction="none"), scheme, steps=loss_steps
    )
    logits, y = torch.zeros(len(kappa), 3), torch.zeros(len(kappa), dtype=torch.long)
    if attack_steps > loss_steps:
        with pytest.raises(ValueError, match=rf"`kappa` in \[0, {loss_steps}\].*`steps=`"):
            criterion(logits, y, kappa=kappa)
    else:
        assert bool(torch.isfinite(criterion(logits, y, kappa=kappa)))
