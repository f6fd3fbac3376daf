"""`ir.methods`: every method trains, the weight lands on the term SPEC §3 names, schedules follow the epoch."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from instance_reweight import GeometryAwareAttack, methods

NAMES = (
    "at",
    "trades",
    "mart",
    "fat",
    "gairat",
    "gair-fat",
    "gair-trades",
    "gair-mart",
    "mail-at",
    "mail-trades",
    "mail-mart",
)
OFFICIAL = ("gair-trades", "mail-at", "mail-trades", "mail-mart", "trades")
CASES = [(name, "paper") for name in NAMES] + [(name, "official") for name in OFFICIAL]


def make_model(dtype=torch.float32, seed=0, gain=1.0):
    """A tiny MLP with BatchNorm; ``gain`` scales the logits (confident predictions, varied terms)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3)
    )
    with torch.no_grad():
        model[-1].weight.mul_(gain)
    return model.to(dtype).train()


def make_batch(dtype=torch.float32, n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def test_names_are_the_eleven_methods_and_their_awp_compositions():
    awp = ("at-awp", "trades-awp", "gairat-awp", "mail-at-awp", "mail-trades-awp")
    assert methods.names() == NAMES + awp  # the AWP methods are tested in test_awp.py


@pytest.mark.parametrize("name,variant", CASES)
def test_every_method_trains_a_step_before_and_after_its_burn_in(name, variant):
    model = make_model()
    x, y = make_batch()
    method = methods.get(name, model, variant=variant)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in (0, method.params.get("burn_in_epochs", 0)):
        method.set_epoch(epoch)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        loss = method.loss(x, y)
        loss.backward()
        optimizer.step()
        assert loss.dim() == 0 and bool(torch.isfinite(loss))
        assert all(
            p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters()
        )
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        assert model.training  # the attack restored the mode
        stats = method.stats()
        assert all(math.isfinite(v) for v in stats.values())
        if method.weighting is not None:
            assert method.reweighting == (epoch >= method.params["burn_in_epochs"])
            assert method.last_weights is not None and method.last_weights.shape == (8,)
            uniform = bool((method.last_weights == 1).all())
            assert uniform != method.reweighting
        else:
            assert not method.reweighting and method.last_weights is None and "kappa_mean" in stats


# --- The weight lands on the term SPEC §3 names --------------------------------------------------------


def _softmax(row):
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def _kl(adv, nat):
    p, q = _softmax(nat), _softmax(adv)
    return sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))


def per_example_terms(logits_nat, logits_adv, y):
    """CE(x), CE(x_adv), BCE(x_adv), KL and MART's KL·(1 - p_y(x)), one loop over the examples."""
    terms = {"ce_nat": [], "ce_adv": [], "bce": [], "kl": [], "mkl": [], "pm_adv": []}
    for nat, adv, label in zip(logits_nat.tolist(), logits_adv.tolist(), y.tolist()):
        p_nat, p_adv = _softmax(nat), _softmax(adv)
        other = max(p_adv[k] for k in range(len(adv)) if k != label)
        terms["ce_nat"].append(-math.log(p_nat[label]))
        terms["ce_adv"].append(-math.log(p_adv[label]))
        terms["bce"].append(-math.log(p_adv[label]) - math.log(1 - other))
        terms["kl"].append(_kl(adv, nat))
        terms["mkl"].append(_kl(adv, nat) * (1 - p_nat[label]))
        terms["pm_adv"].append(p_adv[label] - other)
    return terms


def _mean(values):
    return sum(values) / len(values)


def _weighted(w, values):
    return [wi * v for wi, v in zip(w, values)]


def placements(t, w, beta):
    """Every way of putting the weight on the objective's terms; SPEC §3 names one of each family."""
    boost = [b - c for b, c in zip(t["bce"], t["ce_adv"])]
    bkl, bmkl = [beta * v for v in t["kl"]], [beta * v for v in t["mkl"]]
    return {
        "at": {
            "ce_adv": _mean(_weighted(w, t["ce_adv"])),
            "none": _mean(t["ce_adv"]),
        },
        "trades": {
            "ce_nat": _mean(_weighted(w, t["ce_nat"])) + _mean(bkl),
            "kl": _mean(t["ce_nat"]) + _mean(_weighted(w, bkl)),
            "both": _mean(_weighted(w, t["ce_nat"])) + _mean(_weighted(w, bkl)),
            "none": _mean(t["ce_nat"]) + _mean(bkl),
        },
        "mart": {
            "ce_adv": _mean(_weighted(w, t["ce_adv"])) + _mean(boost) + _mean(bmkl),
            "bce": _mean(_weighted(w, t["bce"])) + _mean(bmkl),
            "kl": _mean(t["bce"]) + _mean(_weighted(w, bmkl)),
            "none": _mean(t["bce"]) + _mean(bmkl),
        },
    }


# (name, objective, the term SPEC §3 weights)
WEIGHTED = [
    ("gairat", "at", "ce_adv"),
    ("gair-fat", "at", "ce_adv"),
    ("mail-at", "at", "ce_adv"),
    ("gair-trades", "trades", "ce_nat"),
    ("mail-trades", "trades", "kl"),
    ("gair-mart", "mart", "ce_adv"),
    ("mail-mart", "mart", "bce"),
]
# Deterministic attack (no random start), strong enough that κ differs between examples.
ATTACK = dict(eps=0.3, step_size=0.1, steps=5, random_start=None, burn_in_epochs=0)


def raw_weights(method, kappa, pm):
    p = method.params
    if method.name.startswith("gair"):
        return [(1 + math.tanh(p["lam"] + 5 * (1 - 2 * k / p["steps"]))) / 2 for k in kappa]
    return [1 / (1 + math.exp(p["slope"] * (m - p["bias"]))) for m in pm]


def reference(method, x, y):
    """x_adv and κ from an attack built in the test, the logits of separate train-mode forwards."""
    p, ref = method.params, copy.deepcopy(method.model)
    x_adv, kappa = GeometryAwareAttack(
        ref,
        eps=p["eps"],
        step_size=p["step_size"],
        steps=p["steps"],
        loss=p["attack_loss"],
        random_start=None,
        tau=method.attack.tau,
    )(x, y)
    return ref, x_adv, kappa.tolist(), ref(x), ref(x_adv)


@pytest.mark.parametrize("name,objective,term", WEIGHTED)
def test_weight_lands_on_the_term_spec_names(name, objective, term):
    model = make_model(torch.float64, gain=8.0)
    x, y = make_batch(torch.float64)
    method = methods.get(name, model, **ATTACK)
    ref, x_adv, kappa, logits_nat, logits_adv = reference(method, x, y)
    t = per_example_terms(logits_nat, logits_adv, y)
    omega = raw_weights(method, kappa, t["pm_adv"])
    w = [len(omega) * o / sum(omega) for o in omega]
    assert max(w) - min(w) > 0.1  # the test can tell the placements apart
    options = placements(t, w, method.params.get("beta", 0.0))[objective]
    expected = options.pop(term)
    assert all(abs(expected - other) > 1e-3 for other in options.values())

    loss = method.loss(x, y)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    signal = method.last_signal.get("kappa", method.last_signal.get("margin"))
    if name.startswith("gair"):
        assert method.last_signal["kappa"].tolist() == kappa
    else:  # PM_adv from the same train-mode forward that gives the loss, detached
        torch.testing.assert_close(signal.double(), torch.tensor(t["pm_adv"], dtype=torch.float64))
        assert not signal.requires_grad


@pytest.mark.parametrize(
    "name,objective,term", [case for case in WEIGHTED if case[0].startswith("mail")]
)
def test_official_mail_scales_by_three_without_normalisation(name, objective, term):
    model = make_model(torch.float64, gain=8.0)
    x, y = make_batch(torch.float64)
    method = methods.get(name, model, variant="official", **ATTACK)
    _, _, _, logits_nat, logits_adv = reference(method, x, y)
    t = per_example_terms(logits_nat, logits_adv, y)
    w = [3 * o for o in raw_weights(method, [], t["pm_adv"])]
    expected = placements(t, w, method.params.get("beta", 0.0))[objective][term]
    assert method.loss(x, y).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name,objective,term", [WEIGHTED[0], WEIGHTED[4]])  # κ and PM
def test_a_callable_scheme_weights_the_method_like_a_named_one(name, objective, term):
    model = make_model(torch.float64, gain=8.0)
    x, y = make_batch(torch.float64)
    method = methods.get(name, model, scheme=lambda signal: 1.0 + signal.double() ** 2, **ATTACK)
    _, _, kappa, logits_nat, logits_adv = reference(method, x, y)
    t = per_example_terms(logits_nat, logits_adv, y)
    omega = [1.0 + s**2 for s in (kappa if name.startswith("gair") else t["pm_adv"])]
    w = [len(omega) * o / sum(omega) for o in omega]
    assert max(w) - min(w) > 0.1  # the weights matter
    expected = placements(t, w, method.params.get("beta", 0.0))[objective][term]
    assert method.loss(x, y).item() == pytest.approx(expected, rel=1e-5)


def test_official_gair_trades_is_gair_rst():
    # GAIRAT Eq. 13 as the official GAIR-RST code computes it: CE(x) + β[w·KL(x_kl) + (1 − w)·KL(x_cw)],
    # w unnormalised; the paper's GAIR-TRADES weights CE(x) instead (Algorithm 5).
    model = make_model(torch.float64, gain=8.0)
    x, y = make_batch(torch.float64)
    method = methods.get("gair-trades", model, variant="official", **ATTACK)
    ref, x_kl, kappa, logits_nat, logits_kl = reference(method, x, y)
    p = method.params
    x_cw = GeometryAwareAttack(
        ref, eps=p["eps"], step_size=p["step_size"], steps=p["steps"], loss="cw", random_start=None
    )(x, y).adv
    logits_cw = ref(x_cw)
    w = raw_weights(method, kappa, [])
    beta = p["beta"]
    expected = _mean(
        [
            -math.log(_softmax(nat)[label]) + beta * (wi * _kl(kl, nat) + (1 - wi) * _kl(cw, nat))
            for nat, kl, cw, label, wi in zip(
                logits_nat.tolist(), logits_kl.tolist(), logits_cw.tolist(), y.tolist(), w
            )
        ]
    )
    paper = methods.get("gair-trades", copy.deepcopy(model), **ATTACK).loss(x, y).item()
    assert abs(paper - expected) > 1e-3
    assert method.loss(x, y).item() == pytest.approx(expected, rel=1e-5)


def test_official_trades_runs_three_forwards_with_the_same_loss_and_gradient():
    # The official TRADES code: f(x) for the CE, then f(x_adv) and f(x) again for the KL, all in train
    # mode. Loss and gradient equal the two-forward form; BatchNorm's running statistics see the
    # natural batch twice, in that order.
    model = make_model(torch.float64, gain=8.0)
    x, y = make_batch(torch.float64)
    attack = {k: v for k, v in ATTACK.items() if k != "burn_in_epochs"}
    _, x_adv, _, _, _ = reference(methods.get("trades", model, **attack), x, y)
    oracle = copy.deepcopy(model)
    for batch in (x, x_adv, x):
        oracle(batch)

    results = {}
    for variant in ("paper", "official"):
        net = copy.deepcopy(model)
        seen = []
        net[2].register_forward_hook(lambda module, _, __, seen=seen: seen.append(module.training))
        loss = methods.get("trades", net, variant=variant, **attack).loss(x, y)
        loss.backward()
        grads = [p.grad.clone() for p in net.parameters()]
        results[variant] = (loss.item(), grads, net[2].running_mean.clone(), sum(seen))
    (paper_loss, paper_grads, paper_mean, paper_calls) = results["paper"]
    (loss, grads, running_mean, calls) = results["official"]
    assert (paper_calls, calls) == (2, 3)  # train-mode forwards (the attack's run in eval mode)
    assert loss == pytest.approx(paper_loss, rel=1e-12)
    for g, g_paper in zip(grads, paper_grads):
        torch.testing.assert_close(g, g_paper)
    torch.testing.assert_close(running_mean, oracle[2].running_mean)
    assert not torch.allclose(running_mean, paper_mean)


# --- GAIR-FAT: labels, κ and examples stay aligned when some stop early ----------------------------------


def early_stopped_pgd(model, x, y, *, eps, alpha, steps, tau):
    """GAIRAT Algorithm 3, one example at a time (model in eval mode, as the attack runs it)."""
    model.eval()
    advs, kappas = [], []
    for xi, yi in zip(x, y):
        x_t, kappa, budget = xi.clone(), 0, tau
        for _ in range(steps):
            x_t.requires_grad_(True)
            logits = model(x_t[None])[0]
            wrong = int(logits.argmax()) != int(yi)
            if wrong and budget == 0:
                break
            if wrong:
                budget -= 1
            else:
                kappa += 1
            (grad,) = torch.autograd.grad(-logits.log_softmax(0)[yi], x_t)
            x_t = torch.min(
                torch.max(x_t.detach() + alpha * grad.sign(), xi - eps), xi + eps
            ).clamp(0, 1)
        advs.append(x_t.detach())
        kappas.append(kappa)
    model.train()
    return torch.stack(advs), kappas


@pytest.mark.parametrize("tau", [0, 1])
def test_gair_fat_keeps_labels_kappa_and_examples_aligned(tau):
    model = make_model(torch.float64, seed=3)
    x, y = make_batch(torch.float64, n=12, seed=4)
    steps = 6
    ref = copy.deepcopy(model)
    x_adv, kappa = early_stopped_pgd(ref, x, y, eps=0.3, alpha=0.1, steps=steps, tau=tau)
    assert 0 in kappa and any(0 < k < steps for k in kappa)  # some stop at once, some on the way

    omega = [(1 + math.tanh(0.0 + 5 * (1 - 2 * k / steps))) / 2 for k in kappa]
    ce = [-math.log(_softmax(row)[label]) for row, label in zip(ref(x_adv).tolist(), y.tolist())]
    expected = sum(o * c for o, c in zip(omega, ce)) / sum(omega)

    overrides = dict(
        eps=0.3, step_size=0.1, steps=steps, random_start=None, tau=tau, burn_in_epochs=0
    )
    method = methods.get("gair-fat", copy.deepcopy(model), **overrides)
    assert method.loss(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert method.last_signal["kappa"].tolist() == kappa

    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    shuffled = methods.get("gair-fat", copy.deepcopy(model), **overrides)
    assert shuffled.loss(x[perm], y[perm]).item() == pytest.approx(expected, rel=1e-5)
    assert shuffled.last_signal["kappa"].tolist() == [kappa[i] for i in perm.tolist()]


# --- Schedules and forwards ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fat", "gair-fat"])
def test_tau_schedule_follows_the_epoch(name):
    method = methods.get(name, make_model())
    for epoch, tau in [(0, 0), (39, 0), (40, 3), (69, 3), (70, 6), (119, 6), (5, 0)]:
        method.set_epoch(epoch)
        assert method.attack.tau == tau
    own = methods.get(
        name, make_model(), tau=lambda epoch: min(epoch // 10, 2)
    )  # FAT's own paper: 0 → 1 → 2
    own.set_epoch(25)
    assert own.attack.tau == 2
    assert methods.get(name, make_model(), tau=4).attack.tau == 4


def test_burn_in_and_lambda_schedule_follow_the_epoch():
    method = methods.get(
        "gairat", make_model(), burn_in_epochs=3, lam=lambda epoch: -1.0 if epoch < 5 else -2.0
    )
    seen = []
    for epoch in range(7):
        method.set_epoch(epoch)
        seen.append(
            (
                method.reweighting,
                method.weighting.scheme_params["lam"] if method.reweighting else None,
            )
        )
    assert seen == [(False, None)] * 3 + [(True, -1.0)] * 2 + [(True, -2.0)] * 2


@pytest.mark.parametrize(
    "name,variant,calls",
    [
        ("at", "paper", 1),
        ("gairat", "paper", 1),
        ("mail-at", "paper", 1),
        ("trades", "paper", 2),
        ("mart", "paper", 2),
        ("mail-trades", "paper", 2),
        ("gair-trades", "official", 3),
    ],
)
def test_batchnorm_sees_each_train_mode_forward_separately(name, variant, calls):
    model = make_model()
    x, y = make_batch()
    seen = []
    model[2].register_forward_hook(
        lambda module, inputs, output: seen.append((module.training, inputs[0].shape[0]))
    )
    method = methods.get(name, model, variant=variant)
    method.set_epoch(method.params.get("burn_in_epochs", 0))
    method.loss(x, y)
    assert [batch for training, batch in seen if training] == [8] * calls
    assert all(
        batch == 8 for _, batch in seen
    )  # the attack runs in eval mode, batch by batch as well


def test_defaults_follow_the_papers():
    model = make_model()
    expect = {
        "at": dict(random_start="uniform", attack_loss="ce"),
        "trades": dict(random_start="normal", attack_loss="kl", beta=6.0),
        "mart": dict(random_start="normal", attack_loss="ce", beta=5.0),
        "fat": dict(random_start="uniform", attack_loss="ce"),
        "gairat": dict(random_start="uniform", scheme="gairat", burn_in_epochs=60, lam=0.0),
        "gair-fat": dict(random_start="uniform", burn_in_epochs=60, lam=0.0),
        "gair-trades": dict(
            random_start="normal", attack_loss="kl", beta=6.0, burn_in_epochs=75, lam=-1.0
        ),
        "gair-mart": dict(random_start="normal", attack_loss="ce", beta=5.0, burn_in_epochs=75),
        "mail-at": dict(
            random_start="normal", scheme="mail", slope=10.0, bias=-0.5, burn_in_epochs=74
        ),
        "mail-trades": dict(attack_loss="kl", beta=5.0, slope=2.0, bias=0.0, burn_in_epochs=74),
        "mail-mart": dict(attack_loss="ce", beta=6.0, slope=2.0, bias=0.0, burn_in_epochs=74),
    }
    for name, values in expect.items():
        method = methods.get(name, model)
        assert (method.attack.eps, method.attack.step_size, method.attack.steps) == (
            8 / 255,
            2 / 255,
            10,
        )
        assert {k: method.params[k] for k in values} == values, name
        if method.weighting is not None:
            assert method.weighting.scheme.name == method.params["scheme"]


def test_overrides_reach_the_attack_and_the_scheme():
    method = methods.get(
        "mail-at", make_model(), eps=0.1, steps=3, slope=3.0, bias=0.1, scheme="step", alpha=0.3
    )
    assert (method.attack.eps, method.attack.steps) == (0.1, 3)
    assert method.weighting.scheme_params == {"alpha": 0.3, "bias": 0.1}
    linear = methods.get("gairat", make_model(), steps=4, scheme="gairat-linear")
    assert linear.weighting.scheme_params == {"steps": 4}  # the scheme's K is the attack's K


def test_margin_options_read_pm_nat_and_pm_dif():
    model = make_model(torch.float64, gain=8.0)
    x, y = make_batch(torch.float64)
    from instance_reweight import probabilistic_margin, probabilistic_margin_dif

    for margin in ("nat", "dif"):
        method = methods.get("mail-trades", model, margin=margin, **ATTACK)
        _, _, _, logits_nat, logits_adv = reference(method, x, y)
        method.loss(x, y)
        expected = (
            probabilistic_margin(logits_nat, y)
            if margin == "nat"
            else probabilistic_margin_dif(logits_nat, logits_adv, y)
        )
        torch.testing.assert_close(method.last_signal["margin"], expected)


def test_bad_inputs_raise_clearly():
    model = make_model()
    with pytest.raises(
        ValueError,
        match="Expected `name` to be one of 'at', 'trades'.*'mail-trades-awp', got 'gair'",
    ):
        methods.get("gair", model)
    with pytest.raises(TypeError, match="Expected `name` to be one of 'at'.*, got int 3"):
        methods.get(3, model)
    with pytest.raises(
        ValueError,
        match=r"Expected hyper-parameters of 'at' among \(attack_loss, clip, eps.*got beta",
    ):
        methods.get("at", model, beta=6.0)
    with pytest.raises(
        ValueError, match=r"among \(.*lam.*\), got lamda\. 'lamda': did you mean 'lam'\?$"
    ):
        methods.get("gairat", model, lamda=0.0)
    # other codes' words for ours: torchattacks' alpha, the official scripts' epsilon
    with pytest.raises(
        ValueError, match=r"'alpha': did you mean 'step_size'\? 'epsilon': did you mean 'eps'\?$"
    ):
        methods.get("at", model, alpha=0.01, epsilon=0.1)
    with pytest.raises(ValueError, match=r"got xyz\.$"):  # nothing close: no guess
        methods.get("at", model, xyz=1)
    with pytest.raises(ValueError, match="only 'gair-trades', 'mail-at'.*official-code variant"):
        methods.get("gairat", model, variant="official")
    with pytest.raises(ValueError, match="Expected `variant` to be one of 'paper', 'official'"):
        methods.get("mail-at", model, variant="code")
    with pytest.raises(ValueError, match="scheme reading `kappa`.*got 'mail'"):
        methods.get("gairat", model, scheme="mail")
    with pytest.raises(ValueError, match="normalize='none'"):
        methods.get("gair-trades", model, variant="official", normalize="batch")
    with pytest.raises(ValueError, match="λ parameter"):
        methods.get("gairat", model, scheme="gairat-linear", lam=1.0)
    with pytest.raises(ValueError, match="Expected `beta` to be a finite number >= 0"):
        methods.get("trades", model, beta=-1.0)
    with pytest.raises(ValueError, match="Expected `margin` to be one of"):
        methods.get("mail-at", model, margin="logit")
    with pytest.raises(ValueError, match="Expected `epoch`"):
        methods.get("at", model).set_epoch(-1)
    with pytest.raises(ValueError, match="Expected `tau`"):
        methods.get("fat", model, tau=lambda epoch: -1)


@pytest.mark.parametrize("name,variant", CASES)
def test_one_host_synchronisation_per_training_step(count_syncs, name, variant):
    model = make_model()
    x, y = make_batch()
    method = methods.get(name, model, variant=variant)
    for epoch in (0, method.params.get("burn_in_epochs", 0)):  # during and after the burn-in
        method.set_epoch(epoch)
        assert count_syncs(lambda: method.loss(x, y).backward()) == 1


# --- Every method is its definition: the module's table agrees with the entries --------------------------

_INPUTS = {"nat": "x", "adv": "x_adv", "nat_kl": "x", "cw": "x_cw"}
_PREFIX = {methods.Factor.ONE: "", methods.Factor.W: "w·", methods.Factor.ONE_MINUS_W: "(1 − w)·"}
_SIGNAL = {None: "—", "kappa": "κ", "margin": "PM"}


def table_row(definition):
    """The cells of a definition's row: attack, forwards, training loss, weight signal."""
    attack = f"{definition.attack['random_start']}, {definition.attack['attack_loss'].upper()}"
    return [
        attack + (", τ" if "tau" in definition.defaults else ""),
        ", ".join(_INPUTS[f] for f in definition.forwards),
        " + ".join(_PREFIX[factor] + term.value for term, factor in definition.terms.items()),
        _SIGNAL[definition.signal],
    ]


def docstring_table():
    """``{name cell: [other cells]}`` of the reStructuredText table in the module docstring."""
    lines = methods.__doc__.splitlines()
    border = next(i for i, line in enumerate(lines) if line.startswith("===="))
    starts = [
        i
        for i, c in enumerate(lines[border])
        if c == "=" and (i == 0 or lines[border][i - 1] == " ")
    ]
    end = next(i for i in range(border + 3, len(lines)) if lines[i].startswith("===="))
    rows = {}
    for line in lines[border + 3 : end]:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        rows[cells[0]] = cells[1:]
    return rows


def test_the_module_table_is_the_recipes():
    expected = {f"``{name}``": table_row(methods._METHODS[name]) for name in methods.names()}
    expected = {k: v for k, v in expected.items() if not k.endswith("-awp``")}
    for name, definition in methods._OFFICIAL.items():
        if (
            definition.forwards != methods._METHODS[name].forwards
            or definition.terms != methods._METHODS[name].terms
        ):
            expected[f"``{name}`` official"] = table_row(definition)
    assert docstring_table() == expected


def test_a_new_recipe_is_one_entry_and_a_bad_one_fails_at_definition():
    base = methods._METHODS["at"]
    # GAIRAT's rule on the boost too: the factors are data, the interpreter is the same.
    definition = methods.Definition(
        base.attack,
        ("nat", "adv"),
        {methods.Term.CE_ADV: methods.Factor.W, methods.Term.BOOST: methods.Factor.W},
        "kappa",
        methods._METHODS["gairat"].defaults,
    )
    model = make_model(torch.float64, gain=8.0)
    x, y = make_batch(torch.float64)
    method = methods.Method("gair-bce", model, definition, ATTACK)
    _, _, kappa, logits_nat, logits_adv = reference(method, x, y)
    t = per_example_terms(logits_nat, logits_adv, y)
    omega = raw_weights(method, kappa, [])
    w = [len(omega) * o / sum(omega) for o in omega]
    assert method.loss(x, y).item() == pytest.approx(_mean(_weighted(w, t["bce"])), rel=1e-5)
    assert method.weighted_terms == {methods.Term.CE_ADV, methods.Term.BOOST}

    with pytest.raises(ValueError, match="Expected forwards among .*got \\('adv', 'x_cw'\\)"):
        methods.Definition(base.attack, ("adv", "x_cw"), base.terms)
    with pytest.raises(ValueError, match="Expected a signal exactly when a term carries w"):
        methods.Definition(base.attack, ("adv",), {methods.Term.CE_ADV: methods.Factor.W})
    with pytest.raises(ValueError, match="Expected a signal exactly when a term carries w"):
        methods.Definition(base.attack, ("adv",), base.terms, "kappa")


# --- One API across the pieces: the user's loss, names, defaults, generators -------------------------------

SMOOTHING = 0.2


def smoothed_ce(logits, y):
    """ℓ(z, y) = (1 − s)·CE(z, y) + s·mean_k(−log p_k): label smoothing, from the definition."""
    out = []
    for row, label in zip(logits.tolist(), y.tolist()):
        log_p = [math.log(p) for p in _softmax(row)]
        out.append(-(1 - SMOOTHING) * log_p[label] - SMOOTHING * sum(log_p) / len(log_p))
    return out


@pytest.mark.parametrize(
    "name,objective,term",
    WEIGHTED + [("at", "at", "none"), ("trades", "trades", "none"), ("mart", "mart", "none")],
)
def test_base_loss_replaces_the_classification_loss_wherever_the_objective_has_ce(
    name, objective, term
):
    """ℓ in place of CE(x) and CE(x_adv), and of the CE part of MART's BCE = CE + boost; the KL
    terms, the attack and the weight's signal unchanged."""
    model = make_model(torch.float64, gain=8.0)
    x, y = make_batch(torch.float64)
    base_loss = nn.CrossEntropyLoss(reduction="none", label_smoothing=SMOOTHING)
    options = {k: v for k, v in ATTACK.items() if term != "none" or k != "burn_in_epochs"}
    method = methods.get(name, model, base_loss=base_loss, **options)
    assert method.base_loss is base_loss
    _, _, kappa, logits_nat, logits_adv = reference(method, x, y)
    t = per_example_terms(logits_nat, logits_adv, y)
    boost = [b - c for b, c in zip(t["bce"], t["ce_adv"])]
    omega = raw_weights(method, kappa, t["pm_adv"]) if method.weighting else [1.0] * len(kappa)
    w = [len(omega) * o / sum(omega) for o in omega]
    t["ce_nat"], t["ce_adv"] = smoothed_ce(logits_nat, y), smoothed_ce(logits_adv, y)
    t["bce"] = [c + b for c, b in zip(t["ce_adv"], boost)]
    expected = placements(t, w, method.params.get("beta", 0.0))[objective][term]
    plain = methods.get(name, copy.deepcopy(model), **options).loss(x, y).item()
    assert abs(expected - plain) > 1e-3  # the user's loss changes the objective
    assert method.loss(x, y).item() == pytest.approx(expected, rel=1e-6)


def test_base_loss_is_refused_when_it_reduces_or_is_not_callable():
    with pytest.raises(ValueError, match="reduction='mean'; build it with reduction='none'"):
        methods.get("gairat", make_model(), base_loss=nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match="Expected `base_loss` to be callable, got str"):
        methods.get("gairat", make_model(), base_loss="ce")
    x, y = make_batch()
    method = methods.get("at", make_model(), base_loss=lambda z, t: z.sum(), steps=1)
    with pytest.raises(ValueError, match="Expected `base_loss` to return one loss per example"):
        method.loss(x, y)


def test_names_are_case_insensitive_and_near_misses_get_a_suggestion():
    model = make_model()
    assert methods.get("MAIL-AT", model).name == "mail-at"
    assert methods.get("Gair-Trades", model, variant="official").name == "gair-trades"
    assert methods.get("gairat", model, scheme="GAIRAT-Sigmoid").weighting.scheme.name == (
        "gairat-sigmoid"
    )
    with pytest.raises(ValueError, match="got 'mail_trades'; did you mean 'mail-trades'\\?"):
        methods.get("mail_trades", model)
    with pytest.raises(ValueError, match="got 'gairat_linear'; did you mean 'gairat-linear'\\?"):
        methods.get("gairat", model, scheme="gairat_linear")
    with pytest.raises(ValueError, match="got 'pgd'\\.$"):  # nothing close: no suggestion
        methods.get("pgd", model)


def test_a_scheme_and_the_method_that_introduced_it_share_their_defaults():
    """The one rule: a scheme's defaults are its method's (GAIRAT Table 1's λ = 0, MAIL-AT's γ, β)."""
    from instance_reweight import InstanceReweightedLoss, InstanceWeighting

    for scheme, method in (("gairat", "gairat"), ("mail", "mail-at")):
        loss = InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), scheme)
        got = methods.get(method, make_model())
        assert (
            loss.scheme_params
            == got.weighting.scheme_params
            == InstanceWeighting(scheme).scheme_params
        ), scheme
    assert methods.get("gair-trades", make_model()).params["lam"] == -1.0  # its own recipe


def test_the_scheme_reads_the_attack_steps_and_refuses_a_kappa_beyond_them():
    method = methods.get("gairat", make_model(), steps=4, burn_in_epochs=0)
    assert method.attack.steps == method.weighting.scheme_params["steps"] == 4
    from instance_reweight import InstanceReweightedLoss

    # The pieces do not see the attack: a κ beyond the loss's K is refused.
    criterion = InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat", steps=4)
    logits, y = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"Expected `kappa` in \[0, 4\].*pass the attack's number"):
        criterion(logits, y, kappa=torch.tensor([0, 10]))


@pytest.mark.parametrize("name,variant", [("mail-at", "paper"), ("gair-trades", "official")])
def test_a_generator_makes_a_method_reproducible_without_the_global_seed(name, variant):
    """Same generator seed: the same attack start, hence the same loss; the global RNG untouched."""
    x, y = make_batch()
    losses = []
    for _ in range(2):
        method = methods.get(
            name, make_model(), variant=variant, burn_in_epochs=0,
            generator=torch.Generator().manual_seed(7),
        )  # fmt: skip
        state = torch.get_rng_state()
        losses.append(method.loss(x, y))
        assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(losses[0], losses[1])
    other = methods.get(name, make_model(), variant=variant, burn_in_epochs=0,
                        generator=torch.Generator().manual_seed(8)).loss(x, y)  # fmt: skip
    assert not torch.equal(other, losses[0])
