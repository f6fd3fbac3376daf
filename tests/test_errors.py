"""The bad-input catalogue: every row raises the documented exception with the message in docs/errors.md.

`python tests/test_errors.py > docs/errors.md` regenerates the page from these cases.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Type

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import instance_reweight as ir

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def _attack(model: Optional[nn.Module] = None, **kwargs) -> ir.GeometryAwareAttack:
    torch.manual_seed(0)
    options = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 10, **kwargs}
    return ir.GeometryAwareAttack(model if model is not None else nn.Linear(4, 3), **options)


def _x() -> torch.Tensor:
    return torch.full((2, 4), 0.5)


def _y() -> torch.Tensor:
    return torch.tensor([0, 2])


def _ce() -> nn.Module:
    return nn.CrossEntropyLoss(reduction="none")


def _gairat(**kwargs) -> ir.InstanceReweightedLoss:
    return ir.InstanceReweightedLoss(_ce(), "gairat", steps=10, **kwargs)


class _NoGrad(nn.Module):
    """A model whose forward cuts the graph: its logits do not reach the input."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        with torch.no_grad():
            return self.linear(x)


class _NaNGradient(nn.Module):
    """Finite logits, NaN input gradient at x = 0.5: √|x − 0.5| has an infinite slope there."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) + 0 * (x - 0.5).abs().sqrt().sum(1, keepdim=True)


def _moved_after_building(attack: ir.GeometryAwareAttack, device: str) -> ir.GeometryAwareAttack:
    attack.model.to(device)
    return attack


def _awp_under_inference_mode() -> None:
    awp = ir.AdversarialWeightPerturbation(nn.Linear(4, 3), gamma=5e-3)
    with torch.inference_mode(), awp.perturbed(lambda m: m(_x()).sum()):
        pass


def _step_without_gradients() -> None:
    model = nn.Linear(4, 3)
    with torch.no_grad():
        ir.methods.get("at", model).step(_x(), _y(), torch.optim.SGD(model.parameters(), lr=0.1))


def _backward_inside(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    losses = _ce()(logits, y)
    losses.sum().backward()
    return losses


def _burn_in() -> ir.BurnInScheduler:
    return ir.BurnInScheduler(_gairat(), burn_in_epochs=2)


def _state(**values) -> dict:
    return {"last_epoch": 3, "burn_in_epochs": 2, "lam": -1.0, **values}


def _mail_signal(scheme) -> torch.Tensor:
    return ir.InstanceWeighting(scheme)(margin=torch.tensor([0.5, -0.5]))


class _Scores(nn.Module):
    """A model that returns something other than an (N, C) tensor."""

    def __init__(self, output: Callable[[torch.Tensor], object]) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.output = output

    def forward(self, x):
        return self.output(self.linear(x))


Case = Tuple[str, str, Type[Exception], Callable[[], object]]

CASES: List[Case] = [
    (
        "Inputs",
        "NaN or Inf in `x`",
        ValueError,
        lambda: _attack()(torch.tensor([[0.5, float("nan"), 0.5, 0.5]]), _y()[:1]),
    ),
    ("Inputs", "`x` outside `clip`", ValueError, lambda: _attack()(_x() * 255, _y())),
    ("Inputs", "`x` of an integer dtype", TypeError, lambda: _attack()((_x() * 255).long(), _y())),
    ("Inputs", "labels out of range", ValueError, lambda: _attack()(_x(), torch.tensor([0, 3]))),
    ("Inputs", "labels of the wrong shape", ValueError, lambda: _attack()(_x(), _y()[:, None])),
    ("Inputs", "labels of a float dtype", TypeError, lambda: _attack()(_x(), _y().float())),
    (
        "Inputs",
        "a `generator` that is not a torch.Generator",
        TypeError,
        lambda: _attack(generator=0),
    ),
    (
        "Inputs",
        "labels out of range, with `steps=0`",
        ValueError,
        lambda: _attack(steps=0)(_x(), torch.tensor([0, 3])),
    ),
    (
        "Inputs",
        "`x` in another dtype than the model",
        TypeError,
        lambda: _attack()(_x().double(), _y()),
    ),
    (
        "Inputs",
        "`x` on the meta device",
        ValueError,
        lambda: _attack()(_x().to("meta"), _y()),
    ),
    (
        "Inputs",
        "labels out of range (margin)",
        ValueError,
        lambda: ir.probabilistic_margin(torch.zeros(2, 3), torch.tensor([0, 5])),
    ),
    (
        "Model",
        "NaN or Inf in the logits (attack)",
        ValueError,
        lambda: _attack(_Scores(lambda z: z * float("inf")))(_x(), _y()),
    ),
    (
        "Model",
        "NaN or Inf in the logits (margin)",
        ValueError,
        lambda: ir.probabilistic_margin(torch.full((2, 3), float("nan")), _y()),
    ),
    (
        "Model",
        "an output that is not a tensor",
        TypeError,
        lambda: _attack(_Scores(lambda z: (z, z)))(_x(), _y()),
    ),
    (
        "Model",
        "an output that is not (N, C)",
        ValueError,
        lambda: _attack(_Scores(lambda z: z.sum(1)))(_x(), _y()),
    ),
    (
        "Model",
        "integer logits",
        TypeError,
        lambda: _attack(_Scores(lambda z: z.round().long()))(_x(), _y()),
    ),
    (
        "Model",
        "a forward that cuts the graph (`torch.no_grad` inside)",
        ValueError,
        lambda: _attack(_NoGrad())(_x(), _y()),
    ),
    (
        "Model",
        "a NaN gradient with respect to the input",
        ValueError,
        lambda: _attack(_NaNGradient(), random_start=None)(_x(), _y()),
    ),
    (
        "Model",
        "a model on another device than `x`",
        ValueError,
        lambda: _moved_after_building(_attack(), "meta")(_x(), _y()),
    ),
    (
        "Model",
        "a lazy module before its first forward",
        ValueError,
        lambda: _attack(nn.Sequential(nn.LazyLinear(3))),
    ),
    (
        "Model",
        "a model on the meta device",
        ValueError,
        lambda: _attack(nn.Linear(4, 3).to("meta")),
    ),
    ("Attack options", "`eps` < 0", ValueError, lambda: _attack(eps=-0.1)),
    (
        "Attack options",
        "a pixel-scale `eps` (8 for images in [0, 1]) — the attack",
        ValueError,
        lambda: _attack(eps=8.0),
    ),
    (
        "Attack options",
        "a pixel-scale `eps` — a method",
        ValueError,
        lambda: ir.methods.get("gairat", nn.Linear(4, 3), eps=8.0),
    ),
    (
        "Attack options",
        "a pixel-scale `eps` — an evaluation",
        ValueError,
        lambda: ir.evaluation.settings(eps=8.0),
    ),
    ("Attack options", "`eps` = inf", ValueError, lambda: _attack(eps=math.inf)),
    ("Attack options", "`eps` as a string", TypeError, lambda: _attack(eps="0.1")),
    ("Attack options", "`steps` as a float", TypeError, lambda: _attack(steps=2.0)),
    ("Attack options", "`step_size` <= 0", ValueError, lambda: _attack(step_size=0.0)),
    (
        "Attack options",
        "`steps` < 0",
        ValueError,
        lambda: ir.GeometryAwareAttack(nn.Linear(4, 3), eps=0.1, step_size=0.1, steps=-1),
    ),
    ("Attack options", "`tau` < 0", ValueError, lambda: _attack(tau=-1)),
    ("Attack options", "an unknown attack loss", ValueError, lambda: _attack(loss="mse")),
    (
        "Attack options",
        "the attack loss as the string the message uses for a callable",
        ValueError,
        lambda: _attack(loss="a callable (logits_adv, y) -> loss"),
    ),
    (
        "Attack options",
        '`random_start="None"` (a string, not None)',
        ValueError,
        lambda: _attack(random_start="None"),
    ),
    (
        "Attack options",
        "LM-PGD's `min_step` as a string",
        TypeError,
        lambda: ir.evaluation.LineSearchMomentumPGD(nn.Linear(4, 3), eps=0.1, min_step="0.01"),
    ),
    (
        "Attack options",
        "LM-PGD's `momentum` as a string",
        TypeError,
        lambda: ir.evaluation.LineSearchMomentumPGD(nn.Linear(4, 3), eps=0.1, momentum="0.8"),
    ),
    (
        "Attack options",
        "an attack loss that returns a Python float",
        TypeError,
        lambda: _attack(loss=lambda logits, y: 1.0)(_x(), _y()),
    ),
    (
        "Attack options",
        "an attack loss that returns (N, C)",
        ValueError,
        lambda: _attack(loss=lambda logits, y: logits)(_x(), _y()),
    ),
    (
        "Attack options",
        "an attack loss of an integer dtype",
        TypeError,
        lambda: _attack(loss=lambda logits, y: logits.argmax(1))(_x(), _y()),
    ),
    (
        "Loss",
        "a torch loss that reduces",
        ValueError,
        lambda: ir.InstanceReweightedLoss(nn.CrossEntropyLoss(), "gairat"),
    ),
    (
        "Loss",
        "a base loss that returns a scalar",
        ValueError,
        lambda: ir.InstanceReweightedLoss(lambda z, y: _ce()(z, y).mean(), "gairat")(
            torch.zeros(2, 3), _y(), kappa=_y()
        ),
    ),
    (
        "Loss",
        "a base loss that returns (N, C)",
        ValueError,
        lambda: ir.InstanceReweightedLoss(lambda z, y: z, "gairat")(
            torch.zeros(2, 3), _y(), kappa=_y()
        ),
    ),
    (
        "Loss",
        "a base loss of an integer dtype",
        TypeError,
        lambda: ir.InstanceReweightedLoss(lambda z, y: (z.argmax(1) != y).long(), "gairat")(
            torch.zeros(2, 3), _y(), kappa=_y()
        ),
    ),
    (
        "Loss",
        "a base loss that calls `backward` itself",
        ValueError,
        lambda: ir.InstanceReweightedLoss(_backward_inside, "gairat")(
            torch.zeros(2, 3, requires_grad=True) * 2, _y(), kappa=_y()
        ),
    ),
    (
        "Loss",
        "`kappa` above the scheme's `steps` (an attack with more steps than the loss)",
        ValueError,
        lambda: _gairat()(torch.zeros(2, 3), _y(), kappa=torch.tensor([0, 20])),
    ),
    (
        "Loss",
        "`kappa` of the wrong shape",
        ValueError,
        lambda: _gairat()(torch.zeros(2, 3), _y(), kappa=torch.zeros(3, dtype=torch.long)),
    ),
    (
        "Loss",
        "`kappa` of a float dtype",
        TypeError,
        lambda: _gairat()(torch.zeros(2, 3), _y(), kappa=torch.zeros(2)),
    ),
    (
        "Loss",
        "`margin=` to a κ scheme",
        ValueError,
        lambda: _gairat()(torch.zeros(2, 3), _y(), margin=torch.zeros(2)),
    ),
    (
        "Loss",
        "`kappa=` to a margin scheme",
        ValueError,
        lambda: ir.InstanceReweightedLoss(_ce(), "mail")(torch.zeros(2, 3), _y(), kappa=_y()),
    ),
    ("Loss", "no signal while reweighting", ValueError, lambda: _gairat()(torch.zeros(2, 3), _y())),
    (
        "Loss",
        "NaN in `margin`",
        ValueError,
        lambda: ir.InstanceReweightedLoss(_ce(), "mail")(
            torch.zeros(2, 3), _y(), margin=torch.tensor([0.0, float("nan")])
        ),
    ),
    (
        "Loss",
        "an unknown scheme",
        ValueError,
        lambda: ir.InstanceReweightedLoss(_ce(), "gairat-exp"),
    ),
    (
        "Loss",
        "an unknown scheme parameter",
        ValueError,
        lambda: ir.InstanceReweightedLoss(_ce(), "gairat", gamma=2.0),
    ),
    (
        "Loss",
        "an unknown normalisation",
        ValueError,
        lambda: ir.InstanceReweightedLoss(_ce(), "gairat", normalize="sum"),
    ),
    (
        "Weighting",
        "a probabilistic margin outside [−1, 1]",
        ValueError,
        lambda: ir.InstanceWeighting("mail")(margin=torch.tensor([0.5, 2.5])),
    ),
    (
        "Weighting",
        "`space` for a scheme that reads κ",
        ValueError,
        lambda: ir.InstanceWeighting("gairat", space="logit"),
    ),
    (
        "Weighting",
        "a callable scheme that returns negative weights",
        ValueError,
        lambda: _mail_signal(lambda pm: pm),
    ),
    (
        "Weighting",
        "a callable scheme that returns NaN",
        ValueError,
        lambda: _mail_signal(lambda pm: pm * math.nan),
    ),
    (
        "Weighting",
        "a callable scheme that returns a string",
        TypeError,
        lambda: _mail_signal(lambda pm: "heavy"),
    ),
    (
        "Weighting",
        'a bad signal given to the `"uniform"` scheme',
        ValueError,
        lambda: ir.InstanceWeighting("uniform")(kappa=torch.tensor([0, -1])),
    ),
    (
        "Weighting",
        'no signal to a call of the `"uniform"` scheme (it gives N)',
        ValueError,
        lambda: ir.InstanceWeighting("uniform")(),
    ),
    (
        "Weighting",
        "an unknown attribute of a weighting",
        AttributeError,
        lambda: setattr(ir.InstanceWeighting("gairat"), "lamda", 0.0),
    ),
    (
        "Weighting",
        "an InstanceWeighting and options for it",
        ValueError,
        lambda: ir.InstanceReweightedLoss(_ce(), ir.InstanceWeighting("gairat"), lam=0.0),
    ),
    (
        "Burn-in",
        "a criterion without a weighting",
        TypeError,
        lambda: ir.BurnInScheduler(_ce(), burn_in_epochs=1),
    ),
    (
        "Burn-in",
        "`lam` for a scheme without λ",
        ValueError,
        lambda: ir.BurnInScheduler(
            ir.InstanceReweightedLoss(_ce(), "mail"), burn_in_epochs=1, lam=0.0
        ),
    ),
    (
        "Burn-in",
        "a λ schedule that gives NaN",
        ValueError,
        lambda: ir.BurnInScheduler(_gairat(), burn_in_epochs=0, lam=lambda e: float("nan")),
    ),
    ("Burn-in", "`load_state_dict(None)`", TypeError, lambda: _burn_in().load_state_dict(None)),
    ("Burn-in", "`load_state_dict({})`", ValueError, lambda: _burn_in().load_state_dict({})),
    (
        "Burn-in",
        "a saved negative epoch",
        ValueError,
        lambda: _burn_in().load_state_dict(_state(last_epoch=-1)),
    ),
    (
        "Burn-in",
        "a saved float epoch",
        TypeError,
        lambda: _burn_in().load_state_dict(_state(last_epoch=3.5)),
    ),
    (
        "Burn-in",
        "a saved λ that is not a number",
        TypeError,
        lambda: _burn_in().load_state_dict(_state(lam="-1")),
    ),
    (
        "Burn-in",
        "a saved NaN λ",
        ValueError,
        lambda: _burn_in().load_state_dict(_state(lam=math.nan)),
    ),
    (
        "Sampler",
        "a number of examples that is not an int",
        TypeError,
        lambda: ir.InstanceReweightedSampler(4.5),
    ),
    ("Methods", "an unknown method", ValueError, lambda: ir.methods.get("pgd-at", nn.Linear(4, 3))),
    (
        "Methods",
        "a near miss of a method's name",
        ValueError,
        lambda: ir.methods.get("mail_at", nn.Linear(4, 3)),
    ),
    (
        "Methods",
        "a `base_loss` that reduces over the batch",
        ValueError,
        lambda: ir.methods.get("gairat", nn.Linear(4, 3), base_loss=nn.CrossEntropyLoss()),
    ),
    (
        "Methods",
        "a `base_loss` that returns a scalar",
        ValueError,
        lambda: ir.methods.get("at", nn.Linear(4, 3), base_loss=F.cross_entropy).loss(_x(), _y()),
    ),
    (
        "Methods",
        "a method name that is not a string",
        TypeError,
        lambda: ir.methods.get(3, nn.Linear(4, 3)),
    ),
    (
        "Methods",
        "a hyper-parameter the method does not use",
        ValueError,
        lambda: ir.methods.get("trades", nn.Linear(4, 3), slope=2.0),
    ),
    (
        "Methods",
        "`method.step(x, y, None)`",
        TypeError,
        lambda: ir.methods.get("at", nn.Linear(4, 3)).step(_x(), _y(), None),
    ),
    ("Methods", "`method.step` under `torch.no_grad()`", RuntimeError, _step_without_gradients),
    (
        "AWP",
        "`gamma` above 1",
        ValueError,
        lambda: ir.AdversarialWeightPerturbation(nn.Linear(4, 3), gamma=1e6),
    ),
    (
        "AWP",
        "`awp_gamma` above 1 (a method)",
        ValueError,
        lambda: ir.methods.get("at-awp", nn.Linear(4, 3), awp_gamma=1e6),
    ),
    ("AWP", "`perturbed` under `torch.inference_mode()`", RuntimeError, _awp_under_inference_mode),
    (
        "Normalized models",
        "an input whose channels do not match `mean`/`std`",
        ValueError,
        lambda: ir.Normalized(nn.Flatten(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(
            torch.rand(2, 4, 2, 2)
        ),
    ),
]


@pytest.mark.parametrize("section, row, error, trigger", CASES, ids=[row for _, row, _, _ in CASES])
def test_each_bad_input_raises_the_documented_message(section, row, error, trigger):
    with pytest.raises(error) as info:
        trigger()
    message = str(info.value)
    assert message.startswith("Expected"), message
    assert f"> {error.__name__}: {message}" in DOC.read_text(), (
        f"docs/errors.md is stale for {row!r}: regenerate it"
    )


def test_an_empty_batch_simply_works():
    x_adv, kappa = _attack()(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert x_adv.shape == (0, 4) and kappa.shape == (0,)
    loss = _gairat()(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), kappa=kappa)
    assert loss.item() == 0.0
    assert ir.probabilistic_margin(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).shape == (
        0,
    )


def _scripts() -> Tuple[object, ...]:
    """The example scripts' modules (on ``sys.path`` only here, as in their own tests)."""
    import sys

    sys.path.insert(0, str(DOC.parents[1] / "examples"))
    import arguments
    import table_spec
    import train

    return arguments, table_spec, train


def _spec_with_a_repeated_label() -> None:
    _, table_spec, _ = _scripts()
    rows = [{"label": "AT", "method": "at"}, {"label": "AT", "method": "gairat"}]
    spec = {"name": "t", "protocol": "mail", "columns": ["nat"], "rows": rows}
    table_spec.validate(spec, "'spec.json'")


SCRIPT_CASES: List[Tuple[str, Type[Exception], Callable[[], object]]] = [
    (
        "`train.py --lr inf` (every numeric flag: finite and in range)",
        argparse.ArgumentTypeError,
        lambda: _scripts()[0].numeric(_scripts()[0].POSITIVE, example="0.1")("inf"),
    ),
    ("`--set eps=NaN`", ValueError, lambda: _scripts()[2].parse_set(["eps=NaN"])),
    (
        "`--out` under a file",
        ValueError,
        lambda: _scripts()[0].check_writable_folder(Path("/dev/null/run"), "--out"),
    ),
    ("a spec with a repeated row label", ValueError, _spec_with_a_repeated_label),
]


def test_each_script_mistake_gives_the_documented_message():
    for row, error, trigger in SCRIPT_CASES:
        with pytest.raises(error) as info:
            trigger()
        assert str(info.value).startswith("Expected"), row
        assert f"> {str(info.value)}" in DOC.read_text(), f"docs/errors.md is stale for {row!r}"


def render() -> str:
    lines = [
        "# Errors: what each bad input raises",
        "",
        "Every message says what was expected, what came, and how to fix it. This page is generated from",
        "`tests/test_errors.py` (`python tests/test_errors.py > docs/errors.md`), whose test checks that each",
        "message below is exactly what a user gets.",
        "",
        "An empty batch is not an error: the attack returns empty outputs, the loss returns 0 (not NaN), and",
        "the margins are empty.",
        "",
        "Checks that need values (NaN, ranges) are read with one host synchronisation: once per attack",
        "call (after its step loop), once per margin or weighting call, and once per training step of",
        "`ir.methods` (all of the step's checks together; κ and PM that the library computed itself are not",
        "checked again).",
        "",
        "Handled rather than refused: the attack under `torch.inference_mode()` runs with inference mode off",
        'inside (as `ir.evaluation` does) and returns ordinary tensors; a signal given to the `"uniform"`',
        "scheme is checked like any signal and every weight is 1; raw weights that underflow (GAIRAT with",
        "λ ≲ −40, MAIL with γ ≳ 200) are normalised through their logarithms, so the weights stay finite and in",
        "order; a Σω of 0 or ∞ gives uniform weights.",
        "",
        "One rule for ε: the attack, `ir.methods` and `ir.evaluation` share one check, so a pixel-scale",
        "ε (larger than the width of `clip`, ℓ∞) is refused alike everywhere. Also handled rather than",
        "refused: under bfloat16 and float16 the attack projects in float32 and rounds each iterate toward",
        "`x` on the input's grid, so ‖x_adv − x‖ ≤ ε holds measured in float32; a float64 callable scheme",
        "is normalised in float64; `probabilistic_margin` of logits near float32's limit saturates at",
        "±3.4e38 (logit space) rather than giving Inf or NaN; AWP gives the weights back bitwise when no",
        "optimiser step ran in its block, and a non-finite proxy loss gives no perturbation for that step;",
        "every weighting, reweighted loss and method pickles and deep-copies.",
    ]
    section = None
    for name, row, error, trigger in CASES:
        if name != section:
            lines += ["", f"## {name}"]
            section = name
        try:
            trigger()
        except error as raised:
            lines += ["", f"**{row}**", "", f"> {error.__name__}: {raised}"]
        else:
            raise AssertionError(f"{row!r} did not raise")
    lines += [
        "",
        "## Scripts",
        "",
        "The example scripts check every flag when they parse it, before any data is read or file",
        "written: each numeric flag is a finite number in its range (`8/255` is read as a fraction,",
        "also in `--set`), `--device` is one this machine has, an output folder or file can be",
        "written. A `reproduce.py` spec is checked as a whole (its JSON schema, then labels, prefixes,",
        "methods, presets, protocols and claims), the message naming the file and the field.",
        "",
        "A user's mistake is one line, `<script>: error: <message>`, with exit status 2 (argparse's): a",
        "`ValueError`, `TypeError`, `OSError` or `ImportError` whose message starts with `Expected` and",
        "that the scripts or the library raised (`examples/arguments.py`, `is_user_error`). Anything",
        "else is a bug and keeps its traceback. Flag messages come after `argument --FLAG: `.",
        "",
        "Handled rather than refused: a `log.jsonl` whose last line was cut short by a kill (no",
        "checkpoint holds that epoch) loses that line on `--resume`, with a note, and the epoch is",
        "trained again; the atomic writer creates its temporary file exclusively, removing (never",
        "following) whatever is at that path.",
    ]
    for row, error, trigger in SCRIPT_CASES:
        try:
            trigger()
        except error as raised:
            lines += ["", f"**{row}**", "", f"> {raised}"]
        else:
            raise AssertionError(f"{row!r} did not raise")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
