"""Probabilistic margin (MAIL Eq. 4–7) against an explicit per-example, per-class loop."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import instance_reweight as ir


def _softmax_row(row):
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _pm_oracle(logits, y, space="prob"):
    out = []
    for row, label in zip(logits.tolist(), y.tolist()):
        scores = _softmax_row(row) if space == "prob" else row
        out.append(scores[label] - max(s for j, s in enumerate(scores) if j != label))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("classes", [2, 3, 10, 100])
@pytest.mark.parametrize("space", ["prob", "logit"])
def test_probabilistic_margin_matches_loop(classes, space):
    torch.manual_seed(classes)
    logits = 3 * torch.randn(50, classes)
    y = torch.randint(0, classes, (50,))
    pm = ir.probabilistic_margin(logits, y, space=space)
    assert pm.dtype == torch.float32 and pm.shape == (50,)
    torch.testing.assert_close(pm.double(), _pm_oracle(logits, y, space), rtol=1e-5, atol=1e-6)
    if space == "prob":
        assert pm.min() >= -1 and pm.max() <= 1
    assert torch.equal(pm > 0, logits.argmax(1) == y)


def test_margin_dif_matches_loop():
    torch.manual_seed(0)
    nat, adv = torch.randn(30, 7), torch.randn(30, 7)
    y = torch.randint(0, 7, (30,))
    expected = [
        _softmax_row(n)[label] - _softmax_row(a)[label]
        for n, a, label in zip(nat.tolist(), adv.tolist(), y.tolist())
    ]
    torch.testing.assert_close(
        ir.probabilistic_margin_dif(nat, adv, y).double(),
        torch.tensor(expected, dtype=torch.float64),
    )
    expected_logit = [
        n[label] - a[label] for n, a, label in zip(nat.tolist(), adv.tolist(), y.tolist())
    ]
    torch.testing.assert_close(
        ir.probabilistic_margin_dif(nat, adv, y, space="logit").double(),
        torch.tensor(expected_logit, dtype=torch.float64),
    )


def test_pm_nat_and_pm_adv_come_from_the_logits_passed():
    nat = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    adv = torch.log(torch.tensor([[0.3, 0.6, 0.1]]))
    y = torch.tensor([0])
    assert ir.probabilistic_margin(nat, y).item() == pytest.approx(0.5)
    assert ir.probabilistic_margin(adv, y).item() == pytest.approx(-0.3)
    assert ir.probabilistic_margin_dif(nat, adv, y).item() == pytest.approx(0.4)


def test_detached_and_float32_under_any_input_dtype():
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    pm = ir.probabilistic_margin(logits, y)
    assert not pm.requires_grad and pm.dtype == torch.float32
    assert ir.probabilistic_margin(logits.detach().bfloat16(), y).dtype == torch.float32
    assert not ir.probabilistic_margin_dif(logits, logits, y).requires_grad


def test_saturated_logits_give_exact_extremes():
    logits = torch.tensor([[1e4, 0.0], [0.0, 1e4]])
    assert ir.probabilistic_margin(logits, torch.tensor([0, 0])).tolist() == [1.0, -1.0]


def test_module_equals_function():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    for space in ("prob", "logit"):
        module = ir.ProbabilisticMargin(space)
        assert torch.equal(module(logits, y), ir.probabilistic_margin(logits, y, space=space))
        assert torch.equal(
            module.dif(logits, logits.flip(0), y),
            ir.probabilistic_margin_dif(logits, logits.flip(0), y, space=space),
        )
    assert "space='logit'" in repr(ir.ProbabilisticMargin("logit"))


def test_bad_inputs():
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="'prob', 'logit'"):
        ir.ProbabilisticMargin("log")
    with pytest.raises(ValueError, match="'prob', 'logit'"):
        ir.probabilistic_margin(logits, y, space="probability")
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        ir.probabilistic_margin(logits[0], y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ir.probabilistic_margin(logits[:, :1], y)
    with pytest.raises(TypeError, match="integer class indices"):
        ir.probabilistic_margin(logits, y.float())
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        ir.probabilistic_margin(logits, y[:3])
    with pytest.raises(ValueError, match=r"logits_adv.*\(4, 3\)"):
        ir.probabilistic_margin_dif(logits, torch.randn(4, 5), y)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ir.probabilistic_margin(logits.tolist(), y)


def test_labels_out_of_range_and_non_finite_logits_raise():
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"\[0, 2\].*got values in \[0, 3\]"):
        ir.probabilistic_margin(logits, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="finite logits.*diverged"):
        ir.probabilistic_margin(torch.where(logits > 0, torch.inf, logits), y)
    with pytest.raises(ValueError, match="finite logits"):
        ir.probabilistic_margin_dif(logits, logits * torch.nan, y)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        ir.probabilistic_margin_dif(logits, logits, torch.tensor([-1, 1, 2, 0]))


def test_empty_batch():
    assert ir.probabilistic_margin(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).shape == (
        0,
    )


LARGEST = torch.finfo(torch.float32).max


@given(
    rows=st.lists(
        st.lists(
            st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=2, max_size=5
        ),
        min_size=1,
        max_size=8,
    ).filter(lambda rows: len({len(r) for r in rows}) == 1),
    data=st.data(),
)
@pytest.mark.parametrize("space", ["prob", "logit"])
def test_finite_for_any_finite_float32_logits(space, rows, data):
    """Logits near float32's limit: the margin is the oracle's, saturated at ±3.4e38, never Inf or NaN."""
    logits = torch.tensor(rows, dtype=torch.float32)
    y = torch.tensor([data.draw(st.integers(0, len(rows[0]) - 1)) for _ in rows])
    got = ir.probabilistic_margin(logits, y, space=space)
    assert bool(torch.isfinite(got).all())
    expected = _pm_oracle(logits.double(), y, space).clamp(-LARGEST, LARGEST)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    dif = ir.probabilistic_margin_dif(logits, -logits, y, space=space)
    assert bool(torch.isfinite(dif).all())


def test_float64_logits_beyond_float32_keep_their_margin():
    logits = torch.tensor([[1e39, 0.0, -1e39]], dtype=torch.float64)
    assert ir.probabilistic_margin(logits, torch.tensor([0])).item() == 1.0
    assert ir.probabilistic_margin(logits, torch.tensor([2])).item() == -1.0
    assert ir.probabilistic_margin(logits, torch.tensor([1]), space="logit").item() == -LARGEST


def test_float32_logits_at_the_limit_saturate_in_logit_space():
    logits = torch.tensor([[3e38, -3e38, 0.0]])
    assert ir.probabilistic_margin(logits, torch.tensor([1]), space="logit").item() == -LARGEST
    assert ir.probabilistic_margin(logits, torch.tensor([1])).item() == -1.0
    dif = ir.probabilistic_margin_dif(logits, -logits, torch.tensor([0]), space="logit")
    assert dif.item() == LARGEST
