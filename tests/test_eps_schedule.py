"""EpsilonScheduler: the linear ε ramp ε(t) = ε·min(1, t/T), α/ε kept, per batch; state round-trip."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import instance_reweight as ir


def _attack(eps=0.3, step_size=0.04, steps=10):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    return ir.GeometryAwareAttack(model, eps=eps, step_size=step_size, steps=steps)


def _oracle(eps, step_size, ramp_epochs, t):
    """The ramp as written: ε·min(1, t/T), α·ε(t)/ε; where that α is 0 (at ε(t) = 0, or a product
    that underflows) the final α, which the projection onto the ε(t)-ball bounds anyway."""
    fraction = 1.0 if ramp_epochs == 0 else min(1.0, t / ramp_epochs)
    return eps * fraction, (step_size * fraction if step_size * fraction > 0 else step_size)


@given(
    eps=st.floats(0.0, 1.0),
    step_size=st.floats(1e-4, 1.0),
    ramp_epochs=st.floats(0.0, 50.0),
    t=st.floats(0.0, 200.0),
)
def test_ramp_matches_the_formula(eps, step_size, ramp_epochs, t):
    attack = _attack()
    ramp = ir.EpsilonScheduler(attack, ramp_epochs=ramp_epochs, eps=eps, step_size=step_size)
    ramp.step(t)
    want_eps, want_step = _oracle(eps, step_size, ramp_epochs, t)
    assert attack.eps == pytest.approx(want_eps, rel=1e-12, abs=0.0)
    assert attack.step_size == pytest.approx(want_step, rel=1e-12, abs=0.0)
    assert attack.step_size > 0 and 0 <= attack.eps <= eps


def test_a_step_that_underflows_falls_back_to_the_final_step():
    attack = _attack()
    ramp = ir.EpsilonScheduler(attack, ramp_epochs=50.0, eps=1.0, step_size=1e-4)
    ramp.step(1e-320)  # ε(t) = 2e-322 > 0, α·2e-322 underflows to 0
    assert attack.eps > 0 and attack.step_size == 1e-4


def test_per_batch_ramp_grows_every_batch_and_ends_at_the_target():
    attack = _attack()
    ramp = ir.EpsilonScheduler(attack, ramp_epochs=2)
    batches = 5
    seen = []
    for epoch in range(3):
        for i in range(batches):
            ramp.step(epoch + i / batches)
            seen.append((attack.eps, attack.step_size))
    # Over the first 2 epochs (10 batches) ε rises strictly from 0, α/ε stays 0.04/0.3; then constant.
    assert seen[0] == (0.0, 0.04)
    ramped = seen[1:10]
    assert all(a[0] < b[0] for a, b in zip(ramped, ramped[1:]))
    assert all(math.isclose(s / e, 0.04 / 0.3) for e, s in ramped)
    assert seen[10:] == [(0.3, 0.04)] * 5


def test_defaults_from_the_attack_and_no_ramp():
    attack = _attack(eps=8 / 255, step_size=2 / 255)
    ramp = ir.EpsilonScheduler(attack, ramp_epochs=0)
    assert (attack.eps, attack.step_size) == (8 / 255, 2 / 255)
    assert (ramp.eps, ramp.step_size, ramp.fraction) == (8 / 255, 2 / 255, 1.0)


def test_step_without_argument_moves_to_the_next_whole_epoch():
    attack = _attack()
    ramp = ir.EpsilonScheduler(attack, ramp_epochs=4)
    ramp.step(1.6)
    ramp.step()
    assert ramp.last_epoch == 2.0 and attack.eps == pytest.approx(0.15)


def test_the_attack_stays_inside_the_ramped_ball():
    attack = _attack(steps=5)
    ramp = ir.EpsilonScheduler(attack, ramp_epochs=1)
    x, y = torch.rand(32, 1, 4, 4), torch.randint(0, 5, (32,))
    for t, eps in ((0.0, 0.0), (0.25, 0.075), (0.5, 0.15), (1.0, 0.3)):
        ramp.step(t)
        adv, kappa = attack(x, y)
        assert (adv - x).abs().max().item() <= eps + 1e-6
        if eps == 0:  # every iterate is x: κ counts K checks of the natural prediction
            assert torch.equal(adv, x)
            correct = attack.model(x).argmax(1) == y
            assert torch.equal(kappa, correct.long() * 5)


def test_state_dict_round_trip_under_weights_only():
    attack = _attack()
    ramp = ir.EpsilonScheduler(attack, ramp_epochs=2.5)
    ramp.step(1.25)
    buffer = io.BytesIO()
    torch.save(ramp.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state == {"eps": 0.3, "step_size": 0.04, "ramp_epochs": 2.5, "last_epoch": 1.25}
    fresh_attack = _attack(eps=1.0, step_size=0.5)
    fresh = ir.EpsilonScheduler(fresh_attack, ramp_epochs=0)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    assert (fresh_attack.eps, fresh_attack.step_size) == (attack.eps, attack.step_size)


def test_bad_arguments():
    attack = _attack()
    with pytest.raises(TypeError, match="GeometryAwareAttack.*eps_ramp_epochs"):
        ir.EpsilonScheduler(nn.Linear(2, 2), ramp_epochs=1)
    with pytest.raises(ValueError, match="ramp_epochs"):
        ir.EpsilonScheduler(attack, ramp_epochs=-1)
    with pytest.raises(ValueError, match="ramp_epochs"):
        ir.EpsilonScheduler(attack, ramp_epochs=math.inf)
    with pytest.raises(TypeError, match="ramp_epochs"):
        ir.EpsilonScheduler(attack, ramp_epochs="2")
    with pytest.raises(ValueError, match="step_size"):
        ir.EpsilonScheduler(attack, ramp_epochs=1, step_size=0.0)
    with pytest.raises(ValueError, match="eps"):
        ir.EpsilonScheduler(attack, ramp_epochs=1, eps=math.nan)
    ramp = ir.EpsilonScheduler(attack, ramp_epochs=1)
    with pytest.raises(ValueError, match="0-based"):
        ramp.step(-0.5)
    with pytest.raises(ValueError, match="0-based"):
        ramp.step(math.nan)
    assert "ramp_epochs=1" in repr(ramp)


def test_a_refused_state_changes_nothing():
    attack = _attack()
    ramp = ir.EpsilonScheduler(attack, ramp_epochs=2)
    ramp.step(1.0)
    before = (ramp.state_dict(), attack.eps, attack.step_size)
    for state in (
        {"eps": 0.3, "step_size": 0.0, "ramp_epochs": 2.0, "last_epoch": 1.0},
        {"eps": "x", "step_size": 0.04, "ramp_epochs": 2.0, "last_epoch": 1.0},
        {"eps": 0.3, "step_size": 0.04, "ramp_epochs": 2.0},
        [("eps", 0.3)],
    ):
        with pytest.raises((TypeError, ValueError), match="Expected"):
            ramp.load_state_dict(state)
        assert (ramp.state_dict(), attack.eps, attack.step_size) == before


def test_a_method_ramps_eps_per_batch_and_keeps_whole_epoch_schedules():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    method = ir.methods.get(
        "gairat", model, eps=0.3, step_size=0.04, eps_ramp_epochs=2, burn_in_epochs=1
    )
    seen = []
    for t in (0.0, 0.5, 0.99, 1.0, 1.5, 2.0, 3.25):
        method.set_epoch(t)
        seen.append((method.epoch, method.reweighting, method.attack.eps))
    want_eps = [_oracle(0.3, 0.04, 2, t)[0] for t in (0.0, 0.5, 0.99, 1.0, 1.5, 2.0, 3.25)]
    assert [e for _, _, e in seen] == pytest.approx(want_eps, abs=1e-15)
    assert [(e, r) for e, r, _ in seen] == [
        (0, False), (0, False), (0, False), (1, True), (1, True), (2, True), (3, True)
    ]  # fmt: skip
    assert method.progress == 3.25 and method.state_dict() == {"epoch": 3.25}


def test_a_method_at_the_start_of_the_ramp_trains_on_natural_examples():
    # ε(0) = 0: the attack returns x, so AT's loss is the natural mean cross-entropy.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    method = ir.methods.get("at", model, eps=0.3, step_size=0.04, eps_ramp_epochs=1)
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 5, (8,))
    loss = method.loss(x, y)
    assert torch.allclose(loss, nn.functional.cross_entropy(model(x), y), rtol=1e-6, atol=0)


def test_the_cw_attack_of_the_official_gair_trades_follows_the_ramp():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    method = ir.methods.get(
        "gair-trades", model, variant="official", eps=0.3, step_size=0.04, eps_ramp_epochs=4
    )
    method.set_epoch(1.0)
    cw = method._cw_attack
    assert (cw.eps, cw.step_size) == (method.attack.eps, method.attack.step_size)
    assert method.attack.eps == pytest.approx(0.075)


def test_a_method_state_dict_restores_the_ramp():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    method = ir.methods.get("at", model, eps=0.3, step_size=0.04, eps_ramp_epochs=2)
    method.set_epoch(1.5)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    fresh = ir.methods.get("at", model, eps=0.3, step_size=0.04, eps_ramp_epochs=2)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert (fresh.epoch, fresh.progress, fresh.attack.eps) == (1, 1.5, method.attack.eps)
    with pytest.raises(ValueError, match="Method.state_dict"):
        fresh.load_state_dict({"epochs": 1})
    with pytest.raises(ValueError, match="eps_ramp_epochs"):
        ir.methods.get("at", model, eps_ramp_epochs=-1)
    with pytest.raises(ValueError, match="0-based"):
        method.set_epoch(-0.5)
    assert ir.methods.get("at", model).eps_scheduler is None
