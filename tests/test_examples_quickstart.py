"""examples/quickstart.py: the README's demo, in a reduced setting (a few seconds on a CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import quickstart  # noqa: E402

REDUCED = ["--epochs=8", "--n=300", "--seed=1"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return quickstart.main([*REDUCED, f"--out={tmp_path_factory.mktemp('quickstart')}"])


def test_toy_data_are_two_balanced_classes_on_the_plane():
    for make, noise in quickstart.TOYS.values():
        x, y = make(200, noise, torch.Generator().manual_seed(0))
        assert x.shape == (200, 2) and x.dtype == torch.float32
        assert y.tolist().count(0) == y.tolist().count(1) == 100
        assert float(x.abs().max()) < 3  # on the scale ε is given in


@pytest.mark.slow
def test_every_method_learns_and_reweights(result):
    assert set(result["accuracy"]) == {"moons", "circles"}
    for rows in result["accuracy"].values():
        assert set(rows) == set(quickstart.METHODS)
        for name, acc in rows.items():
            assert acc["natural"] > 0.75, (name, acc)  # chance is 0.5
            assert 0.0 <= acc["pgd20"] <= acc["natural"]
        # AT weighs every example alike; GAIRAT and MAIL put more weight on the attackable ones.
        assert rows["at"]["top10_weight"] == pytest.approx(0.1)
        assert rows["gairat"]["top10_weight"] > 0.15 and rows["mail-at"]["top10_weight"] > 0.1


@pytest.mark.slow
def test_same_seed_same_numbers(result, tmp_path):
    again = quickstart.main([*REDUCED, "--toys=moons", "--no-figure"])
    assert again["accuracy"]["moons"] == result["accuracy"]["moons"]


def test_figure_or_message(result, capsys, tmp_path, monkeypatch):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert result["figure"] is None
    else:
        assert result["figure"].is_file()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = quickstart.main(["--epochs=2", "--n=100", "--toys=circles", f"--out={tmp_path}"])
    assert out["figure"] is None and not (tmp_path / "quickstart.png").exists()
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_unknown_toy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="moons, circles"):
        quickstart.main(["--toys=spirals"])
