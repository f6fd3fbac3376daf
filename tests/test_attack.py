"""GeometryAwareAttack: κ exactly as GAIRAT Algorithms 1 and 3 define it, and the model left untouched."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import instance_reweight as ir


def _mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A small classifier with BatchNorm whose running statistics differ from batch statistics."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).to(
        dtype
    )
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return model


def _ga_pgd_oracle(model, x, y, *, eps, alpha, steps, tau=None):
    """GAIRAT Algorithm 1 (tau=None) or 3 (early-stopped PGD-K-τ), one example at a time, from x.

    Written from the paper's pseudo-code: check the current iterate, then step; the loop runs K
    times, so the final iterate is never checked; with τ a misclassified example with τ = 0 breaks.
    """
    model.eval()
    advs, kappas = [], []
    for i in range(x.shape[0]):
        x0, yi = x[i : i + 1], y[i : i + 1]
        x_adv, kappa = x0.clone(), 0
        budget = None if tau is None else int(tau[i])
        for _ in range(steps):
            with torch.no_grad():
                correct = int(model(x_adv).argmax(1)) == int(yi)
            if correct:
                kappa += 1
            elif budget is not None and budget == 0:
                break
            elif budget is not None:
                budget -= 1
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), yi)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x0 - eps), x0 + eps).clamp(0.0, 1.0)
        advs.append(x_adv)
        kappas.append(kappa)
    return torch.cat(advs), torch.tensor(kappas)


@pytest.fixture
def batch():
    torch.manual_seed(1)
    x = torch.rand(64, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (64,))
    return x, y


@pytest.mark.parametrize("steps", [1, 5, 10])
def test_kappa_and_adv_match_algorithm_1(batch, steps):
    model = _mlp()
    x, y = batch
    attack = ir.GeometryAwareAttack(model, eps=0.3, step_size=0.07, steps=steps, random_start=None)
    x_adv, kappa = attack(x, y)
    x_ref, kappa_ref = _ga_pgd_oracle(model, x, y, eps=0.3, alpha=0.07, steps=steps)
    assert torch.equal(kappa, kappa_ref)
    torch.testing.assert_close(x_adv, x_ref, rtol=0, atol=1e-12)
    if steps == 10:  # the batch exercises misclassified, partly robust and fully robust points
        assert {0, 10} <= set(kappa.tolist()) and len(set(kappa.tolist())) >= 4


@pytest.mark.parametrize("tau", [0, 1, 3, "per-example"])
def test_kappa_and_adv_match_algorithm_3(batch, tau):
    model = _mlp()
    x, y = batch
    taus = (
        torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(2))
        if tau == "per-example"
        else None
    )
    tau_arg = taus if taus is not None else tau
    attack = ir.GeometryAwareAttack(
        model, eps=0.3, step_size=0.07, steps=10, random_start=None, tau=tau_arg
    )
    x_adv, kappa = attack(x, y)
    x_ref, kappa_ref = _ga_pgd_oracle(
        model,
        x,
        y,
        eps=0.3,
        alpha=0.07,
        steps=10,
        tau=taus if taus is not None else torch.full((64,), tau),
    )
    assert torch.equal(kappa, kappa_ref)
    torch.testing.assert_close(x_adv, x_ref, rtol=0, atol=1e-12)


def _oscillating():
    """1-D model: class 0 iff x > 0. Maximising −x² steps x toward 0 by ±α: it oscillates around 0."""
    model = nn.Linear(1, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [-1.0]]))

    def toward_zero(logits, y):
        return -(logits[:, 0] ** 2)

    x = torch.tensor([[0.25]], dtype=torch.float64)
    return model, toward_zero, x, torch.tensor([0])


def test_kappa_counts_every_correct_check_not_first_hitting_time():
    model, loss, x, y = _oscillating()
    # Iterates 0.25, 0.15, 0.05, -0.05, 0.05, -0.05 | 0.05: checks ✓✓✓✗✓✗, the final one unchecked.
    attack = ir.GeometryAwareAttack(
        model, eps=1.0, step_size=0.1, steps=6, loss=loss, random_start=None, clip=None
    )
    x_adv, kappa = attack(x, y)
    assert kappa.tolist() == [4]  # first-hitting time would be 3; checking x^(6) would give 5
    assert x_adv.item() == pytest.approx(0.05)


@pytest.mark.parametrize(
    "tau, kappa_expected, x_expected", [(0, 3, -0.05), (1, 4, -0.05), (2, 4, 0.05)]
)
def test_early_stop_keeps_the_iterate_where_the_budget_ran_out(tau, kappa_expected, x_expected):
    model, loss, x, y = _oscillating()
    attack = ir.GeometryAwareAttack(
        model, eps=1.0, step_size=0.1, steps=6, loss=loss, random_start=None, clip=None, tau=tau
    )
    x_adv, kappa = attack(x, y)
    assert kappa.tolist() == [kappa_expected]
    assert x_adv.item() == pytest.approx(x_expected)


def test_linear_model_kappa_closed_form():
    # Two classes, linear logits: each CE step lowers the margin by exactly c = α·‖w_0 − w_1‖₁, so a
    # margin of (k + ½)·c is positive at the checks t = 0..k: κ = min(k + 1, K).
    model = nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0, 2.0], [-0.5, 1.0, 0.0]]))
        model.bias.zero_()
    alpha, steps = 0.01, 8
    w = model.weight[0] - model.weight[1]
    c = alpha * w.abs().sum().item()
    ks = torch.arange(-2, 12)
    margins = (ks.double() + 0.5) * c
    x = margins[:, None] * w / (w @ w)  # margin(x) = w·x
    y = torch.zeros(len(ks), dtype=torch.long)
    attack = ir.GeometryAwareAttack(
        model, eps=1.0, step_size=alpha, steps=steps, random_start=None, clip=None
    )
    _, kappa = attack(x, y)
    assert kappa.tolist() == [min(max(k + 1, 0), steps) for k in ks.tolist()]


def test_output_types_shapes_and_detached(batch):
    model = _mlp()
    x, y = batch
    x.requires_grad_(True)
    out = ir.GeometryAwareAttack(model, eps=0.1, step_size=0.02, steps=3)(x, y)
    assert isinstance(out, ir.AttackOutput) and out.adv is out[0] and out.kappa is out[1]
    assert out.adv.shape == x.shape and out.adv.dtype == x.dtype and not out.adv.requires_grad
    assert out.kappa.dtype == torch.int64 and out.kappa.shape == (64,)
    assert ((out.kappa >= 0) & (out.kappa <= 3)).all()


def test_adversarial_points_stay_in_the_ball_and_the_box(batch):
    model = _mlp()
    x, y = batch
    for start in ("uniform", "normal", None):
        x_adv, _ = ir.GeometryAwareAttack(
            model, eps=0.05, step_size=0.02, steps=4, random_start=start
        )(x, y)
        assert (x_adv - x).abs().max() <= 0.05 + 1e-12
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_random_starts():
    model = _mlp()
    torch.manual_seed(0)
    x = torch.ones(256, 6, dtype=torch.float64)
    y = torch.zeros(256, dtype=torch.long)
    uniform, _ = ir.GeometryAwareAttack(model, eps=0.1, step_size=0.01, steps=0)(x, y)
    assert uniform.max() <= 1.0 and uniform.min() >= 0.9 and (uniform < 1.0).float().mean() > 0.4
    normal, _ = ir.GeometryAwareAttack(
        model, eps=0.1, step_size=0.01, steps=0, random_start="normal"
    )(x, y)
    # x + 0.001·N(0, 1), not clipped before the first step.
    assert normal.max() > 1.0
    assert (normal - x).std().item() == pytest.approx(1e-3, rel=0.05)
    start, kappa = ir.GeometryAwareAttack(
        model, eps=0.1, step_size=0.01, steps=0, random_start=None
    )(x, y)
    assert (
        torch.equal(start, x)
        and start is not x
        and torch.equal(kappa, torch.zeros(256, dtype=torch.long))
    )


def test_eps_zero_checks_the_natural_point_every_step(batch):
    model = _mlp()
    x, y = batch
    x_adv, kappa = ir.GeometryAwareAttack(model, eps=0.0, step_size=0.1, steps=5)(x, y)
    assert torch.equal(x_adv, x)
    correct = model.eval()(x).argmax(1) == y
    assert torch.equal(kappa, 5 * correct.long())


def test_kl_loss_uses_natural_predictions_and_moves_away_from_them(batch):
    model = _mlp()
    x, y = batch
    x_adv, _ = ir.GeometryAwareAttack(
        model, eps=0.1, step_size=0.02, steps=5, loss="kl", random_start="normal"
    )(x, y)
    model.eval()
    with torch.no_grad():
        kl = ir.losses.trades_kl(model(x_adv), model(x))
    assert kl.mean() > 1e-4


def test_cw_loss_is_the_cw_margin(batch):
    model = _mlp()
    x, y = batch
    kwargs = dict(eps=0.2, step_size=0.05, steps=4, random_start=None)
    by_name = ir.GeometryAwareAttack(model, loss="cw", **kwargs)(x, y)
    by_callable = ir.GeometryAwareAttack(model, loss=ir.losses.cw_margin, **kwargs)(x, y)
    assert torch.equal(by_name.adv, by_callable.adv) and torch.equal(
        by_name.kappa, by_callable.kappa
    )


def _mixed_state_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )
    model.train()
    model[3].eval()  # a submodule with its own flag, which a blanket model.train() would overwrite
    model[0].bias.requires_grad_(False)
    model[5].weight.grad = torch.full_like(model[5].weight, 7.0)
    return model


def _snapshot(model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def _assert_same(before, after):
    assert before[0] == after[0]
    assert before[1] == after[1]
    for g0, g1 in zip(before[2], after[2]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    for k in before[3]:
        assert torch.equal(before[3][k], after[3][k]), k


def test_attack_leaves_the_model_as_it_found_it():
    model = _mixed_state_model()
    before = _snapshot(model)
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 3, (8,))
    ir.GeometryAwareAttack(model, eps=0.1, step_size=0.03, steps=3)(x, y)
    _assert_same(before, _snapshot(model))


def test_attack_runs_the_model_in_eval_mode():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return x

    model = nn.Sequential(nn.Linear(2, 2), Probe()).train()
    ir.GeometryAwareAttack(model, eps=0.1, step_size=0.05, steps=3, clip=None)(
        torch.rand(4, 2), torch.zeros(4).long()
    )
    assert seen == [False, False, False] and model.training and model[1].training


def test_model_state_restored_when_the_model_raises():
    model = _mixed_state_model()
    before = _snapshot(model)
    calls = {"n": 0}

    def fail_on_third_call(module, inputs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")

    handle = model[2].register_forward_pre_hook(fail_on_third_call)
    with pytest.raises(RuntimeError, match="boom"):
        ir.GeometryAwareAttack(model, eps=0.1, step_size=0.03, steps=5)(
            torch.rand(4, 3, 8, 8), torch.zeros(4).long()
        )
    handle.remove()
    _assert_same(before, _snapshot(model))


def test_attack_inside_no_grad_still_climbs(batch):
    model = _mlp()
    x, y = batch
    attack = ir.GeometryAwareAttack(model, eps=0.3, step_size=0.07, steps=5, random_start=None)
    with torch.no_grad():
        x_adv, kappa = attack(x, y)
    x_ref, kappa_ref = _ga_pgd_oracle(model, x, y, eps=0.3, alpha=0.07, steps=5)
    assert torch.equal(kappa, kappa_ref) and torch.allclose(x_adv, x_ref)


def test_attack_under_inference_mode_still_climbs(batch):
    model = _mlp()
    x, y = batch
    attack = ir.GeometryAwareAttack(model, eps=0.3, step_size=0.07, steps=5, random_start=None)
    with torch.inference_mode():
        x_inf, y_inf = (
            x.clone(),
            y.clone(),
        )  # inference tensors, as a data pipeline there makes them
        x_adv, kappa = attack(x_inf, y_inf)
    x_ref, kappa_ref = _ga_pgd_oracle(model, x, y, eps=0.3, alpha=0.07, steps=5)
    assert torch.equal(kappa, kappa_ref) and torch.allclose(x_adv, x_ref)
    assert not x_adv.is_inference() and not torch.equal(x_adv, x)


def test_no_host_synchronisation_in_the_step_loop(count_syncs, batch):
    """One tensor → Python conversion per call (the deferred input check), whatever K."""
    model = _mlp()
    x, y = batch
    counts = [
        count_syncs(
            lambda steps=steps: ir.GeometryAwareAttack(
                model, eps=0.1, step_size=0.02, steps=steps, tau=1
            )(x, y)
        )
        for steps in (0, 1, 12)
    ]
    assert counts == [1, 1, 1]  # one synchronisation per call, after the loop


def test_float64_and_bfloat16_models():
    for dtype in (torch.float64, torch.bfloat16):
        model = _mlp(dtype=dtype)
        x, y = torch.rand(16, 6, dtype=dtype), torch.randint(0, 4, (16,))
        x_adv, kappa = ir.GeometryAwareAttack(model, eps=0.1, step_size=0.02, steps=3)(x, y)
        assert x_adv.dtype == dtype and kappa.dtype == torch.int64


def test_autocast_kappa_equals_float32_on_clear_margins():
    # Same construction as the closed-form test, in float32 under bfloat16 autocast: every iterate's
    # margin is at least c/2 away from 0, so bfloat16 rounding cannot flip a prediction.
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0, 2.0, 1.0], [-0.5, 1.0, 0.0, -1.0]]))
        model.bias.copy_(torch.tensor([-1.5, 0.0]))  # margin 0 at x = 0.5
    alpha, steps = 0.05, 6
    w = model.weight[0] - model.weight[1]
    ks = torch.arange(-2, 9).float()
    x = 0.5 + ((ks + 0.5) * alpha * w.abs().sum())[:, None] * w / (w @ w)
    y = torch.zeros(len(ks), dtype=torch.long)
    attack = ir.GeometryAwareAttack(model, eps=0.4, step_size=alpha, steps=steps, random_start=None)
    reference = attack(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv, kappa = attack(x, y)
    assert torch.equal(kappa, reference.kappa) and x_adv.dtype == torch.float32
    assert kappa.tolist() == [min(max(int(k) + 1, 0), steps) for k in ks]


def test_gradients_wrt_parameters_untouched_and_input_only(batch):
    model = _mlp()
    x, y = batch
    ir.GeometryAwareAttack(model, eps=0.1, step_size=0.02, steps=3)(x, y)
    assert all(p.grad is None for p in model.parameters())


def test_empty_batch():
    model = _mlp()
    x_adv, kappa = ir.GeometryAwareAttack(model, eps=0.1, step_size=0.02, steps=3)(
        torch.rand(0, 6, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    )
    assert x_adv.shape == (0, 6) and kappa.shape == (0,)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(eps=-0.1), ValueError, "eps"),
        (dict(eps=math.nan), ValueError, "eps"),
        (dict(step_size=0.0), ValueError, "step_size"),
        (dict(steps=-1), ValueError, "steps"),
        (dict(steps=2.5), TypeError, "steps"),
        (dict(tau=-1), ValueError, "tau"),
        (dict(tau=torch.tensor([0.5])), TypeError, "tau"),
        (dict(loss="mse"), ValueError, "'ce', 'kl', 'cw'"),
        (dict(random_start="gaussian"), ValueError, "'uniform', 'normal'"),
        (dict(clip=(1.0, 0.0)), ValueError, "clip"),
        (dict(eps="8/255"), TypeError, "eps"),
        (dict(eps=math.inf), ValueError, "`eps` to be a finite number >= 0"),
        (dict(step_size=math.inf), ValueError, "`step_size` to be a finite number > 0"),
        (dict(tau=1.5), TypeError, "`tau` to be an int"),
        (dict(tau=torch.tensor([[1]])), ValueError, r"shape \(N,\)"),
        (dict(loss=3), TypeError, "`loss` to be one of"),
        (dict(clip="0-1"), TypeError, "clip"),
        (dict(clip=(0.0, math.inf)), ValueError, "finite low < high"),
    ],
)
def test_bad_hyper_parameters(kwargs, error, match):
    base = dict(eps=0.1, step_size=0.02, steps=3)
    with pytest.raises(error, match=match):
        ir.GeometryAwareAttack(nn.Linear(2, 2), **{**base, **kwargs})


def test_bad_model():
    with pytest.raises(TypeError, match="nn.Module"):
        ir.GeometryAwareAttack(lambda x: x, eps=0.1, step_size=0.02, steps=3)


def _bad_call(model, x, y, **kwargs):
    return ir.GeometryAwareAttack(model, eps=0.1, step_size=0.02, steps=2, **kwargs)(x, y)


def test_bad_inputs_say_what_to_do():
    model = nn.Linear(3, 4)
    x, y = torch.rand(5, 3), torch.randint(0, 4, (5,))
    with pytest.raises(TypeError, match="torch.Tensor"):
        _bad_call(model, x.numpy(), y)
    with pytest.raises(TypeError, match="floating-point"):
        _bad_call(model, (x * 255).long(), y)
    with pytest.raises(ValueError, match=r"inside clip=\(0, 1\).*clip=None"):
        _bad_call(model, x * 255, y)
    with pytest.raises(ValueError, match="finite"):
        _bad_call(model, torch.where(x > 0.5, torch.nan, x), y)
    with pytest.raises(TypeError, match=r"y.long\(\)"):
        _bad_call(model, x, y.float())
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        _bad_call(model, x, y[:, None])
    with pytest.raises(ValueError, match=r"\[0, 3\].*got values in \[0, 9\]"):
        _bad_call(model, x, torch.tensor([0, 1, 2, 3, 9]))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        _bad_call(model, x, torch.tensor([0, -1, 2, 3, 1]))
    with pytest.raises(ValueError, match="tau.*shape \\(5,\\)"):
        _bad_call(model, x, y, tau=torch.zeros(4, dtype=torch.long))


def test_bad_model_outputs():
    x, y = torch.rand(5, 3), torch.randint(0, 2, (5,))

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(TypeError, match="logits tensor"):
        _bad_call(Pair(), x, y)
    with pytest.raises(ValueError, match=r"\(5, C\)"):
        _bad_call(nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)), x, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        _bad_call(nn.Linear(3, 1), x, torch.zeros(5).long())

    class Diverged(nn.Linear):
        def forward(self, x):
            return super().forward(x) * torch.inf

    with pytest.raises(ValueError, match="finite logits"):
        _bad_call(Diverged(3, 2), x, y)


def test_model_and_data_on_different_devices():
    model = nn.Linear(3, 2)
    attack = ir.GeometryAwareAttack(model, eps=0.1, step_size=0.02, steps=2)
    model.to("meta")  # moved after the attack was built: the one other device a CPU machine has
    with pytest.raises(ValueError, match="same device"):
        attack(torch.rand(4, 3), torch.zeros(4).long())
    with pytest.raises(ValueError, match=r"\.to\(x.device\)"):
        _bad_call(
            nn.Linear(3, 2), torch.rand(4, 3), torch.zeros(4, dtype=torch.long, device="meta")
        )


def test_repr():
    text = repr(ir.GeometryAwareAttack(nn.Linear(2, 2), eps=8 / 255, step_size=2 / 255, steps=10))
    assert "eps=0.0313725" in text and "steps=10" in text and "random_start='uniform'" in text


# --- One ε check everywhere; the ε-ball under half precision; per-example attack losses ----------------


@given(eps=st.floats(min_value=1.0, max_value=1e6, exclude_min=True))
def test_a_pixel_scale_eps_is_refused_alike_by_the_attack_the_methods_and_evaluation(eps):
    """ε beyond the width of clip=(0, 1) (ℓ∞) allows every image: the one check refuses it everywhere."""
    model = nn.Linear(4, 3)
    fix = f"did you mean {eps:g}/255" if eps <= 255 else "on the scale of the inputs (8/255"
    match = r"at most 1 \(the width of clip=\(0, 1\)\).*" + re.escape(fix)
    for build in (
        lambda: ir.GeometryAwareAttack(model, eps=eps, step_size=0.01, steps=1),
        lambda: ir.methods.get("gairat", model, eps=eps),
        lambda: ir.evaluation.settings(eps=eps),
    ):
        with pytest.raises(ValueError, match=match):
            build()


@given(eps=st.floats(min_value=0.0, max_value=1.0))
def test_an_eps_within_the_clip_box_is_accepted_alike(eps):
    model = nn.Linear(4, 3)
    assert ir.GeometryAwareAttack(model, eps=eps, step_size=0.01, steps=1).eps == eps
    assert ir.methods.get("gairat", model, eps=eps).attack.eps == eps
    if eps > 0:  # an evaluation at ε = 0 is the natural accuracy: asked for by name
        assert ir.evaluation.settings(eps=eps)["eps"] == eps


def test_the_eps_bound_follows_the_clip_box_and_not_the_l2_ball():
    model = nn.Linear(4, 3)
    assert ir.GeometryAwareAttack(model, eps=8.0, step_size=2.0, steps=1, clip=(0, 255)).eps == 8.0
    assert ir.GeometryAwareAttack(model, eps=8.0, step_size=2.0, steps=1, clip=None).eps == 8.0
    assert ir.GeometryAwareAttack(model, eps=1.5, step_size=0.1, steps=1, norm="l2").eps == 1.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm, eps, start", [("linf", 8 / 255, "uniform"), ("l2", 0.5, "uniform")])
def test_half_precision_iterates_stay_inside_the_ball_measured_in_float32(dtype, norm, eps, start):
    """bfloat16 rounds 0.5 + 8/255 to 0.5390625 (ε·1.24): the iterate is rounded toward x instead."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10)).to(dtype)
    x = torch.rand(32, 3, 4, 4).to(dtype)
    y = torch.randint(0, 10, (32,))
    for steps in (0, 1, 7):
        attack = ir.GeometryAwareAttack(
            model, eps=eps, step_size=eps / 2, steps=steps, norm=norm, random_start=start
        )
        x_adv, _ = attack(x, y)
        assert x_adv.dtype == dtype
        delta = (x_adv.float() - x.float()).flatten(1)
        length = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert bool((length <= eps * (1 + 1e-6)).all()), float(length.max() / eps)
        assert bool(((x_adv >= 0) & (x_adv <= 1)).all())
        if steps:  # the attack still moves: the ball's edge is reached on the grid
            assert float(length.max()) > 0.5 * eps


def test_lm_pgd_under_bfloat16_stays_inside_the_ball():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).to(torch.bfloat16)
    x, y = torch.rand(16, 3, 2, 2).to(torch.bfloat16), torch.randint(0, 4, (16,))
    x_adv, _ = ir.evaluation.LineSearchMomentumPGD(model, eps=8 / 255, steps=5)(x, y)
    assert float((x_adv.float() - x.float()).abs().max()) <= 8 / 255 * (1 + 1e-6)


@pytest.mark.parametrize(
    "loss, error, match",
    [
        (lambda logits, y: logits, ValueError, r"one value per example, shape \(5,\).*\(5, 4\)"),
        (lambda logits, y: logits[:, :1], ValueError, r"shape \(5,\), or a scalar, got \(5, 1\)"),
        (
            lambda logits, y: logits.argmax(1),
            TypeError,
            "floating-point values, got dtype torch.int64",
        ),
    ],
)
def test_an_attack_loss_must_be_per_example_and_floating_point(loss, error, match):
    x, y = torch.rand(5, 3), torch.randint(0, 4, (5,))
    with pytest.raises(error, match=match):
        _bad_call(nn.Linear(3, 4), x, y, loss=loss)


def test_lazy_and_meta_models_and_meta_inputs_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"lazy module.*`model\(x\[:1\]\)`"):
        ir.GeometryAwareAttack(nn.LazyLinear(3), eps=0.1, step_size=0.02, steps=2)
    with pytest.raises(ValueError, match="lazy module"):
        ir.methods.get("at", nn.Sequential(nn.Flatten(), nn.LazyLinear(3)))
    with pytest.raises(ValueError, match="meta device.*to_empty"):
        ir.GeometryAwareAttack(nn.Linear(3, 2).to("meta"), eps=0.1, step_size=0.02, steps=2)
    with pytest.raises(ValueError, match="`x` with data"):
        _bad_call(nn.Linear(3, 2), torch.rand(4, 3, device="meta"), torch.zeros(4).long())


@pytest.mark.parametrize(
    "random_start,norm", [("uniform", "linf"), ("uniform", "l2"), ("normal", "linf")]
)
def test_a_generator_repeats_the_random_start_and_leaves_the_global_rng_alone(random_start, norm):
    """As torch's random functions take one: same seed, same x_adv and κ; torch's global RNG untouched."""
    model = _mlp()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(16, 6, dtype=torch.float64, generator=g)
    y = torch.randint(0, 4, (16,), generator=g)
    eps = 0.5 if norm == "l2" else 0.1

    def run(seed):
        attack = ir.GeometryAwareAttack(
            model, eps=eps, step_size=eps / 4, steps=0, random_start=random_start, norm=norm,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        state = torch.get_rng_state()
        out = attack(x, y)
        assert torch.equal(torch.get_rng_state(), state)
        return out.adv

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    # The same draws as the global generator at the same seed: only the source of randomness moves.
    torch.manual_seed(0)
    global_start = ir.GeometryAwareAttack(
        model, eps=eps, step_size=eps / 4, steps=0, random_start=random_start, norm=norm
    )(x, y).adv
    assert torch.equal(first, global_start)


def test_a_generator_on_another_device_than_the_inputs_is_refused():
    from instance_reweight._checks import check_generator_device

    with pytest.raises(ValueError, match=r"Expected `generator` on the inputs' device cuda:0, got"):
        check_generator_device(torch.Generator(), torch.device("cuda:0"))
    check_generator_device(torch.Generator(), torch.device("cpu"))  # no error
    with pytest.raises(TypeError, match="Expected `generator` to be a torch.Generator or None"):
        ir.GeometryAwareAttack(_mlp(), eps=0.1, step_size=0.05, steps=1, generator=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_cpu_generator_for_cuda_inputs_is_refused_before_the_attack():
    model = _mlp().cuda()
    attack = ir.GeometryAwareAttack(
        model, eps=0.1, step_size=0.05, steps=1, generator=torch.Generator()
    )
    x, y = torch.rand(2, 6, dtype=torch.float64).cuda(), torch.tensor([0, 1]).cuda()
    with pytest.raises(ValueError, match=r"torch\.Generator\(device='cuda:0'\)"):
        attack(x, y)
    attack.generator = torch.Generator(device="cuda").manual_seed(0)
    first = attack(x, y).adv
    attack.generator.manual_seed(0)
    assert torch.equal(first, attack(x, y).adv)
