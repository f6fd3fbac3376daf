"""InstanceReweightedLoss: Σωℓ/Σω (GAIRAT Alg. 2, MAIL Eq. 3) with the papers' weights, and its guards."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import instance_reweight as ir


def _ce_oracle(logits, y):
    out = []
    for row, label in zip(logits.tolist(), y.tolist()):
        top = max(row)
        out.append(top + math.log(sum(math.exp(v - top) for v in row)) - row[label])
    return out


def _gairat_omega(k, steps, lam):
    return (1 + math.tanh(lam + 5 * (1 - 2 * k / steps))) / 2


def _mail_omega(pm, slope, bias):
    return 1 / (1 + math.exp(slope * (pm - bias)))


@pytest.fixture
def batch():
    torch.manual_seed(0)
    logits = torch.randn(12, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (12,))
    kappa = torch.randint(0, 11, (12,))
    return logits, y, kappa


def test_gairat_loss_is_normalised_weighted_sum(batch):
    logits, y, kappa = batch
    criterion = ir.InstanceReweightedLoss(
        nn.CrossEntropyLoss(reduction="none"), "gairat", steps=10, lam=-1.0
    )
    loss = criterion(logits, y, kappa=kappa)
    omega = [_gairat_omega(k, 10, -1.0) for k in kappa.tolist()]
    expected = sum(w * ell for w, ell in zip(omega, _ce_oracle(logits, y))) / sum(omega)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert criterion.last_weights.dtype == torch.float32
    assert criterion.last_weights.mean().item() == pytest.approx(1.0, rel=1e-6)


def test_mail_loss_with_pm_adv(batch):
    logits, y, _ = batch
    margin = ir.probabilistic_margin(logits, y)
    criterion = ir.InstanceReweightedLoss(
        nn.CrossEntropyLoss(reduction="none"), "mail", slope=10.0, bias=-0.5
    )
    loss = criterion(logits, y, margin=margin)
    omega = [_mail_omega(p, 10.0, -0.5) for p in margin.tolist()]
    expected = sum(w * ell for w, ell in zip(omega, _ce_oracle(logits, y))) / sum(omega)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_unnormalised_with_scale_is_the_official_mail_reduction(batch):
    logits, y, _ = batch
    margin = ir.probabilistic_margin(logits, y)
    loss = ir.instance_reweighted_loss(
        F.cross_entropy(logits, y, reduction="none"),
        "mail",
        margin=margin,
        normalize="none",
        scale=3.0,
        slope=10.0,
        bias=-0.5,
    )
    omega = [_mail_omega(p, 10.0, -0.5) for p in margin.tolist()]
    expected = sum(3 * w * ell for w, ell in zip(omega, _ce_oracle(logits, y))) / len(omega)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_module_equals_function(batch):
    logits, y, kappa = batch
    criterion = ir.InstanceReweightedLoss(
        nn.CrossEntropyLoss(reduction="none"), "gairat-linear", steps=10
    )
    functional = ir.instance_reweighted_loss(
        F.cross_entropy(logits, y, reduction="none"), "gairat-linear", kappa=kappa, steps=10
    )
    assert torch.equal(criterion(logits, y, kappa=kappa), functional)
    weights = ir.instance_weights("gairat-linear", kappa=kappa, steps=10)
    assert torch.equal(weights, criterion.last_weights)


def test_gradcheck_through_the_loss(batch):
    logits, y, kappa = batch
    logits.requires_grad_(True)
    gairat = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat", steps=10)
    assert torch.autograd.gradcheck(lambda z: gairat(z, y, kappa=kappa), (logits,))
    mail = ir.InstanceReweightedLoss(ir.losses.trades_kl, "mail", slope=2.0, bias=0.0)
    nat = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    margin = ir.probabilistic_margin(logits, y)
    assert torch.autograd.gradcheck(lambda a, b: mail(a, b, margin=margin), (logits, nat))


def test_weights_carry_no_gradient(batch):
    logits, y, _ = batch
    logits.requires_grad_(True)
    criterion = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "mail")
    # A margin built with the graph still acts as a constant: the gradient is Σ w ∇ℓ / N only.
    margin = logits.softmax(1).gather(1, y[:, None]).squeeze(1) - 0.5
    criterion(logits, y, margin=margin).backward()
    w = criterion.last_weights.double()
    assert not criterion.last_weights.requires_grad
    expected = torch.autograd.grad(
        (w * F.cross_entropy(logits, y, reduction="none")).mean(), logits
    )[0]
    torch.testing.assert_close(logits.grad, expected)


def test_float32_weights_for_low_precision_losses():
    losses = torch.rand(6).bfloat16()
    kappa = torch.arange(6)
    loss = ir.instance_reweighted_loss(losses, "gairat", kappa=kappa, steps=5)
    assert loss.dtype == torch.float32
    assert ir.instance_weights("gairat", kappa=kappa, steps=5).dtype == torch.float32


def test_zero_sum_falls_back_to_uniform():
    losses = torch.tensor([1.0, 2.0, 6.0])
    # The hinge as printed gives weight 0 to every PM <= β: Σω = 0.
    loss = ir.instance_reweighted_loss(
        losses, "hinge", margin=torch.tensor([-0.5, -0.2, 0.0]), slope=2.0, bias=0.0
    )
    assert loss.item() == pytest.approx(3.0)
    weights = ir.instance_weights("hinge", margin=torch.tensor([-0.5, -0.2, 0.0]), normalize="none")
    assert torch.equal(weights, torch.ones(3))


def test_non_finite_sum_falls_back_to_uniform():
    def explode(signal):
        return torch.tensor([math.inf, 1.0, 1.0])

    losses = torch.tensor([1.0, 2.0, 6.0])
    assert ir.instance_reweighted_loss(
        losses, explode, margin=torch.zeros(3)
    ).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="finite `margin`.*diverged"):
        ir.instance_weights("mail", margin=torch.tensor([math.nan, 0.0, 0.0]))


def test_callable_scheme():
    losses = torch.tensor([1.0, 3.0])
    loss = ir.instance_reweighted_loss(
        losses, lambda k: 1.0 / (1.0 + k.float()), kappa=torch.tensor([0, 1])
    )
    assert loss.item() == pytest.approx((1 * 1 + 0.5 * 3) / 1.5)
    with pytest.raises(ValueError, match=r"one weight per example, shape \(2,\)"):
        ir.instance_reweighted_loss(losses, lambda k: torch.ones(3), kappa=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="weighting signal"):
        ir.instance_reweighted_loss(losses, lambda k: k)


def test_uniform_is_the_plain_mean_without_a_signal():
    losses = torch.tensor([1.0, 2.0, 6.0])
    assert ir.instance_reweighted_loss(losses, "uniform").item() == pytest.approx(3.0)


def test_inactive_is_plain_mean_and_needs_no_signal(batch):
    logits, y, kappa = batch
    criterion = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat", steps=10)
    criterion.active = False
    assert criterion(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item())
    assert criterion(logits, y, kappa=kappa).item() == pytest.approx(
        F.cross_entropy(logits, y).item()
    )
    assert torch.equal(criterion.last_weights, torch.ones(12))
    with pytest.raises(
        ValueError, match="kappa"
    ):  # a wrong signal is still reported while inactive
        criterion(logits, y, margin=torch.zeros(12))


def test_wraps_any_per_example_loss():
    torch.manual_seed(0)
    pred, target = torch.randn(4, 3), torch.randn(4, 3)
    criterion = ir.InstanceReweightedLoss(
        lambda p, t: ((p - t) ** 2).sum(1), "gairat-linear", steps=4
    )
    kappa = torch.tensor([0, 1, 2, 4])
    omega = [1 - k / 5 for k in kappa.tolist()]
    per = ((pred - target) ** 2).sum(1).tolist()
    expected = sum(w * ell for w, ell in zip(omega, per)) / sum(omega)
    assert criterion(pred, target, kappa=kappa).item() == pytest.approx(expected, rel=1e-6)
    trades = ir.InstanceReweightedLoss(ir.losses.trades_kl, "mail", slope=2.0, bias=0.0)
    assert trades(pred, target, margin=torch.zeros(4)).item() == pytest.approx(
        ir.losses.trades_kl(pred, target).mean().item()
    )


def test_empty_batch_gives_zero_not_nan():
    criterion = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat")
    logits = torch.zeros(0, 3, requires_grad=True)
    loss = criterion(
        logits, torch.zeros(0, dtype=torch.long), kappa=torch.zeros(0, dtype=torch.long)
    )
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.shape == (0, 3)


def test_kappa_above_steps_raises():
    criterion = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat", steps=5)
    logits, y = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"kappa.*\[0, 5\].*got values in \[0, 10\].*steps="):
        criterion(logits, y, kappa=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        criterion(logits, y, kappa=torch.tensor([-1, 2]))


@pytest.mark.parametrize(
    "scheme, signal, error, match",
    [
        ("gairat", {"margin": torch.zeros(3)}, ValueError, r"kappa=.*scheme='mail'"),
        (
            "mail",
            {"kappa": torch.zeros(3, dtype=torch.long)},
            ValueError,
            r"margin=.*scheme='gairat'",
        ),
        ("gairat", {}, ValueError, "weighting signal"),
        (
            "uniform",
            {"kappa": torch.zeros(3, dtype=torch.long), "margin": torch.zeros(3)},
            ValueError,
            "both",
        ),
        ("gairat", {"kappa": torch.zeros(3)}, TypeError, r"kappa.long\(\)"),
        ("gairat", {"kappa": torch.zeros(3, 1, dtype=torch.long)}, ValueError, r"shape \(3,\)"),
        ("gairat", {"kappa": torch.zeros(4, dtype=torch.long)}, ValueError, r"shape \(3,\)"),
        ("mail", {"margin": torch.zeros(3, dtype=torch.long)}, TypeError, "floating-point"),
        ("mail", {"margin": [0.0, 0.0, 0.0]}, TypeError, "torch.Tensor"),
    ],
)
def test_bad_signals(scheme, signal, error, match):
    criterion = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), scheme)
    with pytest.raises(error, match=match):
        criterion(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), **signal)


def test_signal_on_another_device():
    with pytest.raises(ValueError, match=r"margin` on cpu.*got meta.*margin.to\('cpu'\)"):
        ir.instance_reweighted_loss(torch.ones(3), "mail", margin=torch.zeros(3, device="meta"))


def test_base_loss_that_reduces_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"reduction='mean'.*CrossEntropyLoss\(reduction='none'\)"):
        ir.InstanceReweightedLoss(nn.CrossEntropyLoss(), "gairat")
    criterion = ir.InstanceReweightedLoss(lambda z, y: F.cross_entropy(z, y), "gairat")
    with pytest.raises(ValueError, match="a scalar: it reduces.*reduction='none'"):
        criterion(
            torch.zeros(3, 2),
            torch.zeros(3, dtype=torch.long),
            kappa=torch.zeros(3, dtype=torch.long),
        )
    per_class = ir.InstanceReweightedLoss(lambda z, y: z.log_softmax(1), "gairat")
    with pytest.raises(ValueError, match=r"shape \(3,\), got \(3, 2\).*sum"):
        per_class(
            torch.zeros(3, 2),
            torch.zeros(3, dtype=torch.long),
            kappa=torch.zeros(3, dtype=torch.long),
        )
    not_tensor = ir.InstanceReweightedLoss(lambda z, y: z.tolist(), "gairat")
    with pytest.raises(TypeError, match="tensor of per-example losses"):
        not_tensor(
            torch.zeros(3, 2),
            torch.zeros(3, dtype=torch.long),
            kappa=torch.zeros(3, dtype=torch.long),
        )
    with pytest.raises(TypeError, match="callable"):
        ir.InstanceReweightedLoss("ce", "gairat")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(scheme="gairat-exp"), ValueError, "'gairat-tanh'"),
        (dict(scheme="gairat", slope=1.0), ValueError, "slope"),
        (dict(scheme="gairat", normalize="global2"), ValueError, "'batch', 'global', 'none'"),
        (dict(scheme="gairat", scale=0.0), ValueError, "scale"),
    ],
)
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), **kwargs)


def test_set_scheme_params_is_checked():
    criterion = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat", steps=10)
    criterion.set_scheme_params(lam=2.0)
    assert criterion.scheme_params == {"steps": 10, "lam": 2.0}
    with pytest.raises(ValueError, match="lam"):
        criterion.set_scheme_params(lam=math.nan)
    with pytest.raises(ValueError, match="slope"):
        criterion.set_scheme_params(slope=1.0)
    assert criterion.scheme_params == {"steps": 10, "lam": 2.0}


def test_repr_and_module_behaviour():
    criterion = ir.InstanceReweightedLoss(
        nn.CrossEntropyLoss(reduction="none"), "mail", normalize="none", scale=3.0
    )
    text = repr(criterion)
    assert (
        "scheme='mail'" in text
        and "normalize='none'" in text
        and "scale=3" in text
        and "slope=10.0" in text
    )
    assert isinstance(criterion.base_loss, nn.CrossEntropyLoss)
    buffer = io.BytesIO()
    torch.save(criterion.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == {}


def test_a_base_loss_of_an_integer_dtype_is_refused_not_cast():
    criterion = ir.InstanceReweightedLoss(lambda z, y: (z.argmax(1) != y).long(), "gairat")
    with pytest.raises(TypeError, match="floating-point losses, got dtype torch.int64"):
        criterion(torch.zeros(2, 3), torch.tensor([0, 1]), kappa=torch.tensor([0, 1]))


@pytest.mark.parametrize("after", ["returned", "transformed"])
def test_a_base_loss_that_calls_backward_itself_is_refused_with_the_fix(after):
    def base_loss(logits, y):
        losses = F.cross_entropy(logits, y, reduction="none")
        losses.mean().backward()
        return losses if after == "returned" else 2 * losses + 1

    z = torch.zeros(2, 3, requires_grad=True)
    criterion = ir.InstanceReweightedLoss(base_loss, "gairat")
    with pytest.raises(ValueError, match="calls `.backward\\(\\)` itself"):
        criterion(z * 2, torch.tensor([0, 1]), kappa=torch.tensor([0, 1]))


def test_a_loss_backpropagated_afterwards_is_not_mistaken_for_one():
    z = torch.zeros(2, 3, requires_grad=True)
    criterion = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat")
    for _ in range(2):  # a fresh graph each call
        criterion(z * 2, torch.tensor([0, 1]), kappa=torch.tensor([0, 1])).backward()
    assert z.grad is not None
