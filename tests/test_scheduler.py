"""BurnInScheduler: reweighting from the 0-based epoch `burn_in_epochs` on, λ schedules, state round-trip."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import instance_reweight as ir


def _criterion(scheme="gairat"):
    return ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), scheme)


def test_active_iff_epoch_at_least_burn_in():
    criterion = _criterion()
    scheduler = ir.BurnInScheduler(criterion, burn_in_epochs=60)
    assert scheduler.last_epoch == 0 and not criterion.active
    for epoch in (0, 58, 59, 60, 61, 119):
        scheduler.step(epoch)
        assert criterion.active is (epoch >= 60) and scheduler.active is (epoch >= 60)


def test_step_without_argument_moves_to_the_next_epoch():
    criterion = _criterion()
    scheduler = ir.BurnInScheduler(criterion, burn_in_epochs=2)
    states = []
    for _ in range(3):
        scheduler.step()
        states.append((scheduler.last_epoch, criterion.active))
    assert states == [(1, False), (2, True), (3, True)]


def test_no_burn_in_reweights_from_the_start():
    criterion = _criterion()
    ir.BurnInScheduler(criterion, burn_in_epochs=0)
    assert criterion.active


def test_fixed_lam_is_set_when_active():
    criterion = _criterion()
    scheduler = ir.BurnInScheduler(criterion, burn_in_epochs=3, lam=-2.0)
    assert criterion.scheme_params["lam"] == 0.0  # the scheme's default, untouched during burn-in
    scheduler.step(3)
    assert criterion.scheme_params["lam"] == -2.0


def test_piecewise_lam_schedule_as_intended():
    # GAIRAT WRN: λ from the burn-in, λ − 1 from epoch 90, λ − 1.5 from epoch 110 (the official
    # branch for the later milestones is never reached).
    def piecewise(epoch):
        return -1.0 if epoch < 90 else -2.0 if epoch < 110 else -2.5

    criterion = _criterion()
    scheduler = ir.BurnInScheduler(criterion, burn_in_epochs=60, lam=piecewise)
    seen = {}
    for epoch in (60, 89, 90, 109, 110, 119):
        scheduler.step(epoch)
        seen[epoch] = criterion.scheme_params["lam"]
    assert seen == {60: -1.0, 89: -1.0, 90: -2.0, 109: -2.0, 110: -2.5, 119: -2.5}


def test_linear_schedule_from_infinity_gives_nan_and_is_refused():
    # The official linear schedule λ_max − (e/E)(λ_max − λ) with λ_max = ∞ is ∞ − ∞ = NaN.
    scheduler = ir.BurnInScheduler(
        _criterion(), burn_in_epochs=1, lam=lambda e: math.inf - (e / 100) * (math.inf + 1)
    )
    with pytest.raises(ValueError, match="finite λ_max"):
        scheduler.step(1)


def test_lam_infinity_gives_uniform_weights():
    criterion = _criterion()
    ir.BurnInScheduler(criterion, burn_in_epochs=0, lam=math.inf)
    criterion(torch.zeros(3, 2), torch.tensor([0, 1, 0]), kappa=torch.tensor([0, 5, 10]))
    assert torch.equal(criterion.last_weights, torch.ones(3))


def test_state_dict_round_trip_under_weights_only():
    criterion = _criterion()
    scheduler = ir.BurnInScheduler(criterion, burn_in_epochs=5, lam=0.5)
    scheduler.step(7)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh_criterion = _criterion()
    fresh = ir.BurnInScheduler(fresh_criterion, burn_in_epochs=5)
    fresh.load_state_dict(state)
    assert (
        fresh.state_dict()
        == scheduler.state_dict()
        == {"last_epoch": 7, "burn_in_epochs": 5, "lam": 0.5}
    )
    assert fresh_criterion.active and fresh_criterion.scheme_params == criterion.scheme_params


def test_state_dict_with_a_schedule_reapplies_it():
    criterion = _criterion()
    scheduler = ir.BurnInScheduler(criterion, burn_in_epochs=1, lam=lambda e: -float(e))
    scheduler.step(4)
    fresh_criterion = _criterion()
    fresh = ir.BurnInScheduler(fresh_criterion, burn_in_epochs=1, lam=lambda e: -float(e))
    fresh.load_state_dict(scheduler.state_dict())
    assert fresh_criterion.scheme_params["lam"] == -4.0 and fresh.last_epoch == 4


def test_bad_arguments():
    with pytest.raises(TypeError, match="InstanceReweightedLoss"):
        ir.BurnInScheduler(nn.CrossEntropyLoss(), burn_in_epochs=1)
    with pytest.raises(ValueError, match="burn_in_epochs"):
        ir.BurnInScheduler(_criterion(), burn_in_epochs=-1)
    with pytest.raises(ValueError, match="λ parameter.*'mail'"):
        ir.BurnInScheduler(_criterion("mail"), burn_in_epochs=1, lam=0.0)
    with pytest.raises(ValueError, match="number"):
        ir.BurnInScheduler(_criterion(), burn_in_epochs=1, lam=math.nan)
    scheduler = ir.BurnInScheduler(_criterion(), burn_in_epochs=1)
    with pytest.raises(ValueError, match="0-based"):
        scheduler.step(-1)
    assert "burn_in_epochs=1" in repr(scheduler)


def test_a_refused_state_changes_nothing():
    criterion = _criterion()
    scheduler = ir.BurnInScheduler(criterion, burn_in_epochs=2, lam=0.5)
    scheduler.step(3)
    before = (scheduler.state_dict(), criterion.active, criterion.scheme_params)
    for state in (
        {"last_epoch": 1, "burn_in_epochs": 2, "lam": "garbage"},
        {"last_epoch": 1, "burn_in_epochs": -2, "lam": 0.0},
        {"last_epoch": 1, "burn_in_epochs": 2},
    ):
        with pytest.raises((TypeError, ValueError), match="Expected"):
            scheduler.load_state_dict(state)
        assert (scheduler.state_dict(), criterion.active, criterion.scheme_params) == before
