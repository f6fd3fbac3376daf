"""Figures from the per-epoch ``log.jsonl`` of ``train.py`` (matplotlib optional).

Examples::

    python examples/plots.py runs/at/log.jsonl runs/gairat/log.jsonl --out curves.png
    python examples/plots.py runs/gairat/log.jsonl --histograms --out gairat-hist.png
    python examples/plots.py runs/at runs/gairat --out curves.png       # run folders work too

``curves``: κ mean (×) and median (●) over epochs as in GAIRAT Figure 4 (bottom left), PM_adv mean and
median for the MAIL methods, natural and PGD-20 accuracy on the monitored training (solid) and test
(dashed) subsets (GAIRAT Figure 4, top), the training loss with the learning rate, and the spread of
the instance weights; panels no log has data for are left out. Runs branched from one prefix
(``train.py --init-from``) share its log records: the prefix is drawn once, in black or grey and
labelled with its runs, and each run from its branch point. ``--histograms``: for one run, the
distribution of κ, PM and log10 w over epochs as heat maps, on one epoch axis (a run branched from
a prefix logs κ during the prefix and PM after: each panel is blank where its signal is not logged,
and says which signal is). :func:`plot_row_curves` draws the benchmark's learning curves as small
multiples, one panel per row. Epochs are 0-based, as in ``log.jsonl``. Every figure's path is
printed; without matplotlib nothing is drawn and a message says so.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import arguments
import numpy as np
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


# what a benchmark row's panel shows: (log key, line style, legend text)
_ROW_SERIES = (
    ("test_pgd_acc", "-", "PGD-20 accuracy, monitored test subset"),
    ("test_nat_acc", "--", "natural accuracy, monitored test subset"),
)


def plot_row_curves(rows: Dict[str, Dict[str, Log]], out: Path) -> Optional[Path]:
    """Learning curves as small multiples: one panel per row, its seeds as thin lines of the row's
    colour, on shared axes.

    Runs branched from a shared prefix (the reweighted rows from their base's burn-in) draw the
    prefix once per seed, in grey, and their own epochs in colour from the branch point; the
    base row's own panel does the same, so every panel shows where its rows part. Panels plot the
    monitored test accuracies (natural dashed, PGD-20 solid) in percent, or the training loss for
    logs without monitoring. Accuracy axes start at :func:`accuracy_floor` of the second half's
    values, so converged rows can be told apart; the early epochs below it leave the axis (a note
    says so).

    Args:
        rows: ``{row label: {seed: log records}}``; a row without logs gets an empty panel saying
            so.
        out: the PNG to write.
    """
    plt = import_pyplot(f"the learning curves ({out})")
    if plt is None:
        return None
    logs = {f"{row} seed {seed}": log for row, seeds in rows.items() for seed, log in seeds.items()}
    prefixes, own = shared_prefixes({k: v for k, v in logs.items() if v})
    prefix_of = {label: log for labels, log in prefixes for label in labels}
    monitored = any(key in r for log in logs.values() for r in log for key, *_ in _ROW_SERIES)
    series = _ROW_SERIES if monitored else (("loss", "-", "training loss"),)
    scale = 100.0 if monitored else 1.0
    columns = min(5, len(rows))
    lines = -(-len(rows) // columns)
    fig, grid = plt.subplots(
        lines, columns, figsize=(3.2 * columns, 2.8 * lines), sharex=True, sharey=True,
        squeeze=False,
    )  # fmt: skip
    axes = list(grid.flat)
    for ax in axes[len(rows) :]:
        fig.delaxes(ax)
    colours = [f"C{i}" for i in range(10) if i != 7]  # C7 is grey, left to the prefixes
    for i, (ax, (row, seeds)) in enumerate(zip(axes, rows.items())):
        drawn = [seed for seed, log in seeds.items() if log]
        for seed in drawn:
            label = f"{row} seed {seed}"
            parts = [(prefix_of.get(label, []), "0.55"), (own[label], colours[i % len(colours)])]
            for log, colour in parts:
                for key, style, _ in series:
                    x, y = _series(log, key)
                    ax.plot(x, [scale * v for v in y], style, color=colour, lw=0.9)
        ax.set_title(f"{row} ({len(drawn)} seed{'s' * (len(drawn) != 1)})", fontsize=10)
        if not drawn:
            ax.text(0.5, 0.5, "no log yet", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
        integer_epochs(ax)
    floor = accuracy_floor([r for log in logs.values() for r in log]) if monitored else 0.0
    if floor > 0:
        axes[0].set_ylim(floor, 100.5)
    for ax in grid[:, 0]:
        ax.set_ylabel("%" if monitored else "loss")
    handles = [plt.Line2D([], [], color="k", ls=style, lw=1) for _, style, _ in series]
    handles.append(plt.Line2D([], [], color="0.55", lw=3))
    labels = [text for *_, text in series] + ["shared burn-in (prefix), drawn once per seed"]
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=9, bbox_to_anchor=(0.5, 0))
    note = (
        f"accuracy axes start at {floor:g} %: earlier epochs below it leave the axis"
        if floor
        else ""
    )
    return save_figure(fig, out, note=note)


def accuracy_floor(records: Sequence[Dict[str, Any]]) -> float:
    """Where an accuracy axis starts, in percent: 5 points below the lowest monitored accuracy of
    the second half of the epochs, rounded down to a multiple of 5; 0 if that would be under 20."""
    last = max((r["epoch"] for r in records), default=0)
    late = [
        round(100 * r[key], 6)
        for r in records
        if 2 * r["epoch"] >= last
        for key, *_ in _ROW_SERIES
        if r.get(key) is not None
    ]
    floor = 5 * math.floor(min(late, default=0.0) / 5) - 5
    return float(floor) if floor >= 20 else 0.0


# the histograms of the log: (key, y extent (None: one row per κ = 0..K), what it is)
_HISTOGRAMS = (
    ("kappa_hist", None, "κ"),
    ("margin_hist", (-1.0, 1.0), "PM_adv"),
    ("weight_hist", WEIGHT_BINS[:2], "log10 w"),
)


def _spans(epochs: Sequence[int]) -> List[Tuple[int, int]]:
    """Runs of consecutive epochs, as ``(first, last)``."""
    spans: List[Tuple[int, int]] = []
    for epoch in epochs:
        if spans and epoch == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], epoch)
        else:
            spans.append((epoch, epoch))
    return spans


def _blank_label(log: Log, epochs: Tuple[int, int], key: str) -> str:
    """What a histogram panel's blank epochs hold instead: the other signal, or nothing."""
    records = [r for r in log if epochs[0] <= r["epoch"] <= epochs[1]]
    if key != "kappa_hist" and any("kappa_hist" in r for r in records):
        return "κ epochs" if key == "margin_hist" else "κ epochs:\nno weights"
    if key != "margin_hist" and any("margin_hist" in r for r in records):
        return "PM epochs"
    return "not logged"


_FRACTION_FLOOR = 1e-5  # the histograms' colour scale starts here


def plot_histograms(log: Log, out: Path, title: str = "") -> Optional[Path]:
    """Heat maps over epochs of the κ, PM and log10-weight histograms of one run.

    The panels share the run's epoch axis. A panel is blank over the epochs that do not log its
    histogram and says what they log instead (a MAIL row branched from AT logs κ during the AT
    burn-in and PM after), and a dashed line marks where κ gives way to PM. The weight histogram's
    end bins also count the weights outside [10⁻⁴, 10²] and are labelled so. The colour scale is
    logarithmic, from 10⁻⁵ (about one example in 60,000; empty bins take its colour) to 1, so that
    the few examples a reweighting method weights most stay visible beside the bulk.
    """
    plt = import_pyplot(f"the histograms ({out})")
    if plt is None:
        return None
    from matplotlib.colors import LogNorm

    panels = [panel for panel in _HISTOGRAMS if any(panel[0] in r for r in log)]
    if not panels:
        print(f"no histograms in the log: {out} not drawn.")
        return None
    epochs = (log[0]["epoch"], log[-1]["epoch"])
    switches = [
        b["epoch"] - 0.5
        for a, b in zip(log, log[1:])
        if "kappa_hist" in a and "margin_hist" in b and "kappa_hist" not in b
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (key, extent, label) in zip(axes[0], panels):
        bins = len(next(r[key] for r in log if key in r))
        counts = np.full((bins, epochs[1] - epochs[0] + 1), np.nan)
        for r in log:
            if key in r:
                counts[:, r["epoch"] - epochs[0]] = np.asarray(r[key]) / max(sum(r[key]), 1)
        low, high = (-0.5, bins - 0.5) if extent is None else extent
        image = ax.imshow(
            np.ma.masked_invalid(np.maximum(counts, _FRACTION_FLOOR)),
            origin="lower",
            aspect="auto",
            extent=(epochs[0] - 0.5, epochs[1] + 0.5, low, high),
            cmap="viridis",
            norm=LogNorm(vmin=_FRACTION_FLOOR, vmax=1.0),
        )
        fig.colorbar(image, ax=ax, label="fraction of examples (log; the floor 1e-5: none or few)")
        logged = [r["epoch"] for r in log if key in r]
        missing = [e for e in range(epochs[0], epochs[1] + 1) if e not in set(logged)]
        for first, last in _spans(missing):
            ax.text((first + last) / 2, (low + high) / 2, _blank_label(log, (first, last), key),
                    ha="center", va="center", fontsize=9, color="0.3")  # fmt: skip
        for switch in switches:
            ax.axvline(switch, color="k", ls="--", lw=1)
        if key == "weight_hist":
            width = (high - low) / bins
            ticks = [low + width / 2, *range(int(low) + 1, int(high)), high - width / 2]
            ax.set_yticks(ticks)
            ax.set_yticklabels(
                [f"≤{low + width:g}\n(all <{low:g})", *map(str, ticks[1:-1]),
                 f"≥{high - width:g}\n(all >{high:g})"], fontsize=8,
            )  # fmt: skip
        integer_epochs(ax)
        ax.set_ylabel(label)
        spans = ", ".join(f"{a}–{b}" if a != b else str(a) for a, b in _spans(logged))
        ax.set_title(f"{title} {label}, epochs {spans}".strip(), fontsize=10)
    if switches:
        fig.text(0.5, 0.005, "dashed: κ (burn-in) gives way to PM (MAIL)", ha="center", va="bottom",
                 fontsize=9)  # fmt: skip
    return save_figure(fig, out)


def log_file(path: Path) -> Path:
    """``path`` itself, or a run folder's ``log.jsonl``."""
    return path / "log.jsonl" if path.is_dir() else path


def main(argv: Optional[Sequence[str]] = None) -> Optional[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "logs", nargs="+", type=Path, help="log.jsonl files or run folders (labelled by folder)"
    )
    parser.add_argument("--out", type=arguments.output_file("--out"), default=Path("curves.png"))
    parser.add_argument(
        "--histograms", action="store_true", help="heat maps of the first log instead"
    )
    args = parser.parse_args(argv)
    paths = [log_file(path) for path in args.logs]
    logs = {path.parent.name or str(path): read_log(path) for path in paths}
    empty = [str(p) for p, log in zip(paths, logs.values()) if not log]
    if empty:
        raise ValueError(
            f"Expected per-epoch records in every log, got none in {', '.join(empty)}."
        )
    if args.histograms:
        label, log = next(iter(logs.items()))
        return plot_histograms(log, args.out, label)
    return plot_curves(logs, args.out)


if __name__ == "__main__":
    arguments.run(main, "plots.py")
