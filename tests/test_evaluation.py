"""Robustness evaluation: every attack reaches the known answer on models where it is known exactly.

For a linear classifier f(x) = Wx + b the worst case inside B_ε[x] ∩ [0, 1]^d has a closed form: each
pairwise margin (w_y − w_j)·x' + b_y − b_j is smallest at the box corner that takes, per coordinate,
the lower end where w_y − w_j > 0 and the upper end elsewhere. An example is robust iff every such
minimum is positive. The oracle below computes it in float64, one example and one class at a time.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from instance_reweight import evaluation
from instance_reweight.evaluation import (
    LineSearchMomentumPGD,
    evaluate,
    robust_accuracy,
    robust_masks,
)

EPS = 0.05
SHAPE = (3, 4, 4)  # image batches: AutoAttack wants (N, C, H, W)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is as fast as two and leaves the other core to the rest of the suite."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _linear(num_classes: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE), num_classes))


class _Saturated(nn.Module):
    """Gradient masking by construction: logits × 1e4, so softmax saturates and CE gradients are 0."""

    def __init__(self, inner: nn.Module, scale: float = 1e4) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.inner(x)


def _worst_margin(linear: nn.Linear, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """min over x' in B_eps[x] ∩ [0, 1]^d and j != y of (w_y − w_j)·x' + b_y − b_j, per example."""
    w, b = linear.weight.detach().double(), linear.bias.detach().double()
    out = []
    for xi, yi in zip(x.flatten(1).double(), y.tolist()):
        low, high = (xi - eps).clamp(0, 1), (xi + eps).clamp(0, 1)
        worst = math.inf
        for j in range(w.shape[0]):
            if j != yi:
                a = w[yi] - w[j]
                worst = min(
                    worst, float(torch.where(a > 0, a * low, a * high).sum() + b[yi] - b[j])
                )
        out.append(worst)
    return torch.tensor(out, dtype=torch.float64)


def _data(model: nn.Sequential, n: int, gap: float, seed: int = 1, eps: float = EPS):
    """Inputs, labels (some wrong) and the oracle robust mask, kept where the answer is clear-cut.

    With two classes every sign-gradient ascent reaches the worst corner, so ``gap`` only rules out
    float32 ties. With ten, CE's ascent direction Σ_j p_j (w_j − w_y) mixes classes, so an attack
    reaches the worst pair for sure only when the answer is not within ``gap`` of the boundary.
    """
    torch.manual_seed(seed)
    x = torch.rand(n, *SHAPE)
    with torch.no_grad():
        y = model(x).argmax(1)
    wrong = torch.rand(n) < 0.15
    y = torch.where(wrong, (y + 1) % model[1].out_features, y)
    margin = _worst_margin(model[1], x, y, eps)
    keep = margin.abs() > gap
    return x[keep], y[keep], margin[keep] > 0


@pytest.fixture(scope="module", params=[2, 10], ids=["2-classes", "10-classes"])
def linear_case(request):
    model = _linear(request.param)
    x, y, robust = _data(model, 160, gap=1e-4 if request.param == 2 else 0.1)
    assert 0.2 < robust.float().mean() < 0.8  # both outcomes well represented
    return model, x, y, robust


PGD_FAMILY = ["pgd20", "pgd100", "pgd+", "cw", "pgd20-ls", "lm-pgd"]


def test_every_attack_reaches_the_closed_form(linear_case):
    model, x, y, robust = linear_case
    torch.manual_seed(0)
    masks = robust_masks(model, (x, y), attacks=["natural", *PGD_FAMILY], eps=EPS, batch_size=64)
    with torch.no_grad():
        natural = model(x).argmax(1) == y
    assert torch.equal(masks["natural"], natural)
    for name in PGD_FAMILY:
        assert torch.equal(masks[name], robust), name


def test_saturated_logits_fool_pgd_but_not_the_logit_scaled_attack(linear_case):
    base, x, y, robust = linear_case
    torch.manual_seed(0)
    masks = robust_masks(_Saturated(base), (x, y), attacks=["pgd20", "pgd20-ls", "cw"], eps=EPS)
    fooled = masks["pgd20"] & ~robust  # CE gradients underflow to 0: PGD never leaves its start
    assert fooled.sum() >= 20 and not (robust & ~masks["pgd20"]).any()
    assert torch.equal(masks["pgd20-ls"], robust)
    assert torch.equal(masks["cw"], robust)  # a margin loss does not saturate


class _Band(nn.Module):
    """Class 1 only inside the band 0.42 < x < 0.48; a third, never-winning logit equals x − 10,
    so an attack that maximises it walks x upward through the band at a constant pace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x[:, 0]
        return torch.stack([torch.zeros_like(u), 1 - (u - 0.45).abs() / 0.03, u - 10], dim=1)


def _band_oracle(x0: float, *, eps: float, step: float, steps: int, every_iterate: bool) -> bool:
    """PGD from x0 (no random start, gradient +1): x_t = min(x0 + t·step, x0 + eps)."""
    iterates = [min(x0 + t * step, x0 + eps) for t in range(steps + 1)]
    checked = iterates if every_iterate else [x0, iterates[-1]]
    return all(not 0.42 < v < 0.48 for v in checked)


def test_pgd_plus_counts_every_iterate():
    x0 = [0.10, 0.30, 0.33, 0.44, 0.46, 0.50]
    x, y = torch.tensor(x0)[:, None], torch.zeros(len(x0), dtype=torch.long)
    common = dict(steps=6, step_size=0.05, restarts=1, random_start=None, loss=lambda z, _: z[:, 2])
    masks = robust_masks(
        _Band(),
        (x, y),
        attacks=["pgd20", "pgd+"],
        eps=0.25,
        clip=None,
        options={"pgd20": common, "pgd+": common},
    )
    for name, every in [("pgd20", False), ("pgd+", True)]:
        expected = [_band_oracle(v, eps=0.25, step=0.05, steps=6, every_iterate=every) for v in x0]
        assert masks[name].tolist() == expected, name
    assert masks["pgd+"].tolist() != masks["pgd20"].tolist()  # the band is crossed, then left


def _mlp() -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(48, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)
    )
    model[2].running_mean.uniform_(-0.3, 0.3)
    return model


def test_pgd_plus_never_above_pgd20_on_the_same_paths():
    """Same seed, steps and step: PGD+'s first restart is PGD-20's run, then it only removes points."""
    model = _mlp()
    torch.manual_seed(4)
    x, y = torch.rand(96, *SHAPE), torch.randint(0, 10, (96,))
    same = dict(steps=20, step_size=EPS / 4)
    torch.manual_seed(5)
    pgd20 = robust_masks(model, (x, y), attacks="pgd20", eps=EPS)["pgd20"]
    torch.manual_seed(5)
    plus = robust_masks(model, (x, y), attacks="pgd+", eps=EPS, options={"pgd+": same})["pgd+"]
    assert not (plus & ~pgd20).any()
    assert plus.sum() <= pgd20.sum()


def test_lm_pgd_iterates_match_the_momentum_recursion():
    """A monotone loss (gradient sign +1): the line search takes α_max, so
    v_{t+1} = γ v_t + α_max and x_{t+1} = min(x_t + v_{t+1}, x0 + ε); κ counts iterates outside the band."""
    x0 = torch.tensor([[0.10], [0.30], [0.37]])
    attack = LineSearchMomentumPGD(
        _Band(),
        eps=0.3,
        step_size=0.02,
        steps=8,
        min_step=0.01,
        momentum=0.8,
        random_start=None,
        clip=None,
        loss=lambda z, _: z[:, 2],
    )
    adv, kappa = attack(x0, torch.zeros(3, dtype=torch.long))
    for i, start in enumerate(x0[:, 0].tolist()):
        v, xt, count = 0.0, start, 0
        for _ in range(8):
            count += not 0.42 < xt < 0.48
            v = 0.8 * v + 0.02
            xt = min(xt + v, start + 0.3)
        assert adv[i, 0].item() == pytest.approx(xt, abs=1e-6)
        assert kappa[i].item() == count


@pytest.mark.parametrize("target", [0.212, 0.236, 0.3])
def test_lm_pgd_line_search_takes_the_best_candidate(target):
    """One step from 0.2 with a loss peaked at ``target``: the step is the candidate in
    linspace(α_min, α_max, 5) closest to target − 0.2."""
    attack = LineSearchMomentumPGD(
        _Band(),
        eps=0.1,
        step_size=0.05,
        steps=1,
        min_step=0.01,
        line_search=5,
        random_start=None,
        clip=None,
        loss=lambda z, _: -((z[:, 2] + 10 - target) ** 2),
    )
    adv, _ = attack(torch.tensor([[0.2]]), torch.tensor([0]))
    candidates = [0.01 + k * 0.01 for k in range(5)]
    best = min(candidates, key=lambda a: abs(0.2 + a - target))
    assert adv.item() == pytest.approx(0.2 + best, abs=1e-6)


def test_lm_pgd_needs_a_per_example_loss():
    attack = LineSearchMomentumPGD(
        nn.Linear(2, 2), eps=0.1, steps=2, loss=lambda z, y: F.cross_entropy(z, y)
    )
    with pytest.raises(ValueError, match=r"one value per example"):
        attack(torch.rand(4, 2), torch.zeros(4, dtype=torch.long))


def test_subsets_and_dataloaders_give_the_oracle_in_data_order(linear_case):
    model, x, y, robust = linear_case
    loader = DataLoader(TensorDataset(x, y), batch_size=7)
    masks = robust_masks(
        model, loader, attacks=["natural", "pgd20"], eps=EPS, num_examples={"pgd20": 30}
    )
    assert masks["natural"].shape == (len(y),)
    assert torch.equal(masks["pgd20"], robust[:30])


def test_stops_reading_data_once_every_subset_is_done():
    model = _linear(2)
    x, y = torch.rand(12, *SHAPE), torch.zeros(12, dtype=torch.long)

    def batches():
        yield x[:4], y[:4]
        yield x[4:8], y[4:8]
        raise AssertionError("read past num_examples")

    acc = evaluate(
        model, batches(), attacks=["natural", "pgd20"], eps=EPS, num_examples=6, progress=False
    )
    assert set(acc) == {"natural", "pgd20"}


def test_protocol_settings_follow_the_papers():
    gairat = evaluation.settings(protocol="gairat")
    assert gairat["eps"] == 0.031
    assert gairat["attacks"]["pgd20"]["step_size"] == pytest.approx(0.031 / 4)
    plus = gairat["attacks"]["pgd+"]
    assert [plus[k] for k in ("restarts", "steps", "step_size", "every_iterate")] == [
        5,
        40,
        0.01,
        True,
    ]
    mail = evaluation.settings(protocol="mail")
    assert mail["eps"] == 0.031
    assert mail["num_examples"]["aa"] == 1000 and mail["num_examples"]["pgd100"] is None
    assert [mail["attacks"]["pgd100"][k] for k in ("steps", "step_size")] == [100, 0.003]
    robustbench = evaluation.settings(protocol="robustbench")
    assert robustbench["eps"] == 8 / 255
    for preset in (gairat, mail, robustbench, evaluation.settings()):
        assert {"natural", "pgd20", "pgd20-ls", "aa"} <= set(preset["attacks"])  # masking shows


def test_arguments_override_the_protocol():
    s = evaluation.settings(
        protocol="mail",
        attacks=["pgd100", "aa"],
        eps=8 / 255,
        options={"pgd100": {"step_size": 0.002}},
        num_examples={"aa": 50},
    )
    assert s["eps"] == 8 / 255 and list(s["attacks"]) == ["pgd100", "aa"]
    assert s["attacks"]["pgd100"]["step_size"] == 0.002
    assert s["num_examples"] == {"pgd100": None, "aa": 50}


def test_protocol_eps_is_the_one_attacked():
    model = _linear(2)
    x, y, robust = _data(model, 96, gap=1e-4, eps=0.031)
    masks = robust_masks(model, (x, y), attacks="pgd20", protocol="gairat")
    assert torch.equal(masks["pgd20"], robust)
    at_eps = _worst_margin(model[1], x, y, EPS) > 0
    assert not torch.equal(robust, at_eps)  # the radius matters here


def test_mode_and_flags_restored_also_on_error():
    model = _mlp().train()
    model[1].eval()
    model[4].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    stats = model[2].running_mean.clone()
    x = torch.rand(8, *SHAPE)
    evaluate(
        model,
        (x, torch.randint(0, 10, (8,))),
        attacks=["natural", "pgd20"],
        eps=EPS,
        progress=False,
    )
    with pytest.raises(ValueError, match="lie in"):
        evaluate(model, (x, torch.full((8,), 12)), attacks=["pgd20"], eps=EPS, progress=False)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(model[2].running_mean, stats)
    assert all(p.grad is None for p in model.parameters())


def test_runs_under_no_grad_and_inference_mode(linear_case):
    model, x, y, robust = linear_case
    with torch.no_grad():
        assert torch.equal(robust_masks(model, (x, y), attacks="cw", eps=EPS)["cw"], robust)
    with torch.inference_mode():
        assert torch.equal(robust_masks(model, (x, y), attacks="cw", eps=EPS)["cw"], robust)


def test_float32_even_under_autocast_and_for_float64_data():
    model = _linear(10)
    dtypes = []
    model.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    x = torch.rand(6, *SHAPE, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        evaluate(
            model,
            (x, torch.zeros(6, dtype=torch.long)),
            attacks=["natural", "pgd20"],
            progress=False,
        )
    assert set(dtypes) == {torch.float32}
    with pytest.raises(ValueError, match="float32 model"):
        evaluate(model.double(), (x, torch.zeros(6, dtype=torch.long)), attacks="natural")


def test_results_are_json_serialisable():
    model = _linear(10)
    x, y = torch.rand(5, *SHAPE), torch.randint(0, 10, (5,))
    acc = evaluate(model, (x, y), attacks=["natural", "cw"], progress=False)
    assert json.loads(json.dumps(acc)) == acc
    assert all(type(v) is float for v in acc.values())
    assert type(robust_accuracy(model, x, y, attack="pgd20", steps=2)) is float


def test_plain_progress_line_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    model = _linear(2)
    x, y = torch.rand(6, *SHAPE), torch.zeros(6, dtype=torch.long)
    evaluate(model, (x, y), attacks="natural", batch_size=3)
    assert "evaluate: 2/2 batches" in capsys.readouterr().err
    evaluate(model, (x, y), attacks="natural", batch_size=3, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(attacks=["pgd"]), ValueError, r"one of 'natural', 'pgd20'.*'aa', got 'pgd'"),
        (dict(attacks=[]), ValueError, "at least one attack"),
        (
            dict(protocol="madry"),
            ValueError,
            r"'gairat', 'mail', 'robustbench', 'robustbench-l2', got 'madry'",
        ),
        (dict(eps=-0.1), ValueError, r"`eps` to be a finite number > 0"),
        (dict(eps=0.0), ValueError, r"`eps` to be a finite number > 0"),
        (dict(eps=8), ValueError, "8/255"),
        (dict(eps="8/255"), TypeError, "number"),
        (
            dict(options={"pgd20": {"stepsize": 0.1}}),
            ValueError,
            r"among \[.*'step_size'.*\], got \['stepsize'\]",
        ),
        (dict(options={"cw": {"steps": 5}}), ValueError, "attacks run"),
        (dict(options={"natural": {"steps": 5}}), ValueError, "among none"),
        (dict(options={"pgd20": {"restarts": 0}}), ValueError, "restarts"),
        (dict(options={"pgd20-ls": {"alphas": ()}}), ValueError, "alphas"),
        (dict(num_examples=0), ValueError, "num_examples"),
        (dict(clip=(1.0, 0.0)), ValueError, "low < high"),
        (dict(batch_size=0), ValueError, "batch_size"),
    ],
)
def test_bad_settings_raise(kwargs, error, match):
    model = _linear(2)
    x, y = torch.rand(4, *SHAPE), torch.zeros(4, dtype=torch.long)
    kwargs = {"attacks": ["natural", "pgd20", "pgd20-ls"], **kwargs}
    with pytest.raises(error, match=match):
        evaluate(model, (x, y), progress=False, **kwargs)


@pytest.mark.parametrize(
    "data, error, match",
    [
        (torch.rand(4, *SHAPE), TypeError, r"\(x, y\) pair"),
        ({"x": torch.rand(4, *SHAPE)}, TypeError, r"\(x, y\) pair"),
        (7, TypeError, r"\(x, y\) pair"),
        ([torch.rand(4, *SHAPE)], TypeError, "each batch"),
        ((torch.rand(4, *SHAPE), torch.zeros(3, dtype=torch.long)), ValueError, "same N"),
        ((torch.rand(4, *SHAPE), torch.zeros(4)), TypeError, "integer class indices"),
        (
            (torch.randint(0, 2, (4, *SHAPE)), torch.zeros(4, dtype=torch.long)),
            TypeError,
            "floating-point",
        ),
        ((torch.rand(4, *SHAPE) + 1, torch.zeros(4, dtype=torch.long)), ValueError, "inside clip"),
        (
            (torch.full((4, *SHAPE), math.nan), torch.zeros(4, dtype=torch.long)),
            ValueError,
            "finite",
        ),
        (
            (torch.rand(0, *SHAPE), torch.zeros(0, dtype=torch.long)),
            ValueError,
            "at least one example",
        ),
    ],
)
def test_bad_data_raises(data, error, match):
    with pytest.raises(error, match=match):
        evaluate(_linear(2), data, attacks="natural", progress=False)


def test_missing_autoattack_is_named_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    calls = []
    model = _linear(10)
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ImportError, match=r"pip install 'instance-reweight\[evaluation\]'"):
        evaluate(
            model,
            (torch.rand(4, *SHAPE), torch.zeros(4, dtype=torch.long)),
            attacks=["natural", "aa"],
        )
    assert calls == []


@pytest.mark.slow
def test_autoattack_reaches_the_closed_form_where_apgd_ce_is_masked():
    pytest.importorskip(
        "pyautoattack",
        reason="AutoAttack needs the extra: pip install 'instance-reweight[evaluation]'",
    )
    model = _linear(10)
    x, y, robust = _data(model, 120, gap=0.1)
    rng = torch.get_rng_state()
    plain = robust_masks(model, (x, y), attacks="apgd-ce", eps=EPS)["apgd-ce"]
    assert torch.equal(torch.get_rng_state(), rng)  # AutoAttack's reseeding does not leak out
    assert torch.equal(plain, robust)
    masks = robust_masks(_Saturated(model), (x, y), attacks=["apgd-ce", "aa"], eps=EPS)
    assert masks["apgd-ce"].sum() > robust.sum() + 10  # CE-based: fooled by the saturation
    assert torch.equal(masks["aa"], robust)  # the DLR and black-box attacks are not


@pytest.mark.parametrize(
    "model, x, kwargs, match",
    [
        (_linear(2), torch.rand(4, *SHAPE), {}, "at least 4 classes"),
        (nn.Linear(5, 10), torch.rand(4, 5), {}, r"\(N, C, H, W\)"),
        (_linear(10), torch.rand(4, *SHAPE), {"clip": (0.0, 2.0)}, r"clip=\(0.0, 1.0\)"),
    ],
)
def test_autoattack_bad_settings_raise(model, x, kwargs, match):
    pytest.importorskip(
        "pyautoattack",
        reason="AutoAttack needs the extra: pip install 'instance-reweight[evaluation]'",
    )
    with torch.no_grad():
        y = model(x).argmax(1)  # correctly classified, so AutoAttack has work to do
    with pytest.raises(ValueError, match=match):
        robust_masks(model, (x, y), attacks="aa", eps=EPS, **kwargs)


@pytest.mark.parametrize("height", [1, 4])
def test_autoattack_l2_square_on_small_images_is_refused_before_it_runs(height):
    """Square's ℓ2 start tiles an image in blocks of height // 5 pixels: inside AutoAttack a
    ZeroDivisionError below 5; refused with the subset that leaves Square out."""
    pytest.importorskip(
        "pyautoattack",
        reason="AutoAttack needs the extra: pip install 'instance-reweight[evaluation]'",
    )
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * height * 4, 10))
    x = torch.rand(4, 3, height, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    with pytest.raises(ValueError, match=rf"at least 5 pixels high.*got {height}.*'apgd-ce'"):
        robust_masks(model, (x, y), attacks="aa", eps=0.5, norm="l2")
    subset = {"aa": {"version": "custom", "attacks": ["apgd-ce", "apgd-t"]}}
    masks = robust_masks(model, (x, y), attacks="aa", eps=0.5, norm="l2", options=subset)
    assert masks["aa"].shape == (4,)


def test_lm_pgd_shares_the_attack_checks_and_loop():
    """LM-PGD only changes the step rule: bad inputs are reported as GeometryAwareAttack reports them."""
    attack = LineSearchMomentumPGD(nn.Linear(4, 3), eps=0.1, steps=3)
    with pytest.raises(ValueError, match=r"inside clip=\(0, 1\)"):
        attack(torch.full((2, 4), 2.0), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        attack(torch.rand(2, 4), torch.tensor([0, 7]))
