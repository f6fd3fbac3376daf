"""Weight assignment functions against the papers' formulas (GAIRAT Eq. 6, 7, App. C.3; MAIL Eq. 8, Table 6)."""

from __future__ import annotations

import math

import pytest
import torch

from instance_reweight import schemes


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


@pytest.mark.parametrize("steps", [1, 5, 10, 20])
@pytest.mark.parametrize("lam", [-3.0, -1.0, 0.0, 2.0, math.inf])
def test_gairat_tanh_is_eq_6_at_every_kappa(steps, lam):
    kappa = torch.arange(steps + 1)
    got = schemes.gairat_tanh(kappa, steps=steps, lam=lam)
    expected = [(1 + math.tanh(lam + 5 * (1 - 2 * k / steps))) / 2 for k in range(steps + 1)]
    assert got.dtype == torch.float32
    torch.testing.assert_close(
        got.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("steps", [1, 10])
@pytest.mark.parametrize("lam", [-2.0, 0.0, 1.5])
def test_gairat_sigmoid_and_linear(steps, lam):
    kappa = torch.arange(steps + 1)
    sig = [_sigmoid(lam + 5 * (1 - 2 * k / steps)) for k in range(steps + 1)]
    torch.testing.assert_close(
        schemes.gairat_sigmoid(kappa, steps=steps, lam=lam).double(),
        torch.tensor(sig, dtype=torch.float64),
    )
    linear = [1 - k / (steps + 1) for k in range(steps + 1)]
    torch.testing.assert_close(
        schemes.gairat_linear(kappa, steps=steps).double(),
        torch.tensor(linear, dtype=torch.float64),
    )


def test_tanh_form_does_not_underflow():
    # (1 + tanh(−70))/2 is exactly 0 in float32; sigmoid(−140) is not, so a batch of equally robust
    # examples keeps its relative weights instead of collapsing to an all-zero sum.
    w = schemes.gairat_tanh(torch.tensor([10, 10]), steps=10, lam=-30.0)
    assert (w > 0).all()
    assert float((1 + torch.tanh(torch.tensor(-70.0))) / 2) == 0.0


@pytest.mark.parametrize("slope, bias", [(10.0, -0.5), (2.0, 0.0), (0.0, 0.3)])
def test_mail_sigmoid_is_eq_8(slope, bias):
    pm = torch.linspace(-1, 1, 41)
    expected = [_sigmoid(-slope * (p - bias)) for p in pm.tolist()]
    torch.testing.assert_close(
        schemes.mail_sigmoid(pm, slope=slope, bias=bias).double(),
        torch.tensor(expected, dtype=torch.float64),
    )


def test_hinge_and_step_as_printed_in_table_6():
    pm = torch.linspace(-1, 1, 21)
    hinge = [max(0.0, 2.0 * (p - 0.1)) for p in pm.tolist()]
    torch.testing.assert_close(
        schemes.hinge(pm, slope=2.0, bias=0.1).double(), torch.tensor(hinge, dtype=torch.float64)
    )
    step = [0.2 if p > 0.1 else 0.8 for p in pm.tolist()]
    torch.testing.assert_close(
        schemes.step(pm, alpha=0.2, bias=0.1).double(), torch.tensor(step, dtype=torch.float64)
    )


def test_monotone_in_the_right_direction():
    kappa = torch.arange(11)
    for name in ("gairat", "gairat-sigmoid", "gairat-linear"):
        scheme = schemes.resolve_scheme(name)
        w = scheme(kappa, scheme.params({}))
        assert (w[1:] <= w[:-1]).all(), name  # non-increasing in κ: robust points weigh less
    pm = torch.linspace(-1, 1, 50)
    w = schemes.mail_sigmoid(pm, slope=10.0, bias=-0.5)
    assert (w[1:] <= w[:-1]).all()  # larger margin = safer = smaller weight


def test_signals_are_detached():
    pm = torch.zeros(3, requires_grad=True)
    assert not schemes.mail_sigmoid(pm, slope=1.0, bias=0.0).requires_grad


def test_registry_aliases_and_signals():
    assert schemes.SCHEMES["gairat"] is schemes.SCHEMES["gairat-tanh"]
    assert schemes.SCHEMES["mail"] is schemes.SCHEMES["mail-sigmoid"]
    assert {n for n, s in schemes.SCHEMES.items() if s.signal == "kappa"} == {
        "gairat",
        "gairat-tanh",
        "gairat-sigmoid",
        "gairat-linear",
    }
    assert {n for n, s in schemes.SCHEMES.items() if s.signal == "margin"} == {
        "mail",
        "mail-sigmoid",
        "hinge",
        "step",
    }
    assert schemes.SCHEMES["uniform"].signal is None


def test_resolve_scheme_errors_list_the_options():
    with pytest.raises(ValueError, match="'gairat'.*'mail'.*or a callable"):
        schemes.resolve_scheme("gair")
    with pytest.raises(TypeError, match="name or a callable"):
        schemes.resolve_scheme(3)
    custom = schemes.resolve_scheme(lambda s: 1.0 / (1.0 + s.float()))
    assert custom.signal == "any" and torch.equal(
        custom(torch.tensor([0, 1]), {}), torch.tensor([1.0, 0.5])
    )


@pytest.mark.parametrize(
    "name, params, error, match",
    [
        ("gairat", {"gamma": 1.0}, ValueError, r"among \(lam, steps\), got gamma\.$"),
        ("mail", {"slop": 1.0}, ValueError, r"got slop\. 'slop': did you mean 'slope'\?$"),
        ("gairat", {"steps": 0}, ValueError, "steps"),
        (
            "gairat",
            {"steps": 10.0},
            TypeError,
            r"`steps` to be an int.*got float 10\.0; pass `int\(steps\)`",
        ),
        ("gairat", {"lam": math.nan}, ValueError, "lam"),
        ("gairat", {"lam": -math.inf}, ValueError, "lam"),
        ("gairat", {"lam": "0"}, TypeError, "lam"),
        ("mail", {"slope": -1.0}, ValueError, "slope"),
        ("mail", {"bias": math.inf}, ValueError, "bias"),
        ("step", {"alpha": 1.5}, ValueError, r"alpha.*\[0, 1\]"),
        ("uniform", {"lam": 0.0}, ValueError, "none"),
    ],
)
def test_bad_scheme_parameters(name, params, error, match):
    with pytest.raises(error, match=match):
        schemes.resolve_scheme(name).params(params)


def test_lam_inf_is_standard_at():
    scheme = schemes.resolve_scheme("gairat")
    w = scheme(torch.arange(11), scheme.params({"lam": math.inf}))
    assert torch.equal(w, torch.ones(11))
