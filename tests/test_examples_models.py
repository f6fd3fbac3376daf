"""Tests for examples/models.py: output shapes, the papers' parameter counts, the dispatcher."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from models import PreActResNet18, ResNet18, SmallCNN, WideResNet, build_model  # noqa: E402


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def wrn_34_10() -> nn.Module:
    """Built once: 46 M parameters."""
    return build_model("wrn-34-10", 10, 3)


def test_resnet18_parameter_count_and_shape():
    model = ResNet18(num_classes=10)
    # kuangliu/pytorch-cifar ResNet-18 for CIFAR-10.
    assert _count(model) == 11_173_962
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_wrn_34_10_parameter_count_and_shape(wrn_34_10):
    # The TRADES WRN-34-10 (GAIRAT's and MAIL's "WRN-32-10").
    assert _count(wrn_34_10) == 46_160_474
    with torch.no_grad():
        assert wrn_34_10.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_wrn_28_10_depth():
    model = WideResNet(depth=28, widen_factor=10, num_classes=10)
    # Four wide blocks per stage for depth 28, five for depth 34.
    assert len(model.block1) == 4
    assert _count(model) == 36_479_194


def test_small_wrn_forward_and_bad_depth():
    model = WideResNet(depth=10, widen_factor=1, num_classes=7)
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=32)


def test_preact_resnet18_shape():
    model = PreActResNet18(num_classes=100)
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("in_channels, side", [(1, 28), (3, 32)])
def test_smallcnn_flattened_size(in_channels, side):
    model = SmallCNN(num_classes=10, in_channels=in_channels)
    first_fc = model.classifier[0]
    expected_side = ((side - 4) // 2 - 4) // 2  # two valid 3×3 convs, pool, twice
    assert first_fc.in_features == 64 * expected_side * expected_side
    assert model.eval()(torch.rand(2, in_channels, side, side)).shape == (2, 10)


def test_smallcnn_trades_layout():
    model = SmallCNN()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert [f.out_features for f in linears] == [200, 200, 10]
    assert _count(model) == 312_202
    # TRADES starts the last layer at zero: every logit is 0 before training.
    assert torch.equal(model.eval()(torch.rand(2, 1, 28, 28)), torch.zeros(2, 10))
    with pytest.raises(ValueError, match="input_size"):
        SmallCNN(input_size=12)


def test_wong_mnist_layout_and_parameter_count():
    model = build_model("wong-mnist", 10, 1)
    # Wong, Rice and Kolter 2020's MNIST net: two 4×4 stride-2 convs (28 -> 14 -> 7), fc100, fc10.
    assert (
        _count(model)
        == 16 * 1 * 4 * 4 + 16 + 32 * 16 * 4 * 4 + 32 + 1568 * 100 + 100 + 100 * 10 + 10
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 16, (4, 4), (2, 2), (1, 1)),
        (16, 32, (4, 4), (2, 2), (1, 1)),
    ]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in linears] == [(1568, 100), (100, 10)]
    kinds = [type(m) for m in model.modules() if not isinstance(m, (nn.Sequential, type(model)))]
    assert kinds == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert model.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "name, in_channels, side",
    [("resnet18", 3, 32), ("preact-resnet18", 3, 32), ("smallcnn", 1, 28), ("SmallCNN", 3, 32)],
)
def test_build_model_forward(name, in_channels, side):
    model = build_model(name, num_classes=5, in_channels=in_channels)
    assert model.eval()(torch.rand(2, in_channels, side, side)).shape == (2, 5)


def test_build_model_unknown_lists_names():
    with pytest.raises(ValueError, match="preact-resnet18.*wrn-34-10"):
        build_model("resnet50", 10, 3)


def test_models_take_gradients_wrt_input():
    model = build_model("resnet18", 10, 3).eval()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
