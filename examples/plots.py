"""Figures from the per-epoch ``log.jsonl`` of ``train.py`` (matplotlib optional).

Examples::

    python examples/plots.py runs/at/log.jsonl runs/gairat/log.jsonl --out curves.png
    python examples/plots.py runs/gairat/log.jsonl --histograms --out gairat-hist.png

``curves``: κ mean (×) and median (●) over epochs as in GAIRAT Figure 4 (bottom left), PM_adv mean and
median for the MAIL methods, natural and PGD-20 accuracy on the monitored training (solid) and test
(dashed) subsets (GAIRAT Figure 4, top), the training loss with the learning rate, and the spread of
the instance weights. ``--histograms``: for one run, the distribution of κ, PM and log10 w over epochs
as heat maps. Without matplotlib nothing is drawn and a message says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from training import WEIGHT_BINS, read_log

Log = List[Dict[str, Any]]


def import_pyplot(what: str) -> Any:
    """``matplotlib.pyplot`` with a file-only backend, or None after saying that ``what`` is skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: {what} skipped (pip install matplotlib).")
        return None
    return plt


def save_figure(fig: Any, out: Path, dpi: int = 120) -> Path:
    """Lays ``fig`` out, writes it to ``out`` (creating the folder) and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _series(log: Log, key: str) -> tuple[list[int], list[float]]:
    points = [(r["epoch"] + 1, r[key]) for r in log if key in r]
    return [e for e, _ in points], [v for _, v in points]


def plot_curves(logs: Dict[str, Log], out: Path) -> Optional[Path]:
    """Learning curves of several runs, one colour each (see the module docstring)."""
    plt = import_pyplot(f"the learning curves ({out})")
    if plt is None:
        return None
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    (kappa, margin, weights), (nat, pgd, loss) = axes
    for i, (label, log) in enumerate(logs.items()):
        colour = f"C{i}"
        for ax, key, marker in (
            (kappa, "kappa_median", "o"),
            (kappa, "kappa_mean", "x"),
            (margin, "margin_median", "o"),
            (margin, "margin_mean", "x"),
        ):
            x, y = _series(log, key)
            if x:
                ax.plot(
                    x,
                    y,
                    marker=marker,
                    ms=3,
                    lw=1,
                    color=colour,
                    label=f"{label} {key.split('_')[1]}",
                )
        for ax, metric in ((nat, "nat"), (pgd, "pgd")):
            for subset, style in (("train", "-"), ("test", "--")):
                x, y = _series(log, f"{subset}_{metric}_acc")
                if x:
                    ax.plot(x, [100 * v for v in y], style, color=colour, label=f"{label} {subset}")
        x, y = _series(log, "loss")
        loss.plot(x, y, color=colour, label=label)
        for key, style in (("weight_max", "-"), ("weight_std", ":"), ("weight_min", "--")):
            x, y = _series(log, key)
            if x:
                weights.plot(x, y, style, color=colour, label=f"{label} {key.split('_')[1]}")
    x, lr = _series(next(iter(logs.values())), "lr")
    rate = loss.twinx()
    rate.step(x, lr, where="post", color="grey", lw=0.8)
    rate.set_ylabel("learning rate (grey)")
    rate.set_yscale("log")
    titles = (
        (kappa, "geometry value κ: median ●, mean ×", "κ"),
        (margin, "PM_adv: median ●, mean ×", "PM"),
        (weights, "instance weights w (normalised)", "w"),
        (nat, "natural accuracy: train —, test --", "%"),
        (pgd, "PGD-20 accuracy: train —, test --", "%"),
        (loss, "training loss", "loss"),
    )
    for ax, title, ylabel in titles:
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if weights.get_lines():
        weights.set_yscale("log")
    return save_figure(fig, out)


def plot_histograms(log: Log, out: Path, title: str = "") -> Optional[Path]:
    """Heat maps over epochs of the κ, PM and log10-weight histograms of one run."""
    plt = import_pyplot(f"the histograms ({out})")
    if plt is None:
        return None
    low, high, _ = WEIGHT_BINS
    panels = [
        (key, extent, label)
        for key, extent, label in (
            ("kappa_hist", None, "κ"),
            ("margin_hist", (-1.0, 1.0), "PM_adv"),
            ("weight_hist", (low, high), "log10 w"),
        )
        if any(key in r for r in log)
    ]
    if not panels:
        print(f"no histograms in the log: {out} not drawn.")
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (key, extent, label) in zip(axes[0], panels):
        rows = [r for r in log if key in r]
        counts = [[c / max(sum(r[key]), 1) for c in r[key]] for r in rows]
        epochs = (rows[0]["epoch"] + 0.5, rows[-1]["epoch"] + 1.5)
        bins = (-0.5, len(counts[0]) - 0.5) if extent is None else extent
        image = ax.imshow(
            list(map(list, zip(*counts))),
            origin="lower",
            aspect="auto",
            extent=(*epochs, *bins),
            cmap="viridis",
        )
        fig.colorbar(image, ax=ax, label="fraction of examples")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{title} {label} over epochs".strip())
    return save_figure(fig, out)


def main(argv: Optional[Sequence[str]] = None) -> Optional[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "logs", nargs="+", type=Path, help="log.jsonl files (labelled by their folder)"
    )
    parser.add_argument("--out", type=Path, default=Path("curves.png"))
    parser.add_argument(
        "--histograms", action="store_true", help="heat maps of the first log instead"
    )
    args = parser.parse_args(argv)
    logs = {path.parent.name or str(path): read_log(path) for path in args.logs}
    empty = [str(p) for p, log in zip(args.logs, logs.values()) if not log]
    if empty:
        raise ValueError(
            f"Expected per-epoch records in every log, got none in {', '.join(empty)}."
        )
    if args.histograms:
        label, log = next(iter(logs.items()))
        path = plot_histograms(log, args.out, label)
    else:
        path = plot_curves(logs, args.out)
    if path is not None:
        print(f"saved {path}")
    return path


if __name__ == "__main__":
    main()
