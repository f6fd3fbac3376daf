"""Every public object that holds a parametrised scheme pickles and deep-copies (multiprocessing and
DistributedDataParallel's spawn send them to other processes), and the copy computes what the original does."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import instance_reweight as ir
from instance_reweight.schemes import SCHEMES, resolve_scheme


def squared_margin(margin: torch.Tensor) -> torch.Tensor:
    """A user's callable scheme, defined at module level as multiprocessing requires."""
    return (1 - margin) ** 2


def _copies(obj):
    return pickle.loads(pickle.dumps(obj)), copy.deepcopy(obj)


def _signal(scheme) -> dict:
    if resolve_scheme(scheme).signal == "kappa":
        return {"kappa": torch.tensor([0, 3, 10])}
    return {"margin": torch.tensor([-0.5, 0.0, 0.9])}


@pytest.mark.parametrize("scheme", [*SCHEMES, squared_margin])
def test_a_weighting_and_a_reweighted_loss_copy_with_their_parameters(scheme):
    params = {"slope": 3.0} if scheme in ("mail", "hinge") else {}
    weighting = ir.InstanceWeighting(scheme, normalize="none", scale=2.0, **params)
    criterion = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), scheme, **params)
    logits, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    for copied in _copies(weighting):
        assert repr(copied) == repr(weighting)
        assert torch.equal(copied(**_signal(scheme)), weighting(**_signal(scheme)))
    for copied in _copies(criterion):
        assert torch.equal(
            copied(logits, y, **_signal(scheme)), criterion(logits, y, **_signal(scheme))
        )


def _step_loss(method, x, y) -> torch.Tensor:
    torch.manual_seed(1)
    with method.training_step(x, y) as loss:
        return loss.detach()


@pytest.mark.parametrize("name", ir.methods.names())
def test_every_method_copies_after_a_step(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    reweighted = ir.methods.get(name, model).weighting is not None
    method = ir.methods.get(name, model, steps=2, **({"burn_in_epochs": 0} if reweighted else {}))
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    method.step(x, y, torch.optim.SGD(model.parameters(), lr=0.1))
    for copied in _copies(method):
        assert repr(copied) == repr(method)
        assert torch.equal(_step_loss(copied, x, y), _step_loss(method, x, y))
