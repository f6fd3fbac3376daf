"""A model that expects normalised input, seen from pixel space: attacks, ε and ``clip`` stay in [0, 1]."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Union

import torch
from torch import Tensor, nn

from ._checks import check_finite

__all__ = ["Normalized"]

Stats = Union[float, Sequence[float], Tensor]


class Normalized(nn.Module):
    r"""Wrap ``model`` so that it takes unnormalised input: ``forward(x) = model((x − mean) / std)``.

    Attacks perturb the wrapper's input, so ε, the step size and ``clip=(0, 1)`` are in pixel units,
    as the papers state them (ε = 8/255 is a pixel budget; in normalised units it would be 8/255/σ,
    a different ball per channel). ``mean`` and ``std`` are each a number, a sequence with one value
    per channel of ``(N, C, H, W)`` images (as torchvision's ``Normalize``), or a tensor that
    broadcasts against one example (e.g. ``(F,)`` for ``(N, F)`` features).

    The state dict is the inner model's, unchanged: the same keys (no ``model.`` prefix) and no
    ``mean``/``std`` entries (they are non-persistent buffers, which follow ``.to()``). Existing
    checkpoints load into the wrapper, and checkpoints saved from it load into the bare model.

    Args:
        model: the classifier, expecting normalised input.
        mean: per-channel (or per-feature) mean.
        std: per-channel (or per-feature) standard deviation, every value > 0.

    Shape:
        - Input: ``(N, C, *)`` for per-channel statistics, else ``(N, *)`` matching ``mean``'s shape.
        - Output: whatever ``model`` returns.

    Raises:
        TypeError: ``model`` not an ``nn.Module``; ``mean``/``std`` neither numbers, sequences of
            numbers nor floating-point tensors.
        ValueError: an empty sequence, non-finite values, a ``std`` that is not > 0, ``mean`` and
            ``std`` that do not broadcast together, or (in ``forward``) an input they do not fit.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> model = Normalized(net, mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))
        >>> model(torch.rand(2, 3, 2, 2)).shape
        torch.Size([2, 3])
        >>> list(model.state_dict()) == list(net.state_dict())
        True
    """

    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, mean: Stats, std: Stats) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Expected `model` to be a torch.nn.Module, got {type(model).__name__}."
            )
        mean_t, std_t = _stats(mean, "mean"), _stats(std, "std")
        if not bool((std_t > 0).all()):
            raise ValueError(
                f"Expected every value of `std` > 0, got {std_t.tolist()}; pass standard deviations, "
                "not variances or 1/std."
            )
        try:
            torch.broadcast_shapes(mean_t.shape, std_t.shape)
        except RuntimeError:
            raise ValueError(
                f"Expected `mean` and `std` of shapes that broadcast together, got "
                f"{tuple(mean_t.shape)} and {tuple(std_t.shape)}."
            ) from None
        self.model = model
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)
        self._register_state_dict_hook(_strip_prefix)
        self._register_load_state_dict_pre_hook(_add_prefix)

    def forward(self, x: Tensor) -> Any:
        # Checked on shapes alone, before torch's own RuntimeError for shapes that do not broadcast.
        try:
            fits = torch.broadcast_shapes(x.shape, self.mean.shape, self.std.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"Expected input whose examples match `mean`/`std` of shapes {tuple(self.mean.shape)}"
                f"/{tuple(self.std.shape)}, got {tuple(x.shape)}; a sequence gives one value per "
                "channel of (N, C, H, W) images, for other inputs pass tensors shaped like one example."
            )
        return self.model((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _stats(value: object, name: str) -> Tensor:
    """``value`` as a float tensor shaped to broadcast against one example (per channel: ``(C, 1, 1…)``)."""
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(
                f"Expected `{name}` as a floating-point tensor, got {value.dtype}; use `.float()`."
            )
        tensor = value.detach().clone()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        tensor = torch.tensor(float(value))
    elif isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        if not value:
            raise ValueError(
                f"Expected `{name}` with one value per channel, got an empty sequence."
            )
        # One value per channel: channels are dimension 1 of (N, C, H, W), so (C, 1, 1).
        tensor = torch.tensor([float(v) for v in value]).view(-1, 1, 1)
    else:
        raise TypeError(
            f"Expected `{name}` as a number, a sequence of numbers (one per channel) or a tensor, "
            f"got {type(value).__name__}."
        )
    check_finite(tensor, name)
    return tensor


def _strip_prefix(
    module: nn.Module, state_dict: Dict[str, Any], prefix: str, local_metadata: Dict[str, Any]
) -> None:
    """Save the inner model's entries under the wrapper's own prefix: ``model.x`` → ``x``."""
    inner = prefix + "model."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if k == inner[:-1] or k.startswith(inner)]:
            metadata[prefix + key[len(inner) :] if key != inner[:-1] else prefix[:-1]] = (
                metadata.pop(key)
            )


def _add_prefix(
    state_dict: Dict[str, Any],
    prefix: str,
    local_metadata: Dict[str, Any],
    strict: bool,
    missing_keys: List[str],
    unexpected_keys: List[str],
    error_msgs: List[str],
) -> None:
    """Load the inner model's entries from the wrapper's own prefix: ``x`` → ``model.x``."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[prefix + "model." + key[len(prefix) :]] = state_dict.pop(key)
