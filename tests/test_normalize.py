"""Normalized: the model sees (x − mean)/std, attacks stay in pixel space, checkpoints stay the model's."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import instance_reweight as ir

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    )


def test_forward_normalises_each_channel_then_calls_the_model():
    net = _net().eval()
    x = torch.rand(5, 3, 4, 4)
    expected_input = x.clone()
    for c in range(3):  # the oracle, channel by channel
        expected_input[:, c] = (x[:, c] - MEAN[c]) / STD[c]
    torch.testing.assert_close(ir.Normalized(net, MEAN, STD)(x), net(expected_input))


@pytest.mark.parametrize(
    "mean, std, shape",
    [(0.5, 0.25, (6, 7)), (torch.linspace(-1, 1, 7), torch.full((7,), 2.0), (6, 7))],
)
def test_scalars_and_per_feature_tensors_broadcast_against_one_example(mean, std, shape):
    net = nn.Linear(7, 2)
    x = torch.randn(*shape)
    torch.testing.assert_close(ir.Normalized(net, mean, std)(x), net((x - mean) / std))


def test_the_state_dict_is_the_inner_models():
    net = _net()
    model = ir.Normalized(net, MEAN, STD)
    state = model.state_dict()
    assert list(state) == list(net.state_dict())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert [n for n, _ in model.named_parameters()] == [
        "model." + n for n, _ in net.named_parameters()
    ]


def test_checkpoints_load_both_ways_and_when_nested():
    bare, other = _net(0), _net(1)
    wrapped = ir.Normalized(other, MEAN, STD)
    wrapped.load_state_dict(bare.state_dict())  # an existing checkpoint, strict
    assert all(
        torch.equal(a, b) for a, b in zip(other.state_dict().values(), bare.state_dict().values())
    )

    fresh = _net(2)
    buffer = io.BytesIO()
    torch.save(ir.Normalized(_net(3), MEAN, STD).state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))  # into the bare model, strict
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), _net(3).state_dict().values())
    )

    outer = nn.Sequential(ir.Normalized(_net(4), MEAN, STD), nn.Softmax(dim=1))
    assert list(outer.state_dict()) == ["0." + k for k in _net(4).state_dict()]
    target = nn.Sequential(ir.Normalized(_net(5), MEAN, STD), nn.Softmax(dim=1))
    target.load_state_dict(outer.state_dict())
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(target.eval()(x), outer.eval()(x))


def test_mean_and_std_follow_the_module_but_are_not_saved():
    model = ir.Normalized(_net(), MEAN, STD).double()
    assert model.mean.dtype == model.std.dtype == torch.float64
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    assert model(torch.rand(2, 3, 4, 4, dtype=torch.float64)).dtype == torch.float64


def test_an_attack_on_the_wrapper_stays_in_pixel_space():
    model = ir.Normalized(_net().eval(), MEAN, STD)
    x, y = torch.rand(16, 3, 4, 4), torch.randint(0, 3, (16,))
    eps = 8 / 255
    x_adv, _ = ir.GeometryAwareAttack(model, eps=eps, step_size=2 / 255, steps=5)(x, y)
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x).abs().max()) > eps / 2  # the attack did move, by pixel units


@pytest.mark.parametrize(
    "mean, std, error, match",
    [
        (MEAN, (0.2, 0.0, 0.2), ValueError, "Expected every value of `std` > 0"),
        (MEAN, (0.2, -0.1, 0.2), ValueError, "Expected every value of `std` > 0"),
        ("0.5", STD, TypeError, "Expected `mean` as a number"),
        (MEAN, (), ValueError, "Expected `std` with one value per channel"),
        ((math.nan, 0.0, 0.0), STD, ValueError, "Expected finite values in `mean`"),
        (torch.tensor([0, 0, 0]), STD, TypeError, "floating-point tensor"),
        (MEAN, (0.2, 0.2), ValueError, "broadcast together"),
        ((True, 0.0, 0.0), STD, TypeError, "Expected `mean` as a number"),
    ],
)
def test_bad_statistics_are_refused(mean, std, error, match):
    with pytest.raises(error, match=match):
        ir.Normalized(_net(), mean, std)


def test_a_model_that_is_not_a_module_and_a_misfit_input_are_refused():
    with pytest.raises(TypeError, match="Expected `model` to be a torch.nn.Module"):
        ir.Normalized(lambda x: x, MEAN, STD)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one value per channel"):
        ir.Normalized(nn.Linear(3, 2), MEAN, STD)(torch.rand(4, 3))  # features, not channels


def test_an_input_that_does_not_broadcast_raises_value_error_not_runtime_error():
    model = ir.Normalized(_net(), MEAN, STD)
    with pytest.raises(ValueError, match=r"shapes \(3, 1, 1\)/\(3, 1, 1\), got \(2, 4, 4, 4\)"):
        model(torch.rand(2, 4, 4, 4))  # four channels against three statistics
