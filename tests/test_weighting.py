"""`ir.InstanceWeighting`: the papers' weights and reduction against oracles, overflow-free over the whole
range of λ and γ, settable parameters, burn-in, one host synchronisation per call."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from typing import List, Sequence

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import instance_reweight as ir

EPS32 = torch.finfo(torch.float32).eps


def _sigmoid(z: Decimal) -> Decimal:
    return 1 / (1 + (-z).exp())


def gairat_omega(kappa: Sequence[int], steps: int, lam: float, form: str = "tanh") -> List[Decimal]:
    """GAIRAT Eq. 6, (1 + tanh(z))/2 with z = λ + 5(1 − 2κ/K), written as 1/(1 + e^{−2z}) (the same
    value) in 60-digit decimals, so that no ω underflows; Appendix C.3's sigmoid(z); Eq. 7's linear."""
    z = [Decimal(lam) + 5 * (1 - Decimal(2 * k) / steps) for k in kappa]
    if form == "tanh":
        return [_sigmoid(2 * zi) for zi in z]
    if form == "sigmoid":
        return [_sigmoid(zi) for zi in z]
    return [1 - Decimal(k) / (steps + 1) for k in kappa]


def mail_omega(margin: Sequence[float], slope: float, bias: float) -> List[Decimal]:
    """MAIL Eq. 8: sigmoid(−γ(PM − β)), in 60-digit decimals."""
    return [_sigmoid(-Decimal(slope) * (Decimal(m) - Decimal(bias))) for m in margin]


def normalised(omega: Sequence[Decimal]) -> torch.Tensor:
    """w_i = N·ω_i / Σ_j ω_j (both papers), uniform where Σω = 0; float64."""
    total = sum(omega)
    if total == 0:
        return torch.ones(len(omega), dtype=torch.float64)
    return torch.tensor([float(len(omega) * o / total) for o in omega], dtype=torch.float64)


def assert_weights(got: torch.Tensor, expected: torch.Tensor, z_max: float) -> None:
    """float32 weights against the exact ones: the exponent z is rounded to float32 (relative error
    about ε·|z|, which becomes a relative error in ω), hence a tolerance that grows with |z|."""
    assert got.dtype == torch.float32 and not got.requires_grad and torch.isfinite(got).all()
    rtol = 16 * EPS32 * (1 + z_max)
    torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=1e-6)


@pytest.fixture(autouse=True)
def _precise_decimals():
    with localcontext() as ctx:
        ctx.prec = 60
        yield


# --- The papers' weights ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme,form", [("gairat", "tanh"), ("gairat-sigmoid", "sigmoid"), ("gairat-linear", "linear")]
)
def test_gairat_weights_match_the_equations(scheme, form):
    kappa = [0, 3, 3, 7, 10, 1, 9, 10]
    params = {"steps": 10} if form == "linear" else {"steps": 10, "lam": -1.0}
    weighting = ir.InstanceWeighting(scheme, **params)
    got = weighting(kappa=torch.tensor(kappa))
    expected = normalised(gairat_omega(kappa, 10, -1.0, form))
    assert_weights(got, expected, z_max=12.0)
    assert torch.equal(weighting.last_weights, got)


def test_margin_weights_match_the_equations():
    pm = [-0.9, -0.5, -0.2, 0.0, 0.3, 0.8]
    pm32 = torch.tensor(pm).tolist()  # the float32 values the weighting sees
    got = ir.InstanceWeighting("mail", slope=10.0, bias=-0.5)(margin=torch.tensor(pm))
    assert_weights(got, normalised(mail_omega(pm32, 10.0, -0.5)), z_max=13.0)
    hinge = [max(Decimal(0), 2 * Decimal(m)) for m in pm32]
    got = ir.InstanceWeighting("hinge", slope=2.0, bias=0.0)(margin=torch.tensor(pm))
    assert_weights(got, normalised(hinge), z_max=2.0)
    step = [Decimal("0.2") if m > 0 else Decimal("0.8") for m in pm32]
    got = ir.InstanceWeighting("step", alpha=0.2, bias=0.0)(margin=torch.tensor(pm))
    assert_weights(got, normalised(step), z_max=1.0)


def test_normalize_none_and_scale_give_the_raw_weights_times_scale():
    pm = torch.tensor([-0.5, 0.0, 0.5])
    got = ir.InstanceWeighting("mail", normalize="none", scale=3.0, slope=2.0, bias=0.0)(margin=pm)
    expected = torch.tensor(
        [3 * float(o) for o in mail_omega(pm.tolist(), 2.0, 0.0)], dtype=torch.float64
    )
    assert_weights(got, expected, z_max=1.0)


# --- Never NaN: the whole range of λ and γ ----------------------------------------------------------------


def test_the_reported_overflow_is_gone():
    # Raw weights e^-90 and e^-88 are subnormal or 0 in float32: N/Σω used to overflow to NaN and inf.
    got = ir.instance_weights("gairat", kappa=torch.tensor([10, 10, 9, 10]), steps=10, lam=-40.0)
    expected = normalised(gairat_omega([10, 10, 9, 10], 10, -40.0))
    assert_weights(got, expected, z_max=90.0)
    assert int(got.argmax()) == 2  # the least robust example keeps the largest weight


@pytest.mark.slow
@pytest.mark.parametrize("steps", [1, 10, 50])
def test_gairat_weights_over_the_whole_range_of_lambda(steps):
    generator = torch.Generator().manual_seed(steps)
    batches = [
        torch.arange(steps + 1),
        torch.randint(steps // 2, steps + 1, (32,), generator=generator),
    ]
    for lam in [x / 2 for x in range(-120, 121)] + [math.inf]:
        for kappa in batches:
            for form, scheme in (("tanh", "gairat"), ("sigmoid", "gairat-sigmoid")):
                got = ir.instance_weights(scheme, kappa=kappa, steps=steps, lam=lam)
                if math.isinf(lam):
                    assert torch.equal(got, torch.ones_like(got))
                    continue
                expected = normalised(gairat_omega(kappa.tolist(), steps, lam, form))
                assert_weights(got, expected, z_max=2 * (abs(lam) + 5))
                assert got[kappa.argmin()] == got.max()  # the least robust example weighs most


@pytest.mark.parametrize("bias", [-1.0, -0.5, 0.0, 0.5])
def test_mail_weights_over_the_whole_range_of_the_slope(bias):
    generator = torch.Generator().manual_seed(0)
    batches = [torch.linspace(-1, 1, 21), torch.rand(32, generator=generator) * 0.4 + 0.6]
    for slope in [0.0, 0.5, 1.0, 2.0, 10.0, 50.0, 100.0, 219.0, 500.0, 1000.0]:
        for pm in batches:
            got = ir.instance_weights("mail", margin=pm, slope=slope, bias=bias)
            expected = normalised(mail_omega(pm.tolist(), slope, bias))
            assert_weights(got, expected, z_max=slope * 2.0)
            assert got[pm.argmin()] == got.max()


def test_zero_or_infinite_sums_fall_back_to_uniform_weights():
    hinge = ir.InstanceWeighting("hinge", slope=2.0, bias=1.0)  # every ω = 0
    assert torch.equal(hinge(margin=torch.tensor([0.1, 0.5])), torch.ones(2))
    infinite = ir.InstanceWeighting(lambda s: torch.tensor([math.inf, 1.0]))
    assert torch.equal(infinite(margin=torch.tensor([0.1, 0.5])), torch.ones(2))
    assert ir.InstanceWeighting("mail")(margin=torch.zeros(0)).shape == (0,)


# --- The reduction -------------------------------------------------------------------------------------


def test_reduce_is_the_weighted_mean_and_the_plain_mean_while_inactive():
    kappa, losses = [0, 4, 10, 2], [0.3, 1.5, 2.0, 0.1]
    weighting = ir.InstanceWeighting("gairat", steps=10, lam=0.0)
    omega = gairat_omega(kappa, 10, 0.0)
    expected = float(
        sum(o * Decimal(v) for o, v in zip(omega, torch.tensor(losses).tolist())) / sum(omega)
    )
    got = weighting.reduce(torch.tensor(losses), kappa=torch.tensor(kappa))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    weighting.active = False
    assert weighting.reduce(
        torch.tensor(losses), kappa=torch.tensor(kappa)
    ).item() == pytest.approx(sum(losses) / 4, rel=1e-6)
    assert torch.equal(weighting.last_weights, torch.ones(4))
    assert torch.equal(weighting(kappa=torch.tensor(kappa)), torch.ones(4))


def test_reduce_gradient_is_w_over_n_in_float64():
    weighting = ir.InstanceWeighting("gairat", steps=10, lam=-1.0)
    kappa = torch.tensor([0, 5, 9])
    losses = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda ell: weighting.reduce(ell, kappa=kappa), (losses,))
    (grad,) = torch.autograd.grad(weighting.reduce(losses, kappa=kappa), losses)
    torch.testing.assert_close(grad, weighting.last_weights.double() / 3)


def test_empty_batch_reduces_to_zero():
    weighting = ir.InstanceWeighting("mail")
    assert weighting.reduce(torch.zeros(0), margin=torch.zeros(0)).item() == 0.0


# --- Parameters, repr, modules built on it ---------------------------------------------------------------


def test_scheme_parameters_are_attributes_checked_on_assignment():
    weighting = ir.InstanceWeighting("gairat", steps=10, lam=0.0)
    kappa = torch.tensor([0, 5, 10])
    weighting.lam = -2.0
    assert weighting.lam == -2.0 and weighting.scheme_params == {"steps": 10, "lam": -2.0}
    assert_weights(weighting(kappa=kappa), normalised(gairat_omega([0, 5, 10], 10, -2.0)), 20.0)
    with pytest.raises(TypeError, match="Expected `lam` to be a real number"):
        weighting.lam = "high"
    with pytest.raises(ValueError, match="Expected `lam` to be a number \\(finite or \\+inf\\)"):
        weighting.lam = math.nan
    with pytest.raises(
        AttributeError,
        match=r"among \(lam, steps\) or `active`, got 'lamda'\. 'lamda': did you mean 'lam'\?$",
    ):
        weighting.lamda = 1.0
    with pytest.raises(TypeError, match="Expected `active` to be True or False"):
        weighting.active = 1
    assert weighting.lam == -2.0  # a refused value changes nothing
    assert repr(weighting) == (
        "InstanceWeighting(scheme='gairat', normalize='batch', steps=10, lam=-2.0, active=True)"
    )


def test_loss_is_base_loss_then_reduce():
    ce = nn.CrossEntropyLoss(reduction="none")
    logits, y, kappa = (
        torch.randn(5, 3),
        torch.tensor([0, 1, 2, 0, 1]),
        torch.tensor([0, 2, 4, 6, 8]),
    )
    weighting = ir.InstanceWeighting("gairat", steps=8, lam=-1.0)
    criterion = ir.InstanceReweightedLoss(ce, weighting)
    from_string = ir.InstanceReweightedLoss(ce, "gairat", steps=8, lam=-1.0)
    assert criterion.weighting is weighting
    torch.testing.assert_close(
        criterion(logits, y, kappa=kappa), weighting.reduce(ce(logits, y), kappa=kappa)
    )
    torch.testing.assert_close(
        criterion(logits, y, kappa=kappa), from_string(logits, y, kappa=kappa)
    )
    criterion.active = False
    assert not weighting.active and criterion.scheme_params == {"steps": 8, "lam": -1.0}
    with pytest.raises(ValueError, match="set on it"):
        ir.InstanceReweightedLoss(ce, weighting, lam=0.0)


def test_burn_in_drives_a_weighting_or_a_loss_holding_one():
    weighting = ir.InstanceWeighting("gairat", steps=10)
    scheduler = ir.BurnInScheduler(weighting, burn_in_epochs=2, lam=lambda e: -float(e))
    assert not weighting.active
    scheduler.step(3)
    assert weighting.active and weighting.lam == -3.0
    criterion = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat")
    ir.BurnInScheduler(criterion, burn_in_epochs=0, lam=0.5)
    assert criterion.weighting.active and criterion.weighting.lam == 0.5


def test_uniform_scheme_checks_a_signal_and_weighs_every_example_one():
    uniform = ir.InstanceWeighting("uniform")
    assert torch.equal(uniform(kappa=torch.tensor([0, 3])), torch.ones(2))
    assert torch.equal(uniform(margin=torch.tensor([0.5, -0.2])), torch.ones(2))
    assert uniform.reduce(torch.tensor([1.0, 3.0])).item() == 2.0  # N from the losses
    with pytest.raises(ValueError, match="a call returns one weight per example"):
        uniform()  # no signal, no N
    with pytest.raises(ValueError, match="Expected `kappa` in \\[0, ∞\\)"):
        uniform(kappa=torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="Expected finite `margin`"):
        uniform(margin=torch.tensor([math.nan]))


def test_callable_scheme_weights_are_checked():
    ok = ir.InstanceWeighting(lambda pm: 1.0 - pm)
    assert_weights(
        ok(margin=torch.tensor([0.0, 0.5])), torch.tensor([4 / 3, 2 / 3], dtype=torch.float64), 1.0
    )
    with pytest.raises(ValueError, match="non-negative raw weights"):
        ir.InstanceWeighting(lambda pm: pm)(margin=torch.tensor([-0.5, 0.5]))
    with pytest.raises(ValueError, match="non-negative raw weights"):
        ir.InstanceWeighting(lambda pm: pm * math.nan)(margin=torch.tensor([0.5, 0.5]))
    with pytest.raises(TypeError, match="real tensor of shape \\(2,\\), got 'heavy'"):
        ir.InstanceWeighting(lambda pm: "heavy")(margin=torch.tensor([0.5, 0.5]))


# --- Host synchronisation -------------------------------------------------------------------------------


def test_one_host_synchronisation_per_call(count_syncs):
    weighting = ir.InstanceWeighting("gairat", steps=10)
    kappa, losses = torch.tensor([0, 5, 10]), torch.rand(3)
    assert count_syncs(lambda: weighting(kappa=kappa)) == 1
    assert count_syncs(lambda: weighting.reduce(losses, kappa=kappa)) == 1
    callable_scheme = ir.InstanceWeighting(lambda pm: 1.0 - pm)  # margin and weights: one read
    assert count_syncs(lambda: callable_scheme.reduce(losses, margin=torch.rand(3))) == 1


# --- Margins in their space; a callable scheme's own precision --------------------------------------


@given(
    inside=st.lists(st.floats(min_value=-1, max_value=1), max_size=8),
    outside=st.floats(min_value=1, exclude_min=True, allow_infinity=False, width=32),
    sign=st.sampled_from([-1.0, 1.0]),
)
@pytest.mark.parametrize("scheme", ["mail", "hinge", "step", lambda pm: torch.ones_like(pm)])
def test_a_probabilistic_margin_outside_minus_one_one_is_refused(scheme, inside, outside, sign):
    margin = torch.tensor([*inside, sign * outside])
    with pytest.raises(ValueError, match=r"`margin` in \[-1, 1\].*space='logit'"):
        ir.InstanceWeighting(scheme)(margin=margin)
    assert ir.InstanceWeighting(scheme)(margin=margin.clamp(-1, 1)).shape == margin.shape


@given(margins=st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=16))
def test_a_logit_margin_is_weighted_as_given(margins):
    """MAIL Table 5's multi-class margin: any finite value, ω = sigmoid(−γ(m − β)) as for PM."""
    weighting = ir.InstanceWeighting("mail", space="logit", slope=0.5, bias=1.0, normalize="none")
    assert "space='logit'" in repr(weighting) and weighting.space == "logit"
    margin = torch.tensor(margins)
    got = weighting(margin=margin)
    for m, w in zip(margin.tolist(), got.tolist()):  # the float32 margins the weighting reads
        z = -Decimal(0.5) * (Decimal(m) - 1)
        # float32 sigmoid of z: a few roundings of z, each amplified by |z| through the exponential
        assert w == pytest.approx(
            float(_sigmoid(z)), rel=8 * EPS32 * (1 + abs(float(z))), abs=1e-37
        )


def test_space_is_checked_and_refused_for_kappa_schemes():
    with pytest.raises(ValueError, match="one of 'prob', 'logit'"):
        ir.InstanceWeighting("mail", space="probability")
    with pytest.raises(ValueError, match=r"space='prob' \(the default\) for scheme 'gairat'"):
        ir.InstanceWeighting("gairat", space="logit")
    with pytest.raises(ValueError, match="space='logit'"):
        ir.instance_reweighted_loss(torch.ones(2), "mail", margin=torch.tensor([0.0, 2.0]))
    assert ir.instance_reweighted_loss(
        torch.ones(2), "mail", margin=torch.tensor([0.0, 2.0]), space="logit"
    ) == pytest.approx(1.0)


@pytest.mark.parametrize("normalize", ["batch", "none"])
def test_a_float64_callable_scheme_is_normalised_in_float64(normalize):
    """Raw weights 1e-300, 1e-305, 1e-310 are all 0 in float32: a cast would give uniform weights."""
    raw = [1e-300, 1e-305, 1e-310, 1e-300]

    def tiny(signal):
        return torch.tensor(raw, dtype=torch.float64)

    weights = ir.InstanceWeighting(tiny, normalize=normalize, scale=1e300)(
        margin=torch.zeros(len(raw))
    )
    total = sum(raw)
    expected = [len(raw) * r / total * 1e300 if normalize == "batch" else r * 1e300 for r in raw]
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, torch.tensor(expected), rtol=4 * EPS32, atol=0.0)
