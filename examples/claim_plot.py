"""The claim figure of the MNIST benchmark: every claim's paired difference at a glance.

One row per claim, one panel per metric (PGD-40 and AutoAttack side by side): the difference
method − baseline in percentage points with its 95 % interval — solid with a filled dot where it is the
seed-level t interval, dashed with a hollow square where only one seed pairs and the interval is the
image-level bootstrap of that seed — the per-seed differences as small dots, and a line at 0. The
colour is the verdict; the row's label names the claim, its comparison and its verdict per metric.
Drawn from :func:`paired_stats.claims_table`'s output (or the benchmark JSON's ``"claims"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from plots import import_pyplot, save_figure

METRIC_TITLES = {"pgd40": "PGD-40", "aa": "AutoAttack"}

# verdict -> colour; None: a metric the claim states no direction for (drawn for context)
VERDICT_COLOURS: Dict[Optional[str], str] = {
    "shown": "tab:green",
    "contradicted": "tab:red",
    "not shown": "0.25",
    None: "0.6",
}


def _verdict(result: Mapping[str, Any]) -> str:
    if result["direction"] is None:
        return "no claim"
    return result["verdict"] or "no paired seed"


def _label(claim_id: str, claim: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> str:
    """'C1: GAIRAT − AT (3 seeds)' over 'PGD-40 shown · AutoAttack not shown'."""
    first = next(iter(claim.values()))
    seeds = max(m["n_seeds"] for m in claim.values())
    head = f"{claim_id}: {first['method']} − {first['baseline']} ({seeds} seed{'s' * (seeds != 1)})"
    verdicts = [f"{METRIC_TITLES.get(m, m)} {_verdict(claim[m])}" for m in metrics if m in claim]
    return head + "\n" + " · ".join(verdicts)


def plot_claims(
    claims: Mapping[str, Mapping[str, Mapping[str, Any]]],
    path: Path,
    metrics: Sequence[str] = ("pgd40", "aa"),
) -> Optional[Path]:
    """Draws the claim figure (see the module docstring) to ``path``, 1,000 pixels wide.

    Args:
        claims: ``{claim id: {metric: {"method", "baseline", "direction", "n_seeds", "mean",
            "ci95", "interval", "verdict", "seeds": {k: {"diff", …}}}}}`` in percent, as
            :func:`paired_stats.claims_table` returns it. A metric with no paired seed (``"ci95"``
            ``None``) is left out of its panel.
        path: the PNG to write.
        metrics: the panels, left to right.

    Returns:
        ``path``, or ``None`` without matplotlib (after saying so).

    Raises:
        ValueError: no claims.
    """
    if not claims:
        raise ValueError("Expected at least one claim to draw, got none.")
    plt = import_pyplot(f"the claim figure ({path})")
    if plt is None:
        return None
    ids = list(claims)
    fig, grid = plt.subplots(
        1, len(metrics), figsize=(10, 1.6 + 0.62 * len(ids)), sharey=True, squeeze=False
    )
    rows = {claim_id: len(ids) - 1 - i for i, claim_id in enumerate(ids)}  # first claim on top
    for ax, metric in zip(grid[0], metrics):
        for claim_id, y in rows.items():
            result = claims[claim_id].get(metric)
            if result is None or result["ci95"] is None:
                continue
            colour = VERDICT_COLOURS[result["verdict"] if result["direction"] is not None else None]
            over_seeds = result["interval"] == "seeds"
            mean, (lo, hi) = result["mean"], result["ci95"]
            bar = ax.errorbar(
                mean, y, xerr=[[mean - lo], [hi - mean]], fmt="o" if over_seeds else "s",
                color=colour, mfc=colour if over_seeds else "white", ms=7, capsize=5,
                lw=2.2 if over_seeds else 1.4, zorder=3,
            )  # fmt: skip
            bar[2][0].set_linestyle("-" if over_seeds else "--")
            diffs = [seed["diff"] for seed in result["seeds"].values()]
            ax.plot(diffs, [y - 0.22] * len(diffs), ".", color="k", ms=5, alpha=0.7, zorder=4)
        ax.axvline(0.0, color="k", lw=0.8, zorder=1)
        ax.set_title(f"{METRIC_TITLES.get(metric, metric)}: method − baseline")
        ax.set_xlabel("difference in accuracy (percentage points)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(-0.7, len(ids) - 0.4)
    first = grid[0][0]
    first.set_yticks(list(rows.values()))
    first.set_yticklabels([_label(c, claims[c], metrics) for c in rows], fontsize=9)
    handles = [
        plt.Line2D([], [], color="0.25", marker="o", lw=2.2, ms=7),
        plt.Line2D([], [], color="0.25", marker="s", mfc="white", ls="--", lw=1.4, ms=7),
        plt.Line2D([], [], color="k", marker=".", ls="", ms=5),
        *(plt.Line2D([], [], color=c, lw=6) for c in VERDICT_COLOURS.values()),
    ]
    labels = [
        "95 % t interval over seeds (mean of seeds)",
        "95 % bootstrap interval over images (one seed)",
        "per-seed difference",
        "shown", "contradicted", "not shown", "no claim on this metric",
    ]  # fmt: skip
    # below the panels: save_figure's "tight" bounding box takes it in
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, 0))
    return save_figure(fig, Path(path), dpi=100)
