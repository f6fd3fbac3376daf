"""The README's snippets run as written, in a tiny training loop, and train."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import instance_reweight as ir

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


class _FreshBatches:
    """Two new batches of a learnable 10-class toy problem per epoch, so that κ and PM vary."""

    def __init__(self):
        self.patterns = torch.rand(10, 3, 8, 8) - 0.5

    def __iter__(self):
        for _ in range(2):
            y = torch.randint(0, 10, (16,))
            yield (0.5 + 0.2 * self.patterns[y] + 0.2 * torch.randn(16, 3, 8, 8)).clamp(0, 1), y


def test_readme_has_the_gairat_and_mail_snippets():
    assert len(SNIPPETS) == 2
    assert '"gairat"' in SNIPPETS[0] and '"mail"' in SNIPPETS[1]


@pytest.mark.parametrize("snippet", SNIPPETS, ids=["gairat", "mail"])
def test_snippet_trains_through_and_after_burn_in(snippet):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    )
    loader = _FreshBatches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = [p.detach().clone() for p in model.parameters()]
    namespace = {
        "ir": ir,
        "nn": nn,
        "model": model,
        "loader": loader,
        "optimizer": optimizer,
        "epochs": 77,
    }
    exec(snippet, namespace)
    criterion, loss = namespace["criterion"], namespace["loss"]
    assert criterion.active and torch.isfinite(loss)
    assert criterion.last_weights.shape == (16,) and not torch.equal(
        criterion.last_weights, torch.ones(16)
    )
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
