"""Networks of the papers' experiments, for the examples.

Every model takes inputs in [0, 1] (no normalisation layer inside, as in both papers' code) and returns
logits of shape ``(N, num_classes)``.

| name | used by |
|---|---|
| ``"resnet18"`` | MAIL (all ResNet-18 tables); GAIRAT Figure 4 / Appendix C.3 |
| ``"preact-resnet18"`` | common AT baselines (Rice et al. 2020) |
| ``"wrn-34-10"`` | GAIRAT and MAIL "WRN-32-10" (the TRADES WRN-34-10), TRADES, MART |
| ``"wrn-28-10"`` | the standard WRN-28-10 |
| ``"smallcnn"`` | TRADES / GAIRAT MNIST experiments |
| ``"wong-mnist"`` | Wong, Rice and Kolter 2020 (from Wong and Kolter 2018): the small MNIST net |
"""

from __future__ import annotations

from typing import Callable, Optional, cast

import torch
from torch import Tensor, nn


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _projection(in_channels: int, out_channels: int, stride: int, batch_norm: bool) -> nn.Module:
    """1×1 strided convolution for a shortcut whose shape changes (identity otherwise)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels)) if batch_norm else conv


class BasicBlock(nn.Module):
    """Post-activation residual block: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = _projection(in_channels, out_channels, stride, batch_norm=True)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016b); the projection sees the activated input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.shortcut = _projection(in_channels, out_channels, stride, batch_norm=False)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


def _stage(
    block: Callable[[int, int, int], nn.Module],
    in_channels: int,
    out_channels: int,
    num_blocks: int,
    stride: int,
) -> nn.Sequential:
    """``num_blocks`` blocks; only the first one changes stride and width."""
    layers = [block(in_channels, out_channels, stride)]
    layers += [block(out_channels, out_channels, 1) for _ in range(num_blocks - 1)]
    return nn.Sequential(*layers)


class ResNet18(nn.Module):
    """CIFAR ResNet-18 (the kuangliu/pytorch-cifar network used by MAIL and GAIRAT's ResNet-18 runs).

    3×3 stem with stride 1 and no max-pool, post-activation BasicBlocks [2, 2, 2, 2] of widths
    64-128-256-512, global average pooling (the 4×4 average pool on 32×32 inputs), linear classifier.
    11,173,962 parameters for 10 classes.

    Args:
        num_classes: number of logits.
        in_channels: input channels (3 for colour images).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _stage(BasicBlock, 64, 64, 2, 1)
        self.layer2 = _stage(BasicBlock, 64, 128, 2, 2)
        self.layer3 = _stage(BasicBlock, 128, 256, 2, 2)
        self.layer4 = _stage(BasicBlock, 256, 512, 2, 2)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for 32×32 inputs (the common AT baseline of Rice et al. 2020).

    Same stem, widths and stages as :class:`ResNet18`, with :class:`PreActBlock` and a final
    BatchNorm + ReLU before the pooling.

    Args:
        num_classes: number of logits.
        in_channels: input channels (3 for colour images).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, 64)
        self.layer1 = _stage(PreActBlock, 64, 64, 2, 1)
        self.layer2 = _stage(PreActBlock, 64, 128, 2, 2)
        self.layer3 = _stage(PreActBlock, 128, 256, 2, 2)
        self.layer4 = _stage(PreActBlock, 256, 512, 2, 2)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = torch.relu(self.bn(out))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class WideBlock(nn.Module):
    """Pre-activation wide block of the TRADES/MART WideResNet.

    When the width changes, the activated input feeds both the 3×3 path and the 1×1 projection; when
    it does not, the shortcut is the raw input.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.dropout = nn.Dropout(drop_rate)
        self.shortcut = _projection(in_channels, out_channels, stride, batch_norm=False)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(out)
        out = torch.relu(self.bn2(self.conv1(out)))
        out = self.conv2(self.dropout(out))
        return out + shortcut


class WideResNet(nn.Module):
    """WideResNet-``depth``-``widen_factor`` in the TRADES/MART style (Zagoruyko & Komodakis 2016).

    ``(depth − 4) / 6`` wide blocks per stage, widths 16k-32k-64k after a 16-channel 3×3 stem, final
    BatchNorm + ReLU, global average pooling, linear. ``depth=34, widen_factor=10`` is the TRADES
    WRN-34-10 (46,160,474 parameters for 10 classes), which GAIRAT and MAIL call "WRN-32-10";
    ``depth=28`` gives WRN-28-10. Initialisation as in that code: He-normal convolutions (fan-out),
    unit BatchNorm, zero linear bias.

    Args:
        depth: total depth, ``6n + 4``.
        widen_factor: width multiplier ``k``.
        num_classes: number of logits.
        drop_rate: dropout inside each block (0 in the papers).
        in_channels: input channels (3 for colour images).

    Raises:
        ValueError: if ``depth − 4`` is not a positive multiple of 6.
    """

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        drop_rate: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"Expected depth = 6n + 4 with n >= 1 (e.g. 28, 34), got {depth}.")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

        def block(i: int, o: int, s: int) -> WideBlock:
            return WideBlock(i, o, s, drop_rate)

        self.conv1 = _conv3x3(in_channels, widths[0])
        self.block1 = _stage(block, widths[0], widths[1], n, 1)
        self.block2 = _stage(block, widths[1], widths[2], n, 2)
        self.block3 = _stage(block, widths[2], widths[3], n, 2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = torch.relu(self.bn(out))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class SmallCNN(nn.Module):
    """The TRADES MNIST network used by GAIRAT's MNIST runs.

    conv32-conv32-maxpool-conv64-conv64-maxpool (3×3, no padding, ReLU) then fc200-fc200-fc with
    ReLU and dropout 0.5 before the second fc. He-normal convolutions, zero biases, and a zero-initialised
    last layer as in TRADES. The flattened size is computed from ``input_size``: 64·4·4 for 28×28,
    64·5·5 for 32×32.

    Args:
        num_classes: number of logits.
        in_channels: input channels (1 for MNIST).
        input_size: height = width of the inputs; None means 28 for one channel, else 32.
        dropout: dropout probability in the classifier.

    Raises:
        ValueError: if ``input_size`` is below 16 (nothing left after the two poolings).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: Optional[int] = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        size = input_size if input_size is not None else (28 if in_channels == 1 else 32)
        if size < 16:
            raise ValueError(f"Expected input_size >= 16, got {size}.")
        side = ((size - 4) // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * side * side, 200),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(200, 200),
            nn.ReLU(),
            nn.Linear(200, num_classes),
        )
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        last = cast(nn.Linear, self.classifier[-1])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class WongMNIST(nn.Module):
    """The small MNIST network of Wong, Rice and Kolter ("Fast is better than free", ICLR 2020), their
    MNIST model from Wong and Kolter 2018.

    Conv(c→16, 4×4, stride 2, pad 1) – ReLU – Conv(16→32, 4×4, stride 2, pad 1) – ReLU –
    Linear(32·7·7 → 100) – ReLU – Linear(100 → num_classes), PyTorch's default initialisation; 28×28
    inputs. About 10× cheaper per image than :class:`SmallCNN`.

    Args:
        num_classes: number of logits.
        in_channels: input channels (1 for MNIST).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "preact-resnet18": lambda c, i: PreActResNet18(c, in_channels=i),
    "resnet18": lambda c, i: ResNet18(c, in_channels=i),
    "smallcnn": lambda c, i: SmallCNN(c, in_channels=i),
    "wong-mnist": lambda c, i: WongMNIST(c, in_channels=i),
    "wrn-28-10": lambda c, i: WideResNet(28, 10, c, in_channels=i),
    "wrn-34-10": lambda c, i: WideResNet(34, 10, c, in_channels=i),
}


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Builds a model by name.

    Args:
        name: one of ``"resnet18"``, ``"preact-resnet18"``, ``"wrn-34-10"``, ``"wrn-28-10"``,
            ``"smallcnn"``, ``"wong-mnist"`` (case-insensitive).
        num_classes: number of logits.
        in_channels: input channels (1 for MNIST; SmallCNN then expects 28×28, else 32×32;
            ``"wong-mnist"`` always 28×28).

    Returns:
        The freshly initialised model.

    Raises:
        ValueError: on an unknown name; the message lists the valid ones.

    Example:
        >>> build_model("smallcnn", 10, 1)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"Expected a model name in {sorted(MODELS)}, got {name!r}.")
    return MODELS[key](num_classes, in_channels)
