"""Figures from the per-epoch ``log.jsonl`` of ``train.py`` (matplotlib optional).

Examples::

    python examples/plots.py runs/at/log.jsonl runs/gairat/log.jsonl --out curves.png
    python examples/plots.py runs/gairat/log.jsonl --histograms --out gairat-hist.png

``curves``: κ mean (×) and median (●) over epochs as in GAIRAT Figure 4 (bottom left), PM_adv mean and
median for the MAIL methods, natural and PGD-20 accuracy on the monitored training (solid) and test
(dashed) subsets (GAIRAT Figure 4, top), the training loss with the learning rate, and the spread of
the instance weights; panels no log has data for are left out. Runs branched from one prefix
(``train.py --init-from``) share its log records: the prefix is drawn once, in black or grey and
labelled with its runs, and each run from its branch point. ``--histograms``: for one run, the
distribution of κ, PM and log10 w over epochs as heat maps. Epochs are 0-based, as in ``log.jsonl``.
Every figure's path is printed; without matplotlib nothing is drawn and a message says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from monitoring import WEIGHT_BINS
from run_files import read_log

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


def save_figure(fig: Any, out: Path, dpi: int = 120, note: str = "") -> Path:
    """Lays ``fig`` out (with ``note`` as a caption under it), writes it to ``out`` (creating the
    folder), closes it, and prints where it went."""
    import matplotlib.pyplot as plt

    if note:
        fig.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=9, wrap=True)
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")  # "tight" keeps a legend beside the axes
    plt.close(fig)
    print(f"figure: {out}")
    return out


def integer_epochs(ax: Any) -> None:
    """Epoch axes tick at whole (0-based) epochs only."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch (0-based)")


def _series(log: Log, key: str) -> Tuple[List[int], List[float]]:
    points = [(r["epoch"], r[key]) for r in log if key in r]
    return [e for e, _ in points], [v for _, v in points]


def shared_prefixes(logs: Dict[str, Log]) -> Tuple[List[Tuple[List[str], Log]], Dict[str, Log]]:
    """Splits runs branched from a common prefix (``train.py --init-from`` copies the prefix's log
    records) into the distinct shared prefixes and each run's own part.

    A run's prefix is the longest run of leading records it shares, record for record, with another
    log. Its own part starts at the last shared record, so its curve continues from the branch point.

    Returns:
        ``(prefixes, own)``: each distinct shared prefix once, with the labels of the runs that
        branch from it, and every run's records from its branch point on (all of them for a run
        that shares nothing).
    """

    def common(a: Log, b: Log) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    prefixes: Dict[str, Tuple[List[str], Log]] = {}
    own: Dict[str, Log] = {}
    for label, log in logs.items():
        shared = max((common(log, other) for k, other in logs.items() if k != label), default=0)
        if shared:
            key = json.dumps(log[:shared], sort_keys=True)
            prefixes.setdefault(key, ([], log[:shared]))[0].append(label)
        own[label] = log[max(shared - 1, 0) :]
    return list(prefixes.values()), own


# (y label, title, [(log key, marker, line style, what it is)], scale)
_PANELS: Tuple[Tuple[str, str, Tuple[Tuple[str, str, str, str], ...], float], ...] = (
    ("κ", "geometry value κ: median ●, mean ×",
     (("kappa_median", "o", "-", "median"), ("kappa_mean", "x", "-", "mean")), 1.0),
    ("PM", "PM_adv: median ●, mean ×",
     (("margin_median", "o", "-", "median"), ("margin_mean", "x", "-", "mean")), 1.0),
    ("w", "instance weights w (normalised): max —, std ··, min --",
     (("weight_max", ".", "-", "max"), ("weight_std", ".", ":", "std"),
      ("weight_min", ".", "--", "min")), 1.0),
    ("%", "natural accuracy: train —, test --",
     (("train_nat_acc", ".", "-", "train"), ("test_nat_acc", ".", "--", "test")), 100.0),
    ("%", "PGD-20 accuracy: train —, test --",
     (("train_pgd_acc", ".", "-", "train"), ("test_pgd_acc", ".", "--", "test")), 100.0),
    ("loss", "training loss (learning rate grey)", (("loss", ".", "-", ""),), 1.0),
)  # fmt: skip


def plot_curves(logs: Dict[str, Log], out: Path) -> Optional[Path]:
    """Learning curves of several runs, one colour each (see the module docstring).

    A prefix that branched runs share is drawn once, in black or grey and labelled with the runs
    that branch from it, and each run from its branch point. Panels with no data in any log (PM for
    runs without MAIL, weights for runs without reweighting) are left out; every point carries a
    marker, so a one-epoch series shows.
    """
    plt = import_pyplot(f"the learning curves ({out})")
    if plt is None:
        return None
    prefixes, own = shared_prefixes(logs)
    greys = ("k", "0.4", "0.65")  # one shade per shared prefix, labelled by its branches
    lines = [
        (f"prefix of {', '.join(runs)}", log, greys[i % len(greys)])
        for i, (runs, log) in enumerate(prefixes)
    ]
    colours = [f"C{i}" for i in range(10) if i != 7]  # C7 is grey, left to the prefixes
    lines += [(label, log, colours[i % len(colours)]) for i, (label, log) in enumerate(own.items())]
    panels = [
        panel
        for panel in _PANELS
        if any(key in r for log in logs.values() for r in log for key, *_ in panel[2])
    ]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, grid = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(panels) :]:
        fig.delaxes(ax)
    for ax, (ylabel, title, series, scale) in zip(axes, panels):
        for _, log, colour in lines:
            for key, marker, style, _ in series:
                x, y = _series(log, key)
                if x:
                    ax.plot(x, [scale * v for v in y], style, marker=marker, ms=3, lw=1,
                            color=colour)  # fmt: skip
        if ylabel == "w" and ax.get_lines():
            ax.set_yscale("log")
        if ylabel == "loss":
            x, lr = _series(max(logs.values(), key=len), "lr")
            rate = ax.twinx()
            rate.step(x, lr, where="post", color="grey", lw=0.8)
            rate.set_ylabel("learning rate (grey)")
            rate.set_yscale("log")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        integer_epochs(ax)
    # one legend for the figure: a colour per run (the titles say what markers and styles mean)
    fig.legend(
        [plt.Line2D([], [], color=colour, lw=2) for _, _, colour in lines],
        [label for label, _, _ in lines],
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=9,
    )
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
        epochs = (rows[0]["epoch"] - 0.5, rows[-1]["epoch"] + 0.5)
        bins = (-0.5, len(counts[0]) - 0.5) if extent is None else extent
        image = ax.imshow(
            list(map(list, zip(*counts))),
            origin="lower",
            aspect="auto",
            extent=(*epochs, *bins),
            cmap="viridis",
        )
        fig.colorbar(image, ax=ax, label="fraction of examples")
        integer_epochs(ax)
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
        return plot_histograms(log, args.out, label)
    return plot_curves(logs, args.out)


if __name__ == "__main__":
    main()
