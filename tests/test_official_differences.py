"""Every known difference from the official AWP, GAIRAT and MAIL code: `variant="official"` against
oracles written from the official scripts' arithmetic, the epoch counting of their loops, and the
table of docs/official-differences.md (each row names a test that exists).

The official scripts were read for facts (csdongxian/AWP, zjfheart/Geometry-aware-Instance-reweighted-
Adversarial-Training); the oracles below restate their arithmetic step by step, not their code.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import instance_reweight as ir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from presets import PRESETS  # noqa: E402

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 3


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3)
        )
        .double()
        .train()
    )


def batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def optimizer_of(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def awp_diff(model: nn.Module, proxy: nn.Module) -> dict:
    """utils_awp.py diff_in_weights: for every state-dict entry with more than one dimension whose
    key holds "weight", ‖W‖/(‖d‖ + 1e-20)·d with d = W_proxy − W."""
    diff = {}
    for (key, old), new in zip(model.state_dict().items(), proxy.state_dict().values()):
        if old.dim() > 1 and "weight" in key:
            d = new - old
            diff[key] = old.norm() / (d.norm() + 1e-20) * d
    return diff


def add_into_weights(model: nn.Module, diff: dict, coeff: float) -> None:
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key in diff:
                param.add_(coeff * diff[key])


def official_at_awp_step(model, x, y, gamma):
    """One batch of AT_AWP/train_cifar10.py (ℓ∞, restarts 1), the model in train mode throughout."""
    model.train()  # set after the previous batch's attack: this batch's attack_pgd runs in train mode
    delta = torch.zeros_like(x).uniform_(-EPS, EPS)
    delta = torch.max(torch.min(delta, 1 - x), -x)  # clamp(delta, lower_limit − X, upper_limit − X)
    for _ in range(STEPS):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
        d = torch.clamp(delta.detach() + ALPHA * grad.sign(), -EPS, EPS)
        delta = torch.max(torch.min(d, 1 - x), -x)
    model(x + delta)  # all_loss: the forward that keeps the restart with the largest loss
    x_adv = torch.clamp(x + delta, 0, 1)
    # AdvWeightPerturb.calc_awp: a proxy with the model's state, SGD (lr 0.01) on −CE.
    proxy = copy.deepcopy(model).train()
    proxy_optim = torch.optim.SGD(proxy.parameters(), lr=0.01)
    proxy_optim.zero_grad()
    (-F.cross_entropy(proxy(x_adv), y)).backward()
    proxy_optim.step()
    diff = awp_diff(model, proxy)
    add_into_weights(model, diff, gamma)
    optimizer = optimizer_of(model)
    optimizer.zero_grad()
    F.cross_entropy(model(x_adv), y).backward()
    optimizer.step()
    add_into_weights(model, diff, -gamma)
    model(x)  # the natural forward of the training-accuracy log, in train mode


def official_trades_awp_step(model, x, y, gamma, beta, weight=None):
    """One batch of trades_AWP/train_trades_cifar.py (ℓ∞): perturb_input in eval mode, then TradesAWP
    and three train-mode forwards. ``weight(logits_adv)``: a per-example weight on the KL, read from
    the proxy's adversarial logits (MAIL's w on TRADES-AWP); None for TRADES-AWP itself."""
    model.eval()
    # (the official draws the 0.001·N(0, I) start in float32; the oracle draws it in x's dtype)
    x_adv = x + 0.001 * torch.randn_like(x)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        kl = F.kl_div(
            F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1), reduction="sum"
        )
        (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + ALPHA * grad.sign(), x - EPS), x + EPS)
        x_adv = x_adv.clamp(0, 1)
    model.train()

    def kl_rows(logits_adv, logits_nat):
        return F.kl_div(
            F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="none"
        ).sum(1)

    # TradesAWP.calc_awp: proxy SGD (lr = args.lr) on −(CE(x) + β·KL); the direction does not depend on lr.
    proxy = copy.deepcopy(model).train()
    proxy_optim = torch.optim.SGD(proxy.parameters(), lr=0.1)
    logits_adv = proxy(x_adv)
    w = torch.ones(len(y), dtype=x.dtype) if weight is None else weight(logits_adv.detach(), y)
    loss = F.cross_entropy(proxy(x), y) + beta * (w * kl_rows(logits_adv, proxy(x))).mean()
    proxy_optim.zero_grad()
    (-loss).backward()
    proxy_optim.step()
    diff = awp_diff(model, proxy)
    add_into_weights(model, diff, gamma)
    optimizer = optimizer_of(model)
    logits_adv = model(x_adv)
    loss_robust = (w * kl_rows(logits_adv, model(x))).mean()
    loss = F.cross_entropy(model(x), y) + beta * loss_robust
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    add_into_weights(model, diff, -gamma)


def assert_same_state(model, oracle, rtol=1e-10, atol=1e-12):
    for (key, got), want in zip(model.state_dict().items(), oracle.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=key)


def test_official_at_awp_step_is_the_at_awp_script_step():
    # AT_AWP/train_cifar10.py: model.train() after each attack, so attack_pgd runs in train mode
    # (K forwards and its restart-selection forward update BatchNorm's running statistics), then the
    # proxy step, the step at W + v, the restore, and a natural train-mode forward for the log.
    model, (x, y) = bn_model(), batch()
    oracle = copy.deepcopy(model)
    torch.manual_seed(5)
    official_at_awp_step(oracle, x, y, gamma=0.01)

    results = {}
    for variant in ("official", "paper"):
        net = copy.deepcopy(model)
        method = ir.methods.get(
            "at-awp", net, variant=variant, steps=STEPS, awp_gamma=0.01, step_size=ALPHA
        )
        torch.manual_seed(5)
        method.step(x, y, optimizer_of(net))
        with torch.no_grad():
            net(x)  # the official log's forward: the one line a loop adds to match it
        assert net.training
        results[variant] = net
    assert_same_state(results["official"], oracle)
    paper_mean = results["paper"][2].running_mean
    assert not torch.allclose(paper_mean, oracle[2].running_mean, rtol=1e-3, atol=1e-6)


def _mail_trades_weight(logits_adv, y):
    """The official MAIL code's 3·ω, ω = σ(−γ(PM_adv − β)) with γ = 2, β = 0, unnormalised."""
    p = logits_adv.softmax(1)
    p_y = p.gather(1, y[:, None]).squeeze(1)
    p_other = p.scatter(1, y[:, None], -1.0).max(1).values
    return 3 * torch.sigmoid(-2.0 * (p_y - p_other))


@pytest.mark.parametrize(
    "name,beta,weight,overrides",
    [
        ("trades-awp", 6.0, None, {}),
        ("mail-trades-awp", 5.0, _mail_trades_weight, {"burn_in_epochs": 0}),
    ],
)
def test_official_trades_awp_step_is_the_trades_awp_script_step(name, beta, weight, overrides):
    # trades_AWP/train_trades_cifar.py: the KL attack in eval mode, then f(x_adv), f(x) for the KL's
    # target and f(x) for the CE, in train mode: BatchNorm's running statistics see them in that order.
    model, (x, y) = bn_model(), batch()
    oracle = copy.deepcopy(model)
    torch.manual_seed(5)
    official_trades_awp_step(oracle, x, y, gamma=5e-3, beta=beta, weight=weight)

    results = {}
    for variant in ("official", "paper"):
        net = copy.deepcopy(model)
        method = ir.methods.get(name, net, variant=variant, steps=STEPS, **overrides)
        method.set_epoch(9)  # the official loop's 10th epoch: the first with AWP
        assert method.perturbing_weights
        torch.manual_seed(5)
        method.step(x, y, optimizer_of(net))
        results[variant] = net
    tolerance = {} if weight is None else {"rtol": 1e-6, "atol": 1e-7}  # float32 weights
    assert_same_state(results["official"], oracle, **tolerance)
    paper_mean = results["paper"][2].running_mean
    assert not torch.allclose(paper_mean, oracle[2].running_mean, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(
    "name,calls",
    [
        ("at-awp", STEPS + 2),  # K attack forwards, the selection forward, the step's forward
        ("gairat-awp", STEPS + 2),
        ("mail-at-awp", STEPS + 2),
        ("trades-awp", 3),
        ("mail-trades-awp", 3),
    ],
)
def test_official_awp_variants_run_the_scripts_train_mode_forwards(count_syncs, name, calls):
    model, (x, y) = bn_model(), batch()
    seen = []
    model[2].register_forward_hook(
        lambda module, inputs, output: seen.append(module.training) if module is model[2] else None
    )
    method = ir.methods.get(name, model, variant="official", steps=STEPS, awp_warmup=0)
    method.set_epoch(method.params.get("burn_in_epochs", 0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method.step(x, y, optimizer)  # builds the proxy (its forwards are its own module's)
    seen.clear()
    assert count_syncs(lambda: method.step(x, y, optimizer)) == 1
    assert sum(seen) == calls and model.training


# --- Epoch counting of the official loops ----------------------------------------------------------------


def perturbed_epochs(method, epochs):
    applied = []
    for epoch in range(epochs):
        method.set_epoch(epoch)
        applied.append(method.perturbing_weights)
    return applied


def test_awp_warm_up_counts_as_the_official_loops():
    model = bn_model()
    # trades_AWP: `for epoch in range(1, epochs + 1)`, AWP `if epoch >= 10` (--awp-warmup 10).
    official = [epoch >= 10 for epoch in range(1, 31)]
    assert perturbed_epochs(ir.methods.get("trades-awp", model), 30) == official
    assert perturbed_epochs(ir.methods.get("mail-trades-awp", model), 30) == official
    # AT_AWP: `for epoch in range(0, epochs)`, AWP `if epoch >= args.awp_warmup` (0; SVHN: 5).
    assert all(perturbed_epochs(ir.methods.get("at-awp", model), 30))
    svhn = ir.methods.get("at-awp", model, awp_gamma=0.01, awp_warmup=5, step_size=1 / 255)
    assert perturbed_epochs(svhn, 30) == [epoch >= 5 for epoch in range(30)]
    assert ir.methods.get("at-awp", model).params["awp_gamma"] == 5e-3  # the AWP paper's γ


def official_gairat_lambda(epoch, schedule, lam=-1.0, lam_max=float("inf"), epochs=120):
    """GAIRAT.py's adjust_Lambda, called with epoch + 1 for the 0-based epoch (WRN: epochs ≥ 110);
    None while the weights are uniform (the code's `(epoch + 1) >= begin_epoch` is false, 60)."""
    e = epoch + 1
    if e < 60:
        return None
    if schedule == "linear":
        return lam_max - (e / epochs) * (lam_max - lam)
    return lam  # 'fixed', and 'piecewise' (its later branches follow `if epoch >= 60`)


def test_gairat_schedules_as_the_official_code_evaluates_them():
    # docs/gairat.md's schedules: burn-in 59 and λ evaluated at epoch + 1 reproduce the code.
    for schedule, lam in (
        ("linear", lambda e: 3.0 - ((e + 1) / 120) * (3.0 - (-1.0))),
        ("fixed", -1.0),
    ):
        criterion = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat")
        burn_in = ir.BurnInScheduler(criterion, burn_in_epochs=59, lam=lam)
        for epoch in range(120):
            burn_in.step(epoch)
            want = official_gairat_lambda(epoch, schedule, lam_max=3.0)
            got = criterion.scheme_params["lam"] if burn_in.active else None
            assert got == pytest.approx(want), (schedule, epoch)
    assert official_gairat_lambda(59, "linear", lam_max=3.0) == 1.0  # not 1.0333 (e / 120)
    # What the piecewise branches intended, 1 and 1.5 below λ from the code's 90th and 110th epochs:
    # 0-based 89 and 109.
    intended = [-1.0 if e + 1 < 90 else -2.0 if e + 1 < 110 else -2.5 for e in range(120)]
    assert intended.index(-2.0) == 89 and intended.index(-2.5) == 109


def test_the_presets_follow_the_papers_settings():
    # GAIRAT Appendix C.3 (ResNet-18, the Figure 4 / Figure 13 setting): weight decay 0.0005; the
    # official GAIRAT.py defaults to 2e-4 for every network. Appendix C.8 (WRN-32-10): 0.0002, drops
    # at 60, 90 and 110, which the code's lr_schedule(epoch + 1) applies from 0-based 59, 89, 109.
    assert PRESETS["gairat-resnet18"].weight_decay == 5e-4
    wrn = PRESETS["gairat-wrn32"]
    assert wrn.weight_decay == 2e-4
    assert [epoch for epoch, _ in wrn.lr_schedule] == [60, 90, 110]
    ratio = [0.5, 0.75, 11 / 12]  # GAIRAT.py piecewise, epochs >= 110: t / E < ratio
    official = [next(e for e in range(120) if (e + 1) / 120 >= r) for r in ratio]
    assert official == [59, 89, 109]
    # MAIL: the paper's drops at 75 and 90 (counted from 1) are 0-based 74 and 89 here; its code
    # drops first at 0-based 75. AT_AWP (ℓ2): lr_schedule(epoch + (i + 1)/n) drops once t/E ≥ 0.5,
    # on the last batch of 0-based epoch 99; the preset drops at the start of epoch 100.
    assert [epoch for epoch, _ in PRESETS["mail-resnet18"].lr_schedule] == [74, 89]
    assert [epoch for epoch, _ in PRESETS["awp-preact-resnet18-l2"].lr_schedule] == [100, 150]
    n = 391  # CIFAR-10 batches of 128
    first = next((e, i) for e in range(200) for i in range(n) if (e + (i + 1) / n) / 200 >= 0.5)
    assert first == (99, n - 1)


def test_mail_protocol_cw_keeps_the_librarys_steps_and_takes_mails_as_options():
    # MAIL's train.py evaluates CW∞ with 20 steps of 0.003; protocol="mail" keeps 30 steps of ε/4.
    cw = ir.evaluation.settings(protocol="mail")["attacks"]["cw"]
    assert (cw["steps"], cw["step_size"]) == (30, pytest.approx(0.031 / 4))
    options = {"cw": {"steps": 20, "step_size": 0.003}}
    cw = ir.evaluation.settings(protocol="mail", options=options)["attacks"]["cw"]
    assert (cw["steps"], cw["step_size"]) == (20, 0.003)


# --- The table of docs/official-differences.md ----------------------------------------------------------


def test_every_row_of_the_differences_table_names_an_existing_test():
    text = (ROOT / "docs" / "official-differences.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    rows = [row for row in rows if not row.startswith("| difference")]
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
    assert len(rows) >= 20
    for row in rows:
        named = re.findall(r"`(test_\w+)`", row.rsplit("|", 2)[-2])
        assert named, f"no test named in the last column of: {row}"
        missing = [name for name in named if name not in defined]
        assert not missing, f"{missing} of row {row[:60]}… is not a test under tests/"
