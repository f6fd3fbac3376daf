"""GAIRAT and MAIL in well under a minute on a CPU: AT, GAIRAT and MAIL-AT on two 2-D toy problems.

    python examples/quickstart.py                 # prints a table, saves runs/quickstart/quickstart.png

The two toy data sets of GAIRAT's Figure 3 (left panel), generated here: two interleaving moons and
two concentric circles, two classes each. The inputs are points in the plane, not images, so every
attack runs with ``clip=None`` and ε is on the data's scale (the classes are about 0.5 apart).

A small MLP is trained with each method of ``ir.methods`` for the same number of epochs from the same
initialisation; the first half is burn-in (plain AT) and reweighting starts with the learning-rate
drop, as in both papers. The table compares natural accuracy and PGD-20 accuracy on fresh test
points, and shows the reweighting at work: the share of the last epoch's total loss weight that its
10 % most heavily weighted training points carry (10 % under AT's uniform weights). The figure (when
matplotlib is installed) shows, for each toy, every training point coloured by its geometry value κ
under the AT network (how many of the K = 10 PGD steps it stays correctly classified; GAIRAT Fig. 3:
small κ = attackable = near the boundary), by the weight GAIRAT and by the weight MAIL-AT gave it in
the last epoch (the 10 % heaviest circled, their share of the total weight in the panel's title),
and the spread of the AT network's probabilistic margin PM = p_y − max_{j≠y} p_j for each κ (MAIL
Fig. 4).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import arguments
import torch
from arguments import AT_LEAST_ONE, NON_NEGATIVE, Bounds, numeric
from torch import Tensor, nn

import instance_reweight as ir
from instance_reweight import evaluation

Data = Tuple[Tensor, Tensor]
METHODS = ("at", "gairat", "mail-at")
STEPS = 10  # K, the PGD steps of training and of κ


def two_moons(n: int, noise: float, generator: torch.Generator) -> Data:
    """Two interleaving half circles (class 0 on top), centred near the origin, plus Gaussian noise."""
    y = torch.arange(n) % 2
    t = math.pi * torch.rand(n, generator=generator)
    upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    x = torch.where(y[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25])
    return x + noise * torch.randn(n, 2, generator=generator), y


def circles(n: int, noise: float, generator: torch.Generator) -> Data:
    """An outer circle of radius 1 (class 0) around an inner one of radius 0.5, plus Gaussian noise."""
    y = torch.arange(n) % 2
    t = 2 * math.pi * torch.rand(n, generator=generator)
    radius = torch.where(y == 0, 1.0, 0.5)[:, None]
    x = radius * torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    return x + noise * torch.randn(n, 2, generator=generator), y


TOYS: Dict[str, Tuple[Callable[[int, float, torch.Generator], Data], float]] = {
    "moons": (two_moons, 0.15),
    "circles": (circles, 0.1),
}


def mlp(hidden: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2)
    )


def top_share(weights: Tensor, fraction: float = 0.1) -> float:
    """The share of the total weight that the ``fraction`` most heavily weighted points carry."""
    w = weights.sort(descending=True).values
    return float(w[: max(1, round(fraction * len(w)))].sum() / w.sum())


def train(
    name: str, data: Data, *, epochs: int, eps: float, seed: int, batch_size: int = 128
) -> Tuple[nn.Module, Tensor]:
    """Trains an MLP with method ``name``: SGD, lr 0.1 then 0.01 from the end of the burn-in.

    Returns:
        The network (eval mode) and the weight each training point got in the last epoch
        (normalised to mean 1 over its batch; all ones for AT).
    """
    torch.manual_seed(seed)
    model = mlp()
    burn_in = epochs // 2
    overrides: Dict[str, Any] = dict(eps=eps, step_size=eps / 4, steps=STEPS, clip=None)
    if name != "at":
        overrides["burn_in_epochs"] = burn_in
    method = ir.methods.get(name, model, **overrides)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = data
    shuffle = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        method.set_epoch(epoch)  # burn-in: plain AT until `burn_in`, then reweighting
        for group in optimizer.param_groups:
            group["lr"] = 0.1 if epoch < burn_in else 0.01
        weights = torch.ones(x.shape[0])
        for batch in torch.randperm(x.shape[0], generator=shuffle).split(batch_size):
            loss = method.loss(x[batch], y[batch])  # attack, forwards, instance-reweighted loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if method.last_weights is not None:
                weights[batch] = method.last_weights.float()
    return model.eval(), weights


class Trained(NamedTuple):
    """One toy's training points, and each method's network and last-epoch weight per point."""

    data: Data
    models: Dict[str, nn.Module]
    weights: Dict[str, Tensor]


def kappa_and_margin(model: nn.Module, data: Data, eps: float) -> Tuple[Tensor, Tensor]:
    """κ from GA-PGD started at x (GAIRAT Algorithm 1) and PM_nat, per example."""
    attack = ir.GeometryAwareAttack(
        model, eps=eps, step_size=eps / 4, steps=STEPS, random_start=None, clip=None
    )
    x, y = data
    _, kappa = attack(x, y)
    with torch.no_grad():
        margin = ir.probabilistic_margin(model(x), y)
    return kappa, margin


def _boundary(model: nn.Module, x: Tensor) -> Tuple[Tensor, Tensor]:
    """A 200×200 grid around the points and the network's logit difference on it (0: boundary)."""
    grid = torch.stack(
        torch.meshgrid(
            torch.linspace(float(x[:, 0].min()) - 0.3, float(x[:, 0].max()) + 0.3, 200),
            torch.linspace(float(x[:, 1].min()) - 0.3, float(x[:, 1].max()) + 0.3, 200),
            indexing="xy",
        )
    )
    with torch.no_grad():
        return grid, model(grid.reshape(2, -1).T).diff(dim=1).reshape(200, 200)


TOP10_NOTE = (
    "Weight on the top 10 % = the share of the last epoch's total loss weight carried by the 10 % most "
    "heavily weighted training points (circled): 10 % under AT's uniform weights; GAIRAT and MAIL-AT "
    "put far more on the attackable points near the decision boundary (small κ, small PM)."
)


def draw_figure(toys: Dict[str, Trained], eps: float, out: Path) -> Optional[Path]:
    """Per toy: κ under the AT network, GAIRAT's and MAIL-AT's last-epoch weight per training point
    (the 10 % heaviest circled), and the AT network's PM_nat for each κ (MAIL Fig. 4)."""
    from plots import import_pyplot, save_figure

    plt = import_pyplot(f"the figure ({out})")
    if plt is None:
        return None
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(len(toys), 4, figsize=(20, 4.6 * len(toys) + 0.6), squeeze=False)
    for row, (toy, trained) in zip(axes, toys.items()):
        x, y = trained.data
        kappa, margin = kappa_and_margin(trained.models["at"], trained.data, eps)
        panels: List[Tuple[Any, str, Tensor, str, Optional[LogNorm], str]] = [
            (row[0], "at", kappa, "viridis", None, f"{toy}: κ under AT (dark: attackable)")
        ]
        for ax, name in ((row[1], "gairat"), (row[2], "mail-at")):
            w = trained.weights[name]
            title = (
                f"{toy}: {name} weight per point\ntop 10 % carry {100 * top_share(w):.0f} % of it"
            )
            log_scale = LogNorm(
                vmin=max(float(w.min()), 1e-3), vmax=max(float(w.max()), 1e-3 * 1.01)
            )
            panels.append((ax, name, w.clamp_min(1e-3), "magma_r", log_scale, title))
        for ax, name, values, cmap, norm, title in panels:
            grid, boundary = _boundary(trained.models[name], x)
            ax.contour(grid[0], grid[1], boundary, levels=[0.0], colors="k", linewidths=1)
            scale = dict(norm=norm) if norm is not None else dict(vmin=0, vmax=STEPS)
            for label, marker in ((0, "o"), (1, "^")):
                pick = y == label
                points = ax.scatter(
                    x[pick, 0], x[pick, 1], c=values[pick], cmap=cmap, marker=marker, s=12, **scale
                )
            if norm is not None:
                top = values >= values.sort(descending=True).values[max(1, len(values) // 10) - 1]
                ax.scatter(
                    x[top, 0], x[top, 1], s=60, facecolors="none", edgecolors="tab:blue", lw=0.8
                )
            fig.colorbar(points, ax=ax, label="κ" if norm is None else "weight (log scale)")
            ax.set_title(title, fontsize=10)
            ax.set_aspect("equal")
        levels = sorted(set(kappa.tolist()))
        row[3].boxplot([margin[kappa == k].numpy() for k in levels], whis=(5, 95))
        row[3].set_xticks(range(1, len(levels) + 1), [str(k) for k in levels])
        row[3].set_xlabel("κ under AT")
        row[3].set_ylabel("PM_nat under AT")
        row[3].set_title(f"{toy}: PM_nat for each κ (whiskers 5-95 %)", fontsize=10)
    fig.suptitle(
        "Training points (● class 0, ▲ class 1; — each network's decision boundary), last epoch"
    )
    return save_figure(fig, out, dpi=110, note=TOP10_NOTE)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Runs the demo; returns ``{"accuracy": {toy: {method: {"natural", "pgd20"}}}, "seconds", "figure"}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    count = numeric(AT_LEAST_ONE, integer=True)
    parser.add_argument("--epochs", type=count, default=40, help="epochs per method (default 40)")
    parser.add_argument("--n", type=numeric(Bounds(2), integer=True), default=1000,
                        help="training and test points per toy")  # fmt: skip
    parser.add_argument("--eps", type=numeric(NON_NEGATIVE), default=0.15,
                        help="ℓ∞ radius on the data's scale")  # fmt: skip
    parser.add_argument("--seed", type=numeric(NON_NEGATIVE, integer=True), default=0)
    parser.add_argument("--toys", default="moons,circles", help=f"among {', '.join(TOYS)}")
    parser.add_argument("--out", type=arguments.output_folder("--out"), default=Path("runs/quickstart"),
                        help="figure folder")  # fmt: skip
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args(argv)
    toys = args.toys.split(",")
    unknown = sorted(set(toys) - set(TOYS))
    if unknown:
        raise ValueError(f"Expected --toys among {', '.join(TOYS)}, got {', '.join(unknown)}.")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # networks this small run fastest on one thread
    try:
        return _run(args, toys)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, toys: Sequence[str]) -> Dict[str, Any]:
    start = time.perf_counter()
    accuracy: Dict[str, Dict[str, Dict[str, float]]] = {}
    trained: Dict[str, Trained] = {}
    for i, toy in enumerate(toys):
        make, noise = TOYS[toy]
        generator = torch.Generator().manual_seed(args.seed * 1000 + i)
        train_set, test_set = make(args.n, noise, generator), make(args.n, noise, generator)
        accuracy[toy] = {}
        trained[toy] = Trained(train_set, {}, {})
        for name in METHODS:
            model, weights = train(
                name, train_set, epochs=args.epochs, eps=args.eps, seed=args.seed
            )
            accuracy[toy][name] = evaluation.evaluate(
                model,
                test_set,
                attacks=("natural", "pgd20"),
                eps=args.eps,
                clip=None,
                progress=False,
            )
            accuracy[toy][name]["top10_weight"] = top_share(weights)
            trained[toy].models[name] = model
            trained[toy].weights[name] = weights
    seconds = time.perf_counter() - start

    print(
        f"ε = {args.eps} (ℓ∞), PGD-20 with step ε/4; {args.epochs} epochs, burn-in {args.epochs // 2}"
    )
    print(f"{'data':<8} {'method':<8} {'natural':>8} {'PGD-20':>8} {'weight on top 10 %':>19}")
    for toy, rows in accuracy.items():
        for name, acc in rows.items():
            print(
                f"{toy:<8} {name:<8} {100 * acc['natural']:>7.1f}% {100 * acc['pgd20']:>7.1f}% "
                f"{100 * acc['top10_weight']:>18.1f}%"
            )
    print(
        f"trained and evaluated {len(toys) * len(METHODS)} networks in {seconds:.1f} s "
        f"(1 CPU thread, torch {torch.__version__})"
    )
    figure = None if args.no_figure else draw_figure(trained, args.eps, args.out / "quickstart.png")
    return {"accuracy": accuracy, "seconds": seconds, "figure": figure}


if __name__ == "__main__":
    arguments.run(main, "quickstart.py")
