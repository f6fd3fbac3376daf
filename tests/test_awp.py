"""AdversarialWeightPerturbation against a hand-written proxy step (Wu, Xia and Wang 2020, float64)."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import instance_reweight as ir

BN_EPS = 1e-5


def _model(seed: int = 0) -> nn.Sequential:
    """Linear → BatchNorm → tanh → Linear, float64, BatchNorm statistics away from the batch's."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).double()
    model[1].running_mean.uniform_(-1.0, 1.0)
    model[1].running_var.uniform_(0.5, 2.0)
    model[1].weight.data.uniform_(0.5, 1.5)
    return model


def _data(seed: int = 1, n: int = 8):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, dtype=torch.float64, generator=generator)
    return x, torch.randint(0, 2, (n,), generator=generator)


def _forward(params, x):
    """The model's train-mode forward written out: BatchNorm normalises by the batch's statistics."""
    w1, b1, gain, shift, w2, b2 = params
    h = x @ w1.T + b1
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + BN_EPS) * gain + shift
    return torch.tanh(h) @ w2.T + b2


def _params(model):
    return [p.detach().clone().requires_grad_(True) for p in model.parameters()]


def _oracle_perturbation(params, x, y, gamma, proxy_lr):
    """AWP's proxy: one plain SGD step on −CE, then γ‖W‖/‖d‖·d for the two weight matrices."""
    loss = -F.cross_entropy(_forward(params, x), y)
    grads = torch.autograd.grad(loss, params)
    proxy = [p - proxy_lr * g for p, g in zip(params, grads)]
    v = []
    for p, q in zip(params, proxy):
        d = (q - p).detach()
        v.append(gamma * p.detach().norm() / d.norm() * d if p.dim() > 1 else torch.zeros_like(p))
    return v


def _ce(x, y):
    return lambda m: F.cross_entropy(m(x), y)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_perturbation_is_the_hand_written_proxy_step(mode):
    model = _model().train(mode == "train")
    x, y = _data()
    gamma, proxy_lr = 5e-3, 0.01
    before = _params(model)
    expected = _oracle_perturbation(before, x, y, gamma, proxy_lr)
    awp = ir.AdversarialWeightPerturbation(model, gamma=gamma, proxy_lr=proxy_lr)
    with awp.perturbed(_ce(x, y)):
        for p, p0, v in zip(model.parameters(), before, expected):
            torch.testing.assert_close(p.detach(), p0.detach() + v, rtol=1e-12, atol=1e-14)
            if p.dim() > 1:  # layer-wise relative size γ
                assert math.isclose(float(v.norm() / p0.detach().norm()), gamma, rel_tol=1e-12)


def test_the_update_is_taken_at_the_perturbed_weights_and_kept():
    model = _model().train()
    x, y = _data()
    x_train, y_train = _data(seed=2)
    gamma, lr = 1e-2, 0.1
    before = _params(model)
    v = _oracle_perturbation(before, x, y, gamma, 0.01)
    perturbed = [(p + dv).detach().requires_grad_(True) for p, dv in zip(before, v)]
    grads = torch.autograd.grad(F.cross_entropy(_forward(perturbed, x_train), y_train), perturbed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    awp = ir.AdversarialWeightPerturbation(model, gamma=gamma)
    with awp.perturbed(_ce(x, y)):
        optimizer.zero_grad()
        F.cross_entropy(model(x_train), y_train).backward()
        optimizer.step()
    for p, p0, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), p0.detach() - lr * g, rtol=1e-12, atol=1e-14)


def test_the_model_is_restored_and_untouched_by_the_proxy_step():
    model = _model().train()
    model[3].eval()  # a mixed mode must survive as it is
    model[0].bias.requires_grad_(False)
    sentinel = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinel):
        p.grad = s.clone()
    model[0].bias.grad = None
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    x, y = _data()
    awp = ir.AdversarialWeightPerturbation(model, gamma=0.1)

    def untouched():
        assert all(torch.equal(b, b0) for b, b0 in zip(model.buffers(), buffers))
        assert [m.training for m in model.modules()] == modes
        assert [p.requires_grad for p in model.parameters()] == [
            True,
            False,
            True,
            True,
            True,
            True,
        ]
        assert model[0].bias.grad is None
        for p, s in zip(list(model.parameters())[2:], sentinel[2:]):
            assert torch.equal(p.grad, s)

    with awp.perturbed(_ce(x, y)):
        untouched()
        assert not torch.equal(model[0].weight, params[0])
    untouched()
    for p, p0 in zip(model.parameters(), params):
        assert torch.equal(p, p0)  # bitwise: no optimiser step ran inside the block


def test_an_exception_in_the_block_restores_the_weights():
    model = _model()
    params = [p.detach().clone() for p in model.parameters()]
    awp = ir.AdversarialWeightPerturbation(model, gamma=0.1)
    with pytest.raises(RuntimeError, match="boom"), awp.perturbed(_ce(*_data())):
        raise RuntimeError("boom")
    for p, p0 in zip(model.parameters(), params):
        assert torch.equal(p, p0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_block_without_an_optimiser_step_gives_the_weights_back_bitwise(dtype):
    """γ = 1 on weights of very different sizes: W + v − v would leave a cancellation residue."""
    model = _model().to(dtype)
    with torch.no_grad():
        model[0].weight.mul_(1e4)
        model[3].weight.mul_(1e-4)
    params = [p.detach().clone() for p in model.parameters()]
    x, y = _data()
    with ir.AdversarialWeightPerturbation(model, gamma=1.0).perturbed(_ce(x.to(dtype), y)):
        assert not torch.equal(model[0].weight, params[0])
    for p, p0 in zip(model.parameters(), params):
        assert torch.equal(p, p0)


def test_an_update_to_some_weights_only_leaves_the_others_bitwise():
    model = _model()
    params = [p.detach().clone() for p in model.parameters()]
    x, y = _data()
    optimizer = torch.optim.SGD([model[3].weight], lr=0.1)
    with ir.AdversarialWeightPerturbation(model, gamma=1.0).perturbed(_ce(x, y)):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert not torch.equal(model[3].weight, params[4])
    for i in (0, 1, 2, 3, 5):
        assert torch.equal(list(model.parameters())[i], params[i])


def test_the_direction_does_not_depend_on_the_proxy_learning_rate():
    x, y = _data()
    inside = []
    for proxy_lr in (1e-4, 0.01, 0.1, 10.0):
        model = _model()
        with ir.AdversarialWeightPerturbation(model, gamma=5e-3, proxy_lr=proxy_lr).perturbed(
            _ce(x, y)
        ):
            inside.append([p.detach().clone() for p in model.parameters()])
    for params in inside[1:]:
        for p, q in zip(params, inside[0]):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)


def test_the_proxy_follows_the_model_between_steps_and_across_dtypes():
    model = _model().float()
    x, y = _data()
    awp = ir.AdversarialWeightPerturbation(model, gamma=5e-3)
    with awp.perturbed(_ce(x.float(), y)):
        pass
    model.double()
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # the model moved on: the proxy must start from here
    before = _params(model)
    expected = _oracle_perturbation(before, x, y, 5e-3, 0.01)
    with awp.perturbed(_ce(x, y)):
        for p, p0, v in zip(model.parameters(), before, expected):
            torch.testing.assert_close(p.detach(), p0.detach() + v, rtol=1e-10, atol=1e-13)


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.used(x)


def test_a_weight_without_gradient_is_not_moved():
    model = _TwoHeads().double()
    unused = model.unused.weight.detach().clone()
    with ir.AdversarialWeightPerturbation(model, gamma=0.1).perturbed(_ce(*_data())):
        assert torch.equal(model.unused.weight, unused)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("where", ["gradient", "loss only"])
def test_a_non_finite_proxy_loss_leaves_the_weights_alone(bad, where):
    """As documented: v = 0 for a non-finite proxy loss, also when its gradient is finite."""
    model = _model()
    params = [p.detach().clone() for p in model.parameters()]
    x, y = _data()

    def loss_fn(m):
        loss = F.cross_entropy(m(x), y)
        return loss * bad if where == "gradient" else loss + bad

    with ir.AdversarialWeightPerturbation(model, gamma=0.1).perturbed(loss_fn):
        for p, p0 in zip(model.parameters(), params):
            assert torch.equal(p, p0)


def test_a_reweighted_loss_drives_the_perturbation():
    """The perturbation maximises whatever scalar it is given, e.g. Σ w·ℓ with per-example weights."""
    model = _model()
    x, y = _data()
    w = torch.linspace(0.2, 1.8, 8, dtype=torch.float64)
    before = _params(model)
    loss = -(w * F.cross_entropy(_forward(before, x), y, reduction="none")).mean()
    grads = torch.autograd.grad(loss, before)
    with ir.AdversarialWeightPerturbation(model, gamma=5e-3).perturbed(
        lambda m: (w * F.cross_entropy(m(x), y, reduction="none")).mean()
    ):
        for p, p0, g in zip(model.parameters(), before, grads):
            d = -g if p.dim() > 1 else torch.zeros_like(g)
            v = 5e-3 * p0.detach().norm() / d.norm() * d if p.dim() > 1 else d
            torch.testing.assert_close(p.detach(), p0.detach() + v, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"gamma": 0.0}, ValueError, r"Expected `gamma`.*in \(0, 1\]"),
        ({"gamma": -5e-3}, ValueError, r"Expected `gamma`.*in \(0, 1\]"),
        ({"gamma": math.nan}, ValueError, r"Expected `gamma`.*in \(0, 1\]"),
        ({"gamma": 1.5}, ValueError, r"Expected `gamma`.*in \(0, 1\].*got 1.5"),
        ({"gamma": 1e6}, ValueError, r"Expected `gamma`.*in \(0, 1\]"),
        ({"gamma": math.inf}, ValueError, "Expected `gamma` to be a finite number"),
        ({"gamma": "5e-3"}, TypeError, "Expected `gamma` to be a real number"),
        ({"gamma": True}, TypeError, "Expected `gamma` to be a real number"),
        ({"gamma": 5e-3, "proxy_lr": 0.0}, ValueError, "Expected `proxy_lr`.*> 0"),
    ],
)
def test_bad_hyper_parameters_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        ir.AdversarialWeightPerturbation(_model(), **kwargs)


def test_inference_mode_lazy_and_meta_models_are_refused_with_the_fix():
    model = _model()
    params = [p.detach().clone() for p in model.parameters()]
    awp = ir.AdversarialWeightPerturbation(model, gamma=5e-3)
    with pytest.raises(RuntimeError, match="outside torch.inference_mode"), torch.inference_mode():
        with awp.perturbed(_ce(*_data())):
            pass
    assert all(torch.equal(p, p0) for p, p0 in zip(model.parameters(), params))
    with pytest.raises(ValueError, match=r"lazy module.*`model\(x\[:1\]\)`"):
        ir.AdversarialWeightPerturbation(nn.Sequential(nn.LazyLinear(2)), gamma=5e-3)
    with pytest.raises(ValueError, match="meta device.*to_empty"):
        ir.AdversarialWeightPerturbation(nn.Linear(3, 2).to("meta"), gamma=5e-3)


def test_a_model_without_weight_matrices_is_refused():
    with pytest.raises(ValueError, match="more than one dimension"):
        ir.AdversarialWeightPerturbation(nn.BatchNorm1d(3), gamma=5e-3)
    with pytest.raises(TypeError, match="Expected `model` to be a torch.nn.Module"):
        ir.AdversarialWeightPerturbation(lambda x: x, gamma=5e-3)  # type: ignore[arg-type]


def test_bad_loss_functions_are_refused_and_leave_the_model_alone():
    model = _model()
    params = [p.detach().clone() for p in model.parameters()]
    x, y = _data()
    awp = ir.AdversarialWeightPerturbation(model, gamma=5e-3)
    cases = [
        ("not callable", TypeError, "Expected `loss_fn` to be a callable"),
        (lambda m: 1.0, TypeError, "to return a scalar tensor, got float"),
        (lambda m: F.cross_entropy(m(x), y, reduction="none"), ValueError, "reduce"),
        (lambda m: F.cross_entropy(model(x), y), ValueError, "not `model"),
    ]
    for loss_fn, error, match in cases:
        with pytest.raises(error, match=match), awp.perturbed(loss_fn):  # type: ignore[arg-type]
            pass
    for p, p0 in zip(model.parameters(), params):
        assert torch.equal(p, p0)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _ddp_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        x, y = _data()
        local = slice(4 * rank, 4 * rank + 4)  # equal shards, as a DistributedSampler gives
        ddp = nn.parallel.DistributedDataParallel(_mlp())
        awp = ir.AdversarialWeightPerturbation(ddp, gamma=5e-3)
        with awp.perturbed(_ce(x[local], y[local])):
            inside = [p.detach().clone() for p in ddp.module.parameters()]
        torch.save(inside, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo"
)
@pytest.mark.slow
def test_under_ddp_every_rank_applies_the_global_batch_perturbation(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    model, (x, y) = _mlp(), _data()
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    expected = [  # the oracle on the whole batch: v = γ‖W‖·g/‖g‖ for the weight matrices
        p.detach() + (5e-3 * p.detach().norm() / g.norm() * g if p.dim() > 1 else 0.0)
        for p, g in zip(model.parameters(), grads)
    ]
    for inside in ranks:
        for got, want in zip(inside, expected):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


AWP_METHODS = ("at-awp", "trades-awp", "gairat-awp", "mail-at-awp", "mail-trades-awp")


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3)
    ).train()


def _images(n: int = 8):
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=generator), torch.randint(
        0, 3, (n,), generator=generator
    )


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("name", AWP_METHODS)
def test_every_awp_method_trains_a_step_before_and_after_its_warm_up_and_burn_in(name, variant):
    model = _bn_model()
    x, y = _images()
    weighted = name not in ("at-awp", "trades-awp")
    overrides = {"awp_warmup": 1, **({"burn_in_epochs": 2} if weighted else {})}
    method = ir.methods.get(name, model, variant=variant, steps=3, **overrides)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in (0, 1, 2):
        method.set_epoch(epoch)
        before = [p.detach().clone() for p in model.parameters()]
        loss = method.step(x, y, optimizer)
        assert loss.dim() == 0 and not loss.requires_grad and bool(torch.isfinite(loss))
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        assert model.training
        assert method.perturbing_weights == (epoch >= 1)
        if weighted:
            assert method.reweighting == (epoch >= 2)
            assert bool((method.last_weights == 1).all()) != method.reweighting


def _gairat_weights(kappa, steps, lam):
    """GAIRAT Eq. 6 normalised to mean 1: ω = (1 + tanh(λ + 5(1 − 2κ/K)))/2, w = N·ω/Σω."""
    omega = (1 + torch.tanh(lam + 5 * (1 - 2 * kappa.double() / steps))) / 2
    return omega * len(omega) / omega.sum()


def _mail_weights(logits, y, slope, bias):
    """MAIL Eq. 8 on PM = p_y − max_{j≠y} p_j, normalised to mean 1."""
    p = logits.softmax(1)
    p_y = p.gather(1, y[:, None]).squeeze(1)
    p_other = p.scatter(1, y[:, None], -1.0).max(1).values
    omega = torch.sigmoid(-slope * (p_y - p_other - bias))
    return omega * len(omega) / omega.sum()


@pytest.mark.parametrize("name", ["at-awp", "gairat-awp", "mail-at-awp"])
def test_an_awp_step_is_sgd_at_the_perturbation_of_the_same_weighted_objective(name):
    """Oracle: w from κ or from PM at W; v = γ‖W‖·∇J/‖∇J‖ per weight matrix for J = mean w·CE(x_adv);
    then plain SGD with the gradient of the same J at W + v."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.Tanh(), nn.Linear(10, 3)).double()
    x, y = _images(12)
    x = x.double()
    gamma, lr, steps, eps = 0.02, 0.5, 4, 0.3
    attack = dict(eps=eps, step_size=eps / 2, steps=steps, random_start=None)
    extra = {"burn_in_epochs": 0} if name != "at-awp" else {}
    method = ir.methods.get(name, model, awp_gamma=gamma, **attack, **extra)
    x_adv, kappa = ir.GeometryAwareAttack(model, **attack)(x, y)
    params = _params(model)

    def forward(ps, inputs):
        w1, b1, w2, b2 = ps
        return torch.tanh(inputs.flatten(1) @ w1.T + b1) @ w2.T + b2

    if name == "gairat-awp":
        w = _gairat_weights(kappa, steps, lam=0.0)
    elif name == "mail-at-awp":
        w = _mail_weights(forward(params, x_adv).detach(), y, slope=10.0, bias=-0.5)
    else:
        w = torch.ones(12, dtype=torch.float64)

    def objective(ps):
        return (w * F.cross_entropy(forward(ps, x_adv), y, reduction="none")).mean()

    grads = torch.autograd.grad(objective(params), params)
    shifted = [
        (p + gamma * p.norm() / g.norm() * g if p.dim() > 1 else p).detach().requires_grad_(True)
        for p, g in zip(params, grads)
    ]
    step_grads = torch.autograd.grad(objective(shifted), shifted)
    expected = [p.detach() - lr * g for p, g in zip(params, step_grads)]
    method.step(x, y, torch.optim.SGD(model.parameters(), lr=lr))
    tolerance = 1e-12 if name == "at-awp" else 1e-6  # instance weights are float32 by design
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=tolerance, atol=tolerance)
    if name != "at-awp":
        torch.testing.assert_close(method.last_weights.double(), w, rtol=1e-5, atol=1e-6)


def test_loss_of_an_awp_method_is_refused_once_awp_applies():
    model = _bn_model()
    x, y = _images()
    method = ir.methods.get("trades-awp", model, steps=2)
    assert torch.isfinite(method.loss(x, y))  # warm-up: the plain TRADES loss
    method.set_epoch(10)
    with pytest.raises(RuntimeError, match=r"method.step\(x, y, optimizer\)"):
        method.loss(x, y)


def test_awp_hyper_parameters_are_checked():
    model = _bn_model()
    for gamma in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"Expected `awp_gamma`.*in \(0, 1\]"):
            ir.methods.get("at-awp", model, awp_gamma=gamma)
    with pytest.raises(ValueError, match="Expected `awp_warmup` to be an int >= 0"):
        ir.methods.get("trades-awp", model, awp_warmup=-1)
    with pytest.raises(
        ValueError, match="Expected hyper-parameters of 'at' among .* got awp_gamma"
    ):
        ir.methods.get("at", model, awp_gamma=5e-3)


def test_an_awp_step_reads_its_checks_with_one_host_synchronisation(count_syncs):
    model = _bn_model()
    x, y = _images()
    method = ir.methods.get("mail-trades-awp", model, steps=2, awp_warmup=0, burn_in_epochs=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method.step(x, y, optimizer)  # builds the proxy
    assert count_syncs(lambda: method.step(x, y, optimizer)) == 1


def test_mail_with_awp_by_hand_is_the_mail_at_awp_method():
    """The pattern of docs/awp.md (PM from the proxy's forward at the unperturbed weights, without
    gradient; the same weights in both objectives) trains exactly as ``mail-at-awp``."""
    x, y = _images()
    by_method, by_hand = _bn_model(), _bn_model()
    with torch.no_grad():
        by_method[-1].weight.mul_(8.0)  # confident predictions: weights far from uniform
        by_hand[-1].weight.mul_(8.0)
    method = ir.methods.get(
        "mail-at-awp", by_method, burn_in_epochs=0, generator=torch.Generator().manual_seed(0)
    )
    sgd = torch.optim.SGD(by_method.parameters(), lr=0.1)
    expected = method.step(x, y, sgd)

    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    attack = ir.GeometryAwareAttack(
        by_hand, eps=8 / 255, step_size=2 / 255, steps=10, random_start="normal",
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    weighting = ir.InstanceWeighting("mail", slope=10.0, bias=-0.5)
    awp = ir.AdversarialWeightPerturbation(by_hand, gamma=5e-3)
    x_adv, _ = attack(x, y)
    signal = {}

    def increase(proxy):
        logits = proxy(x_adv)
        signal["margin"] = ir.probabilistic_margin(logits, y)  # detached: no gradient
        return weighting.reduce(F.cross_entropy(logits, y, reduction="none"), **signal)

    with awp.perturbed(increase):
        loss = weighting.reduce(F.cross_entropy(by_hand(x_adv), y, reduction="none"), **signal)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    assert float(weighting.last_weights.max() - weighting.last_weights.min()) > 0.1
    torch.testing.assert_close(weighting.last_weights, method.last_weights)
    torch.testing.assert_close(loss.detach(), expected)
    for a, b in zip(by_hand.state_dict().values(), by_method.state_dict().values()):
        torch.testing.assert_close(a, b)
