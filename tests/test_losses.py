"""Per-example loss terms against oracles written from the papers' equations (explicit loops, float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from instance_reweight import InstanceReweightedLoss
from instance_reweight.losses import boosted_ce, cw_margin, misclassification_aware_kl, trades_kl


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def _kl(adv: list[float], nat: list[float]) -> float:
    p, q = _softmax(nat), _softmax(adv)
    return sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q))


def oracle_trades_kl(logits_adv, logits_nat):
    return [_kl(a, n) for a, n in zip(logits_adv.tolist(), logits_nat.tolist())]


def oracle_boosted_ce(logits_adv, y):
    out = []
    for row, label in zip(logits_adv.tolist(), y.tolist()):
        p = _softmax(row)
        runner_up = max(p[k] for k in range(len(p)) if k != label)
        out.append(-math.log(p[label]) - math.log(1.0 - runner_up))
    return out


def oracle_misclassification_aware_kl(logits_adv, logits_nat, y):
    return [
        _kl(a, n) * (1.0 - _softmax(n)[label])
        for a, n, label in zip(logits_adv.tolist(), logits_nat.tolist(), y.tolist())
    ]


def oracle_cw_margin(logits, y, confidence):
    out = []
    for row, label in zip(logits.tolist(), y.tolist()):
        other = max(row[k] for k in range(len(row)) if k != label)
        out.append(-max(row[label] - other + confidence, 0.0))
    return out


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits_adv = 3 * torch.randn(7, 5, generator=g, dtype=torch.float64)
    logits_nat = 3 * torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (7,), generator=g)
    return logits_adv, logits_nat, y


def test_trades_kl_matches_oracle(batch):
    logits_adv, logits_nat, _ = batch
    expected = torch.tensor(oracle_trades_kl(logits_adv, logits_nat), dtype=torch.float64)
    torch.testing.assert_close(trades_kl(logits_adv, logits_nat), expected)


def test_boosted_ce_matches_oracle(batch):
    logits_adv, _, y = batch
    expected = torch.tensor(oracle_boosted_ce(logits_adv, y), dtype=torch.float64)
    torch.testing.assert_close(boosted_ce(logits_adv, y), expected)


def test_misclassification_aware_kl_matches_oracle(batch):
    logits_adv, logits_nat, y = batch
    expected = torch.tensor(
        oracle_misclassification_aware_kl(logits_adv, logits_nat, y), dtype=torch.float64
    )
    torch.testing.assert_close(misclassification_aware_kl(logits_adv, logits_nat, y), expected)


@pytest.mark.parametrize("confidence", [0.0, 2.0, 50.0])
def test_cw_margin_matches_oracle(batch, confidence):
    logits, _, y = batch
    expected = torch.tensor(oracle_cw_margin(logits, y, confidence), dtype=torch.float64)
    torch.testing.assert_close(cw_margin(logits, y, confidence=confidence), expected)


def test_boosted_ce_is_exact_when_the_runner_up_takes_all_the_mass():
    # Two classes: 1 - p_runner_up = p_y, so BCE = -2 log p_y = 2 (100 + log(1 + e^-100)) ~ 200. MART's
    # official log(1.0001 - p) would cap the second term at -log(1e-4) ~ 9.2.
    logits = torch.tensor([[0.0, 100.0]])
    torch.testing.assert_close(boosted_ce(logits, torch.tensor([0])), torch.tensor([200.0]))


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, n, y: trades_kl(a, n),
        lambda a, n, y: boosted_ce(a, y),
        lambda a, n, y: misclassification_aware_kl(a, n, y),
        lambda a, n, y: cw_margin(a, y, confidence=1.0),
    ],
    ids=["trades_kl", "boosted_ce", "misclassification_aware_kl", "cw_margin"],
)
def test_gradcheck_float64(batch, fn):
    logits_adv, logits_nat, y = batch
    a = logits_adv.clone().requires_grad_(True)
    n = logits_nat.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, n: fn(a, n, y), (a, n), check_undefined_grad=False)


def test_gradients_reach_both_logits(batch):
    logits_adv, logits_nat, y = (t.float() if t.is_floating_point() else t for t in batch)
    a = logits_adv.requires_grad_(True)
    n = logits_nat.requires_grad_(True)
    misclassification_aware_kl(
        a, n, y
    ).sum().backward()  # the (1 - p_y(x)) factor keeps its gradient
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert n.grad is not None and n.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "dtype,out",
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_shapes_and_dtypes(dtype, out):
    z = torch.randn(4, 3).to(dtype)
    y = torch.tensor([0, 1, 2, 0], dtype=torch.int32)  # any integer dtype
    for value in (
        trades_kl(z, z),
        boosted_ce(z, y),
        misclassification_aware_kl(z, z, y),
        cw_margin(z, y),
    ):
        assert value.shape == (4,) and value.dtype == out and bool(torch.isfinite(value).all())


def test_usable_as_base_loss():
    a, n, y = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    criterion = InstanceReweightedLoss(misclassification_aware_kl, "uniform")
    torch.testing.assert_close(criterion(a, n, y), misclassification_aware_kl(a, n, y).mean())
    plain = InstanceReweightedLoss(trades_kl, "uniform")
    torch.testing.assert_close(
        plain(a, n), nn.KLDivLoss(reduction="batchmean")(a.log_softmax(1), n.softmax(1))
    )


def test_bad_inputs_raise():
    z, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="like `logits_adv`"):
        trades_kl(z, torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"Expected `logits_nat` of shape \(4, C\)"):
        trades_kl(z, torch.randn(3, 3))
    with pytest.raises(ValueError, match="at least 2 classes"):
        boosted_ce(torch.randn(4, 1), y)
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        cw_margin(torch.randn(4), y)
    with pytest.raises(TypeError, match="integer class indices"):
        boosted_ce(z, y.float())
    with pytest.raises(ValueError, match=r"of shape \(4,\)"):
        misclassification_aware_kl(z, z, y[:3])
    with pytest.raises(TypeError, match="torch.Tensor"):
        trades_kl(z.tolist(), z)
