"""The ℓ2 threat model: GeometryAwareAttack(norm="l2") against closed forms on a linear model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import instance_reweight as ir


def _linear(seed: int = 0, dim: int = 5) -> nn.Linear:
    """Two classes: ∇ₓ CE points along ±(a₁ − a₀) for every x, so ℓ2 PGD walks a straight line."""
    torch.manual_seed(seed)
    return nn.Linear(dim, 2).double()


def _direction(model: nn.Linear) -> torch.Tensor:
    a = model.weight.detach()
    return (a[1] - a[0]) / (a[1] - a[0]).norm()


def test_l2_pgd_on_a_linear_model_walks_straight_to_the_sphere_and_counts_kappa():
    model = _linear()
    x = torch.randn(64, 5, dtype=torch.float64)
    y = torch.randint(0, 2, (64,))
    eps, alpha, steps = 1.5, 0.4, 7  # 4 steps to reach ε, 3 more pushing against it
    x_adv, kappa = ir.GeometryAwareAttack(
        model, eps=eps, step_size=alpha, steps=steps, random_start=None, clip=None, norm="l2"
    )(x, y)
    # CE rises along +u for y = 0 and along −u for y = 1 (u the unit normal of the boundary).
    sign = (1 - 2 * y).double().unsqueeze(1)
    u = _direction(model)
    torch.testing.assert_close(x_adv, x + eps * sign * u, rtol=0.0, atol=1e-12)
    expected = torch.zeros(64, dtype=torch.long)
    for t in range(steps):  # iterate t is x ± min(tα, ε)·u; the final iterate is never checked
        x_t = x + min(t * alpha, eps) * sign * u
        with torch.no_grad():
            expected += model(x_t).argmax(1) == y
    assert torch.equal(kappa, expected)
    assert {0, steps} < set(kappa.tolist())  # some cross the boundary on the way, some never do


def test_l2_step_is_the_normalised_gradient_per_example():
    """One step from x: x + α·g/‖g‖₂ example by example (inside the ball), with g from autograd."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.rand(6, 3, 2, 2, dtype=torch.float64) * 0.5 + 0.25
    y = torch.randint(0, 3, (6,))
    alpha = 0.01
    x_adv, _ = ir.GeometryAwareAttack(
        model, eps=1.0, step_size=alpha, steps=1, random_start=None, norm="l2"
    )(x, y)
    for i in range(6):
        xi = x[i : i + 1].clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xi), y[i : i + 1])
        (g,) = torch.autograd.grad(loss, xi)
        torch.testing.assert_close(x_adv[i : i + 1], xi.detach() + alpha * g / g.norm())


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    eps=st.floats(0.01, 3.0),
    alpha_ratio=st.floats(0.05, 2.0),
    steps=st.integers(1, 6),
    start=st.sampled_from(["uniform", "normal", None]),
)
def test_l2_iterates_stay_in_the_ball_and_the_box(seed, eps, alpha_ratio, steps, start):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 4))
    x, y = torch.rand(9, 3, 2, 2), torch.randint(0, 4, (9,))
    x_adv, kappa = ir.GeometryAwareAttack(
        model, eps=eps, step_size=alpha_ratio * eps, steps=steps, random_start=start, norm="l2"
    )(x, y)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert float(norms.max()) <= eps * (1 + 1e-5)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert bool(((kappa >= 0) & (kappa <= steps)).all())


def test_uniform_l2_start_is_uniform_in_the_ball():
    """In d = 2 the radius of a uniform point of the disc has mean 2ε/3 and the angle is uniform."""
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    n, eps = 20000, 0.5
    x = torch.zeros(n, 2)
    start, _ = ir.GeometryAwareAttack(model, eps=eps, step_size=0.1, steps=0, clip=None, norm="l2")(
        x, torch.zeros(n, dtype=torch.long)
    )
    radius = start.norm(dim=1) / eps
    assert float(radius.max()) <= 1.0
    assert abs(float(radius.mean()) - 2 / 3) < 0.01  # standard error 0.0017
    assert float(start.mean(0).abs().max()) < 0.01
    assert abs(float((radius < math.sqrt(0.5)).double().mean()) - 0.5) < 0.02  # half the area


def test_a_zero_gradient_leaves_the_example_where_it_is():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every ReLU off: the gradient is exactly zero
    x = torch.rand(5, 4)
    x_adv, _ = ir.GeometryAwareAttack(
        model, eps=0.5, step_size=0.1, steps=3, random_start=None, norm="l2"
    )(x, torch.zeros(5, dtype=torch.long))
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("start", ["uniform", "normal", None])
def test_l2_with_eps_zero_returns_x_exactly(start):
    torch.manual_seed(0)
    x = torch.rand(5, 4)
    x_adv, _ = ir.GeometryAwareAttack(
        nn.Linear(4, 3), eps=0.0, step_size=0.1, steps=3, random_start=start, norm="l2"
    )(x, torch.zeros(5, dtype=torch.long))
    assert not bool(torch.isnan(x_adv).any())
    assert torch.equal(x_adv, x)  # the projection scales every step to length 0 (no 0/0)


def test_uniform_l2_start_on_an_empty_batch():
    attack = ir.GeometryAwareAttack(
        nn.Sequential(nn.Flatten(), nn.Linear(12, 3)),
        eps=0.5,
        step_size=0.1,
        steps=2,
        random_start="uniform",
        norm="l2",
    )
    x_adv, kappa = attack(torch.rand(0, 3, 2, 2), torch.zeros(0, dtype=torch.long))
    assert x_adv.shape == (0, 3, 2, 2) and kappa.shape == (0,)


@pytest.mark.parametrize(
    "norm, error", [("L2", ValueError), ("l1", ValueError), (2, TypeError), (None, TypeError)]
)
def test_an_unknown_norm_is_refused(norm, error):
    with pytest.raises(error, match="Expected `norm` to be one of 'linf', 'l2'"):
        ir.GeometryAwareAttack(nn.Linear(2, 2), eps=0.5, step_size=0.1, steps=1, norm=norm)


def _boundary_distance(model: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ℓ2 distance from x to the nearest point classified as another class: for a linear model
    min_{j≠y} (f_y − f_j)/‖a_y − a_j‖ (negative when x is already misclassified)."""
    with torch.no_grad():
        logits = model(x.flatten(1))
        a = model.weight
        distances = []
        for i in range(len(y)):
            yi = int(y[i])
            distances.append(
                min(
                    float((logits[i, yi] - logits[i, j]) / (a[yi] - a[j]).norm())
                    for j in range(a.shape[0])
                    if j != yi
                )
            )
    return torch.tensor(distances)


def _images_model(classes: int, seed: int = 0):
    """A linear classifier of 1×2×2 images in the middle of the box (no clip binds at ε = 0.1),
    every boundary through the centre so that the distances to them spread around ε."""
    torch.manual_seed(seed)
    linear = nn.Linear(4, classes)
    with torch.no_grad():
        linear.bias.copy_(-0.5 * linear.weight.sum(1))
    x = 0.3 + 0.4 * torch.rand(64, 1, 2, 2)
    y = torch.randint(0, classes, (64,))
    return linear, nn.Sequential(nn.Flatten(), linear).eval(), x, y


@pytest.mark.parametrize("attack", ["pgd20", "pgd+", "cw", "pgd20-ls"])
def test_l2_evaluation_matches_the_closed_form_on_a_linear_model(attack):
    linear, model, x, y = _images_model(2)
    eps = 0.1
    expected = _boundary_distance(linear, x, y) > eps
    masks = ir.evaluation.robust_masks(model, (x, y), attacks=[attack], eps=eps, norm="l2")
    assert torch.equal(masks[attack], expected)
    assert 0 < int(expected.sum()) < 64
    # The ℓ∞ ball of the same radius reaches the boundary from ℓ1-distance ε·‖a₁ − a₀‖₁ instead.
    with torch.no_grad():
        margin = (linear(x.flatten(1)) * torch.tensor([-1.0, 1.0])).sum(1) * (2 * y - 1)
        linf_expected = margin / (linear.weight[1] - linear.weight[0]).abs().sum() > eps
    linf = ir.evaluation.robust_masks(model, (x, y), attacks=[attack], eps=eps)[attack]
    assert torch.equal(linf, linf_expected) and not torch.equal(linf, expected)


@pytest.mark.slow
def test_l2_autoattack_matches_the_closed_form_on_a_linear_model():
    pytest.importorskip("pyautoattack")
    linear, model, x, y = _images_model(4)
    eps = 0.1
    expected = _boundary_distance(linear, x, y) > eps
    masks = ir.evaluation.robust_masks(
        model,
        (x, y),
        attacks=["apgd-ce", "aa"],
        eps=eps,
        norm="l2",
        options={"aa": {"version": "custom", "attacks": ["apgd-ce", "apgd-t"]}},
    )
    assert torch.equal(masks["aa"], expected)
    assert bool((masks["apgd-ce"] >= masks["aa"]).all())
    assert 0 < int(expected.sum()) < 64


def test_robustbench_l2_protocol_and_the_norm_in_the_settings():
    config = ir.evaluation.settings(protocol="robustbench-l2")
    assert config["eps"] == 0.5 and config["norm"] == "l2"
    assert list(config["attacks"]) == ["natural", "pgd20", "pgd20-ls", "aa"]
    assert config["attacks"]["pgd20"]["step_size"] == 0.125
    assert ir.evaluation.settings(attacks=["pgd+"], eps=0.5, norm="l2")["attacks"]["pgd+"][
        "step_size"
    ] == pytest.approx(0.125)
    assert (
        ir.evaluation.settings(attacks=["pgd+"], eps=0.031)["attacks"]["pgd+"]["step_size"] == 0.01
    )
    assert ir.evaluation.settings(eps=2.0, norm="l2", attacks=["pgd20"])["eps"] == 2.0  # > the box


def test_l2_evaluation_refuses_lm_pgd_and_unknown_norms():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x, y = torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="Expected norm='linf' for 'lm-pgd'"):
        ir.evaluation.evaluate(
            model, (x, y), attacks=["lm-pgd"], eps=0.5, norm="l2", progress=False
        )
    with pytest.raises(ValueError, match="Expected `norm` to be one of 'linf', 'l2'"):
        ir.evaluation.evaluate(model, (x, y), attacks=["pgd20"], norm="l1", progress=False)


def test_methods_train_against_the_l2_ball():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    method = ir.methods.get("mail-at", model, norm="l2", eps=0.5, step_size=0.125, burn_in_epochs=0)
    assert method.attack.norm == "l2" and method.attack.eps == 0.5
    x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
    loss = method.step(x, y, torch.optim.SGD(model.parameters(), lr=0.1))
    assert bool(torch.isfinite(loss))
