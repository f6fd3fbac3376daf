"""Sampler mode: draws follow the weights, updates come from κ or PM, the state round-trips."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from instance_reweight import methods
from instance_reweight.sampler import IndexedDataset, InstanceReweightedSampler

# Chi-square critical value for 5 degrees of freedom at p = 0.001.
CHI2_5_0001 = 20.515


def chi_square(draws, probabilities):
    counts, n = Counter(draws), len(draws)
    return sum((counts.get(i, 0) - n * p) ** 2 / (n * p) for i, p in enumerate(probabilities))


def gairat_omega(kappa, steps, lam):
    return [(1 + math.tanh(lam + 5 * (1 - 2 * k / steps))) / 2 for k in kappa]


def test_draws_follow_the_weights():
    kappa = [0, 2, 4, 5, 7, 10]
    sampler = InstanceReweightedSampler(
        6,
        "gairat",
        steps=10,
        lam=1.0,
        num_samples=30_000,
        generator=torch.Generator().manual_seed(0),
    )
    sampler.update(torch.arange(6), kappa=torch.tensor(kappa))
    omega = gairat_omega(kappa, 10, 1.0)
    probabilities = [o / sum(omega) for o in omega]
    draws = list(sampler)
    assert len(draws) == len(sampler) == 30_000
    assert chi_square(draws, probabilities) < CHI2_5_0001
    assert chi_square(draws, [1 / 6] * 6) > 100 * CHI2_5_0001  # and is far from uniform


def test_margin_updates_by_index_and_unseen_examples_keep_weight_one():
    sampler = InstanceReweightedSampler(5, "mail", slope=2.0, bias=0.0)
    sampler.update(torch.tensor([3, 1]), margin=torch.tensor([0.5, -0.5]))
    expected = [1.0, 1 / (1 + math.exp(-1.0)), 1.0, 1 / (1 + math.exp(1.0)), 1.0]
    torch.testing.assert_close(sampler.weights, torch.tensor(expected))


def test_zero_weights_are_never_drawn_and_all_zero_falls_back_to_uniform():
    sampler = InstanceReweightedSampler(
        4, "hinge", slope=1.0, bias=0.0, num_samples=400, generator=torch.Generator().manual_seed(0)
    )
    sampler.update(torch.arange(4), margin=torch.tensor([-0.5, 0.5, -0.1, 0.2]))
    assert set(sampler) == {1, 3}
    # A batch whose raw weights are all 0 gets uniform weights, as InstanceReweightedLoss falls back.
    sampler.update(torch.tensor([0, 2]), margin=torch.tensor([-0.5, -0.5]))
    torch.testing.assert_close(sampler.weights[[0, 2]], torch.ones(2))
    sampler.load_state_dict({**sampler.state_dict(), "weights": torch.zeros(4)})
    assert set(sampler) == {0, 1, 2, 3}


def test_state_round_trips_through_weights_only_load(tmp_path):
    def make():
        return InstanceReweightedSampler(
            6, "gairat", steps=10, lam=0.0, generator=torch.Generator().manual_seed(1)
        )

    sampler = make()
    sampler.update(torch.tensor([0, 5]), kappa=torch.tensor([9, 1]))
    list(sampler)
    torch.save(sampler.state_dict(), tmp_path / "sampler.pt")
    restored = make()
    restored.load_state_dict(torch.load(tmp_path / "sampler.pt", weights_only=True))
    assert torch.equal(restored.weights, sampler.weights)
    assert restored.scheme_params == sampler.scheme_params
    assert list(restored) == list(sampler)  # the generator's state came back too


def test_indexed_dataset_and_a_training_loop_with_the_sampler():
    torch.manual_seed(0)
    data = IndexedDataset(TensorDataset(torch.rand(16, 1, 4, 4), torch.randint(0, 3, (16,))))
    x, y, index = data[5]
    assert index == 5 and torch.equal(x, data.dataset[5][0]) and len(data) == 16
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    )
    method = methods.get("at", model, steps=3)
    sampler = InstanceReweightedSampler(data, "gairat", steps=3, lam=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y, index in DataLoader(data, batch_size=8, sampler=sampler):
        optimizer.zero_grad()
        method.loss(x, y).backward()
        optimizer.step()
        sampler.update(index, **method.last_signal)
    expected = gairat_omega(method.last_signal["kappa"].tolist(), 3, 0.0)
    torch.testing.assert_close(sampler.weights[index], torch.tensor(expected, dtype=torch.float32))


def test_bad_inputs_raise_clearly():
    sampler = InstanceReweightedSampler(4, "gairat")
    with pytest.raises(TypeError, match="integer dataset `indices`"):
        sampler.update(torch.tensor([0.0, 1.0]), kappa=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"Expected `indices` of shape \(2,\)"):
        sampler.update(torch.tensor([0, 1, 2]), kappa=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"Expected `indices` in \[0, 3\]"):
        sampler.update(torch.tensor([0, 4]), kappa=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="Expected `kappa=`"):
        sampler.update(torch.tensor([0, 1]), margin=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="Expected parameters of scheme 'gairat'"):
        InstanceReweightedSampler(4, "gairat", slope=1.0)
    with pytest.raises(ValueError, match="Expected `num_samples`"):
        InstanceReweightedSampler(4, num_samples=0)
    with pytest.raises(ValueError, match="non-empty dataset"):
        InstanceReweightedSampler([])
    with pytest.raises(ValueError, match=r"saved weights of shape \(4,\)"):
        sampler.load_state_dict({"weights": torch.ones(3), "scheme_params": {}, "generator": None})
    broken = InstanceReweightedSampler(2, lambda margin: margin)  # negative raw weights
    with pytest.raises(ValueError, match="non-negative raw weights"):
        broken.update(torch.tensor([0]), margin=torch.tensor([-1.0]))
    state = {"weights": torch.tensor([1.0, -1.0, 0.0, 1.0]), "scheme_params": {}, "generator": None}
    with pytest.raises(ValueError, match="non-negative saved weights"):
        sampler.load_state_dict(state)
    with pytest.raises(TypeError, match=r"Expected `data_source` to be an int \(the number"):
        InstanceReweightedSampler(4.5)


def test_a_generator_repeats_the_draws_and_leaves_the_global_rng_alone():
    def draws(seed):
        sampler = InstanceReweightedSampler(
            6, "gairat", steps=10, generator=torch.Generator().manual_seed(seed)
        )
        sampler.update(torch.arange(6), kappa=torch.tensor([0, 2, 4, 5, 7, 10]))
        state = torch.get_rng_state()
        out = list(sampler)
        assert torch.equal(torch.get_rng_state(), state)
        return out

    assert draws(0) == draws(0) != draws(1)
