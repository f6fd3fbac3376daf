r"""Sampler mode: draw training examples in proportion to their instance weights.

Instead of weighting each example's loss inside the batch (both papers), keep one raw weight
:math:`\omega_i` per dataset index, refreshed from κ or PM whenever the example is seen, and draw
batches with probability :math:`\omega_i / \sum_j \omega_j`. This is a *different estimator*: its
expected gradient matches the globally normalised reweighted loss, but the weights are stale (from
the last time each example was seen) and normalised over the dataset rather than the batch, and the
variance differs. It does not reproduce, and does not claim, either paper's numbers.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Sized, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ._checks import check_int, check_tensor
from .schemes import SchemeLike, resolve_scheme
from .weighting import instance_weights

__all__ = ["IndexedDataset", "InstanceReweightedSampler"]


class IndexedDataset(Dataset):
    """Wraps a dataset so that every item also carries its index: ``(x, y)`` becomes ``(x, y, index)``.

    Args:
        dataset: any map-style dataset.

    Example:
        >>> data = IndexedDataset([(torch.zeros(2), 1), (torch.ones(2), 0)])
        >>> data[1]
        (tensor([1., 1.]), 0, 1)
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[Any, ...]:
        item = self.dataset[index]
        return (*item, index) if isinstance(item, (tuple, list)) else (item, index)


class InstanceReweightedSampler(Sampler[int]):
    r"""Draws dataset indices in proportion to per-example weights refreshed from κ or PM.

    Every example starts with weight 1 (uniform sampling, i.e. burn-in); :meth:`update` sets the
    raw weights :math:`\omega_i` of the examples just seen from the same schemes as
    :class:`~instance_reweight.InstanceReweightedLoss` (no normalisation, scale 1). Each epoch draws
    ``num_samples`` indices with probability :math:`\omega_i / \sum_j \omega_j`. See the module
    docstring: this is a different estimator from loss reweighting. Pair it with a plain (unweighted)
    loss; call :meth:`update` only after the burn-in if you want one. A batch whose raw weights are
    all 0 (the hinge scheme) is refreshed to 1, as the loss falls back to uniform weights.

    Args:
        data_source: the dataset (its length is used) or the number of examples.
        scheme: a scheme name (``"gairat"``, ``"mail"``, …) or a callable ``signal -> raw weights``.
        num_samples: indices drawn per epoch, with replacement (default: the number of examples).
        generator: the random generator of the draws.
        device: where the weights live; put them on the signal's device (e.g. ``"cuda"``) so that
            :meth:`update` does not copy each batch's weights to the host; they are copied to the
            CPU once per epoch, for the draws. :meth:`update` still synchronises the host (see
            there).
        **scheme_params: the scheme's parameters (``steps``, ``lam``, ``slope``, ``bias``, ``alpha``).

    Raises:
        ValueError: on an empty dataset, a non-positive ``num_samples`` or an unknown scheme parameter.

    Example:
        >>> sampler = InstanceReweightedSampler(4, "gairat", steps=10, lam=0.0,
        ...                                     generator=torch.Generator().manual_seed(0))
        >>> sampler.update(torch.tensor([0, 1, 2, 3]), kappa=torch.tensor([0, 10, 10, 10]))
        >>> sorted(set(sampler))
        [0]
    """

    def __init__(
        self,
        data_source: Union[Sized, int],
        scheme: SchemeLike = "gairat",
        *,
        num_samples: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        device: Union[str, torch.device] = "cpu",
        **scheme_params: Any,
    ) -> None:
        if not isinstance(data_source, Sized):
            check_int(data_source, "data_source", 1, " (the number of examples) or a dataset")
        size = len(data_source) if isinstance(data_source, Sized) else data_source
        if size < 1:
            raise ValueError(
                f"Expected a non-empty dataset (or a number of examples >= 1), got {size!r}."
            )
        num_samples = size if num_samples is None else num_samples
        check_int(num_samples, "num_samples", 1)
        self.scheme = scheme
        self.scheme_params = resolve_scheme(scheme).params(scheme_params)
        self.num_samples = num_samples
        self.generator = generator
        self.weights = torch.ones(size, dtype=torch.float32, device=device)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        weights = self.weights.cpu()  # once per epoch
        if not bool(weights.sum() > 0):  # every weight 0: uniform, as the loss falls back
            weights = torch.ones_like(weights)
        drawn = torch.multinomial(
            weights, self.num_samples, replacement=True, generator=self.generator
        )
        yield from drawn.tolist()

    def update(
        self, indices: Tensor, *, kappa: Optional[Tensor] = None, margin: Optional[Tensor] = None
    ) -> None:
        """Refresh the weights of the examples at ``indices`` from their κ or PM.

        It synchronises the host: the signal's value checks (κ within ``[0, steps]``, finite PM, a
        callable scheme's weights non-negative) are read together, as every
        :class:`~instance_reweight.InstanceWeighting` call does, so that a bad signal raises rather
        than silently skewing the draws; and indices on the CPU (where a DataLoader puts them) are
        copied to the weights' device (a blocking copy on a GPU). Call it once per batch.

        Args:
            indices: dataset indices of the batch ``(N,)`` (the third item of :class:`IndexedDataset`).
            kappa: geometry values ``(N,)`` for the GAIRAT schemes.
            margin: probabilistic margins ``(N,)`` for the MAIL schemes.

        Raises:
            ValueError: on indices out of range or not matching the signal's shape, or a signal the
                scheme does not read.
            TypeError: on non-integer indices.
        """
        indices = check_tensor(indices, "indices")
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"Expected integer dataset `indices`, got dtype {indices.dtype}.")
        weights = instance_weights(
            self.scheme, kappa=kappa, margin=margin, normalize="none", **self.scheme_params
        )
        if indices.shape != weights.shape:
            raise ValueError(
                f"Expected `indices` of shape {tuple(weights.shape)} (one per example of the signal), got "
                f"{tuple(indices.shape)}."
            )
        size = self.weights.shape[0]
        # The range check is free on the CPU, where a DataLoader puts the indices.
        if (
            indices.device.type == "cpu"
            and indices.numel()
            and bool(((indices < 0) | (indices >= size)).any())
        ):
            raise ValueError(
                f"Expected `indices` in [0, {size - 1}], got values in [{int(indices.min())}, {int(indices.max())}]; "
                "size the sampler with the same dataset as the IndexedDataset."
            )
        self.weights[indices.to(self.weights.device)] = weights.to(self.weights.device)

    def state_dict(self) -> Dict[str, Any]:
        """Tensors and plain values only: loads under ``torch.load(weights_only=True)``."""
        return {
            "weights": self.weights.cpu(),
            "scheme_params": dict(self.scheme_params),
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the weights, the scheme's parameters and the generator's state."""
        weights = check_tensor(state_dict["weights"], "weights")
        if weights.shape != self.weights.shape:
            raise ValueError(
                f"Expected saved weights of shape {tuple(self.weights.shape)} (the dataset size), got "
                f"{tuple(weights.shape)}."
            )
        if not bool((torch.isfinite(weights) & (weights >= 0)).all()):
            raise ValueError(
                "Expected finite, non-negative saved weights, got NaN, Inf or a negative value; load "
                "the state_dict() of an InstanceReweightedSampler."
            )
        self.weights.copy_(weights)
        self.scheme_params = resolve_scheme(self.scheme).params(state_dict["scheme_params"])
        if self.generator is not None and state_dict["generator"] is not None:
            self.generator.set_state(state_dict["generator"])

    def __repr__(self) -> str:
        scheme = (
            self.scheme
            if isinstance(self.scheme, str)
            else getattr(self.scheme, "__name__", "callable")
        )
        return (
            f"{type(self).__name__}(num_examples={self.weights.shape[0]}, scheme={scheme!r}, "
            f"num_samples={self.num_samples}, {self.scheme_params})"
        )
