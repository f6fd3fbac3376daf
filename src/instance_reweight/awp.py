r"""Adversarial weight perturbation (AWP; Wu, Xia and Wang, NeurIPS 2020): perturb the weights, not only
the inputs, in the direction that increases the training loss, and take the optimiser step there."""

from __future__ import annotations

import contextlib
import copy
from itertools import chain
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._checks import at_least_float32, check_model, check_number

__all__ = ["AdversarialWeightPerturbation"]

LossFn = Callable[[nn.Module], Tensor]


class AdversarialWeightPerturbation:
    r"""AWP's double perturbation: a weight perturbation :math:`v` that increases ``loss_fn``, applied
    while the training step runs and removed after it, so the step is taken at :math:`W + v`.

    On entry to :meth:`perturbed`, a proxy copy of the model (in train mode) takes one plain SGD step
    (learning rate :math:`\eta` = ``proxy_lr``, no momentum, no weight decay) on :math:`-\mathcal{L}`,
    :math:`\mathcal{L}` = ``loss_fn(proxy)``. For every parameter :math:`W_l` with more than one
    dimension (conv and linear weights; biases and BatchNorm affine parameters are left alone):

    .. math::
        d_l = W_l^{\text{proxy}} - W_l = \eta\,\nabla_{W_l}\mathcal{L}(W), \qquad
        v_l = \gamma\,\frac{\lVert W_l\rVert}{\lVert d_l\rVert}\,d_l
        \quad (v_l = 0 \text{ where } d_l = 0),

    norms over the whole tensor (layer-wise relative size). The model's weights become :math:`W + v`
    for the body of the ``with`` block, where you compute your loss, backpropagate and step the
    optimiser; on exit — also when the body raises — the perturbation is removed and the
    optimiser's update kept: with plain SGD of rate :math:`\mu`,
    :math:`W \leftarrow W - \mu\,\nabla\mathcal{L}_{\text{train}}(W + v)`.

    The official ``AdvWeightPerturb`` (``perturb`` / ``restore``) subtracts :math:`v` again; here the
    exact :math:`W` is kept and the optimiser's update :math:`W' - (W + v)` added to it, the same
    number within float rounding, and where no optimiser step ran inside the block (an exception, a
    skipped step of a gradient scaler) the weights come back bitwise (subtracting a large
    :math:`v` would leave a residue of cancellation). Since
    :math:`v` is normalised per layer, it does not depend on :math:`\eta` (the official AT-AWP code
    uses 0.01, the TRADES-AWP code 0.1); :math:`d` is computed as :math:`\eta\nabla\mathcal{L}`
    rather than as the difference of two weight tensors, which is the same number without the
    cancellation. The model's ``.grad``, BatchNorm running statistics, ``requires_grad`` and
    train/eval flags are untouched by the proxy step. A non-finite proxy loss or gradient gives
    :math:`v = 0` for that step (decided on the device: no host synchronisation, and the weights are
    never made NaN by the perturbation; your own loss at the same weights shows the problem).

    Under ``DistributedDataParallel`` (pass the DDP model) the proxy gradients are summed over the
    process group, so every rank applies the same :math:`v`: that of the global batch's loss when
    the ranks' batches are of equal size, as the official code's ``DataParallel`` computes it.

    Args:
        model: the model being trained (its parameters are perturbed in place).
        gamma: the relative size γ of the perturbation, in (0, 1]: each perturbed weight tensor
            moves by at most its own norm (AWP: 5e-3 for AT-AWP and TRADES-AWP on CIFAR-10 ℓ∞,
            see ``docs/awp.md``; the paper's sweep stays below 2e-2).
        proxy_lr: the proxy's SGD learning rate η > 0 (scales :math:`d`, not :math:`v`).

    Raises:
        TypeError: ``model`` not an ``nn.Module``, ``gamma`` or ``proxy_lr`` not a number.
        ValueError: ``gamma`` outside (0, 1], ``proxy_lr`` not finite and > 0, a model without any
            parameter of more than one dimension, a lazy module before its first forward, a model on
            the meta device.

    Example:
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> awp = AdversarialWeightPerturbation(model, gamma=5e-3)
        >>> x_adv, y = torch.rand(16, 4), torch.randint(0, 3, (16,))
        >>> before = model[0].weight.detach().clone()
        >>> with awp.perturbed(lambda proxy: F.cross_entropy(proxy(x_adv), y)):
        ...     ratio = float((model[0].weight.detach() - before).norm() / before.norm())
        ...     loss = F.cross_entropy(model(x_adv), y)
        ...     optimizer.zero_grad()
        ...     loss.backward()
        ...     optimizer.step()
        >>> round(ratio, 6)
        0.005
    """

    def __init__(self, model: nn.Module, *, gamma: float, proxy_lr: float = 0.01) -> None:
        check_model(model)
        # Under DDP the proxy copies the wrapped module; its gradients are summed by hand.
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        self.model: nn.Module = model.module if ddp else model  # type: ignore[assignment]
        self._group = model.process_group if ddp else None
        self.gamma = check_number(
            gamma,
            "gamma",
            minimum=0.0,
            maximum=1.0,
            strict=True,
            hint=" (relative size of the weight perturbation, AWP: 5e-3)",
        )
        self.proxy_lr = check_number(
            proxy_lr,
            "proxy_lr",
            minimum=0.0,
            strict=True,
            hint=" (the proxy's SGD step, default 0.01)",
        )
        if not any(p.dim() > 1 for p in self.model.parameters()):
            raise ValueError(
                f"Expected `model` to have at least one parameter with more than one dimension (a conv "
                f"or linear weight), got none among its {len(list(self.model.parameters()))} "
                "parameters; AWP perturbs weight matrices and kernels only."
            )
        self._proxy: Optional[nn.Module] = None
        self._layout: List[Tuple[torch.Size, torch.dtype, torch.device]] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(gamma={self.gamma:g}, proxy_lr={self.proxy_lr:g})"

    @contextlib.contextmanager
    def perturbed(self, loss_fn: LossFn) -> Iterator[None]:
        """Move the model's weights to :math:`W + v` for the body of the ``with`` block.

        Args:
            loss_fn: a function of a model returning the scalar loss the perturbation increases,
                e.g. ``lambda m: F.cross_entropy(m(x_adv), y)`` or a reweighted loss. It must use the
                module it is given (the proxy), not the model itself.

        Raises:
            TypeError: ``loss_fn`` not callable, or its result not a tensor.
            ValueError: its result not a scalar, or not depending on the given module's weights.
            RuntimeError: under ``torch.inference_mode()``, where no gradient can be taken.
        """
        if not callable(loss_fn):
            raise TypeError(
                f"Expected `loss_fn` to be a callable (module) -> scalar loss, got {type(loss_fn).__name__}."
            )
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "Expected AWP's `perturbed` outside torch.inference_mode(), got it inside: the "
                "perturbation and the training step need gradients; leave the inference_mode block "
                "(torch.no_grad() is fine for the caller)."
            )
        targets, perturbation = self._perturbation(loss_fn)
        with torch.no_grad():
            exact = [weight.clone() for weight in targets]
            for weight, v in zip(targets, perturbation):
                weight.add_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for weight, w, v in zip(targets, exact, perturbation):
                    # W + (W' − (W + v)): the optimiser's update on the exact W, 0 without a step.
                    weight.copy_(w + (weight - (w + v)))

    def _perturbation(self, loss_fn: LossFn) -> Tuple[List[Tensor], List[Tensor]]:
        """The model's perturbed weights and their :math:`v`, from one step of the proxy."""
        proxy = self._refreshed_proxy()
        pairs = [
            (w, pw) for w, pw in zip(self.model.parameters(), proxy.parameters()) if w.dim() > 1
        ]
        with torch.enable_grad():
            loss = loss_fn(proxy)
        if not isinstance(loss, Tensor):
            raise TypeError(
                f"Expected `loss_fn(proxy)` to return a scalar tensor, got {type(loss).__name__}."
            )
        if loss.dim() != 0:
            raise ValueError(
                f"Expected `loss_fn(proxy)` to return a scalar, got shape {tuple(loss.shape)}; reduce "
                "the per-example losses (e.g. `.mean()` or a reweighted loss)."
            )
        found: Sequence[Optional[Tensor]] = (
            torch.autograd.grad(loss, [pw for _, pw in pairs], allow_unused=True)
            if loss.requires_grad
            else [None] * len(pairs)
        )
        if all(g is None for g in found):
            raise ValueError(
                "Expected `loss_fn` to compute the loss with the module it is given (the proxy), got a "
                "loss that does not depend on its weights; write `lambda m: loss(m(x), y)`, not "
                "`model(x)`."
            )
        grads = [torch.zeros_like(pw) if g is None else g for (_, pw), g in zip(pairs, found)]
        if self._group is not None and dist.is_available() and dist.is_initialized():
            grads = _summed(grads, self._group)  # the sum has the direction of the mean: enough
        return [w for w, _ in pairs], self._scaled([w for w, _ in pairs], grads, loss.detach())

    def _scaled(
        self, weights: Sequence[Tensor], grads: Sequence[Tensor], loss: Tensor
    ) -> List[Tensor]:
        """:math:`v_l = γ‖W_l‖/‖d_l‖·d_l` with :math:`d_l = η g_l`; all zero if the proxy loss or
        any d is not finite."""
        diffs = [self.proxy_lr * g.detach() for g in grads]
        norm_d = torch.stack([torch.linalg.vector_norm(at_least_float32(d)) for d in diffs])
        norm_w = torch.stack(
            [torch.linalg.vector_norm(at_least_float32(w.detach())) for w in weights]
        )
        finite = torch.isfinite(norm_d).all() & torch.isfinite(loss).to(norm_d.device)
        usable = finite & (norm_d > 0)
        coeff = torch.where(usable, self.gamma * norm_w / norm_d.where(usable, 1.0), 0.0)
        return [torch.where(finite, c.to(d.dtype) * d, 0.0) for c, d in zip(coeff.unbind(), diffs)]

    def _refreshed_proxy(self) -> nn.Module:
        """The proxy, rebuilt if the model's tensors changed shape, dtype or device, holding the
        model's current parameters and buffers, in train mode, with gradients for the weights only."""
        layout = [
            (t.shape, t.dtype, t.device)
            for t in chain(self.model.parameters(), self.model.buffers())
        ]
        if self._proxy is None or layout != self._layout:
            proxy = copy.deepcopy(self.model)
            for p in proxy.parameters():
                p.grad = None
                p.requires_grad_(p.dim() > 1)
            self._proxy, self._layout = proxy, layout
        with torch.no_grad():
            for dst, src in zip(
                chain(self._proxy.parameters(), self._proxy.buffers()),
                chain(self.model.parameters(), self.model.buffers()),
            ):
                dst.copy_(src)
        return self._proxy.train()


def _summed(grads: Sequence[Tensor], group: Any) -> List[Tensor]:
    """``grads`` summed over the process group, in one all-reduce."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    return [chunk.view_as(g) for chunk, g in zip(flat.split([g.numel() for g in grads]), grads)]
