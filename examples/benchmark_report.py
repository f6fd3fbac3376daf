"""The MNIST benchmark's report: its JSON, its tables and its figures, from the runs' evaluations.

``reproduce.py``'s report stage calls :func:`write_report` for a spec with ``"claims"``. Each run
folder holds ``eval-last-<pass>.json`` per evaluation pass of the spec (``evaluate.py --name
<pass>``) with every image's outcome under every attack; from those it writes

- ``<name>.json``: ``{"setting", "rows", "claims"}`` in percent — every row's accuracy per seed and
  metric (:func:`paired_stats.rows_table`, with the mean and sd over seeds), what AutoAttack breaks
  beyond its gradient attacks (:func:`beyond_gradient`) and, for a reweighting row, its last
  epoch's weights (:func:`last_weights`); and every claim's paired difference method − baseline
  per metric (:func:`paired_stats.claims_table`), each keyed by the claim's id;
- ``<name>-tables.md``: the rows (mean ± sd over seeds, with the sampling error of one cell), the
  weights, AutoAttack beyond its gradient attacks, and the claims (mean, 95 % interval, verdict,
  per-seed McNemar p) as markdown tables for the page;
- ``claims.png`` (:func:`claim_plot.plot_claims`), ``rows.png`` (every row's PGD-40 and AA side by
  side with their intervals), ``curves.png`` (:func:`plots.plot_row_curves`) and
  ``histograms-<LABEL>.png`` (:func:`plots.plot_histograms`, the first seed of each row).

A run not trained or not evaluated yet is listed as missing, never an error, so the report can be
written between the sessions of a partly finished benchmark.
"""

from __future__ import annotations

import datetime
import json
import math
import shlex
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import evaluate
import numpy as np
import paired_stats
import plots
import run_files
from claim_plot import METRIC_TITLES, plot_claims
from tables import COLUMN_OF_ATTACK

METRICS = ("nat", "pgd40", "cw", "aa", "apgd_ce", "apgd_t", "lspgd")
TITLES = {
    **METRIC_TITLES,
    "nat": "natural",
    "cw": "CW∞",
    "aa": "AA",
    "apgd_ce": "APGD-CE",
    "apgd_t": "APGD-T",
    "lspgd": "LS-PGD-20",
}
JUDGED = ("pgd40", "aa")  # the metrics the claims state directions for

Records = Dict[str, Dict[paired_stats.Seed, Dict[str, np.ndarray]]]


def read_run(
    folder: Path, passes: Sequence[str], metric_of: Mapping[str, str]
) -> Tuple[Dict[str, np.ndarray], Dict[str, Any], List[str]]:
    """One run's per-image outcomes by metric, the settings they came with, and what is missing.

    An evaluation counts only if it is of the run's final checkpoint (its ``epochs_done`` is the
    run's ``epochs``); an attack it has not finished is missing.

    Returns:
        ``(outcomes, settings, missing)``: ``{metric: (n,) bool}``; ``{"eps", "device", "torch",
        "seconds", "attacks": {metric: {"attack", "options", "images"}}}`` of the evaluations read
        (``seconds``: their attacks' total); one line per missing pass or attack.
    """
    outcomes: Dict[str, np.ndarray] = {}
    settings: Dict[str, Any] = {"attacks": {}}
    missing: List[str] = []
    for name in passes:
        path = folder / f"eval-last-{name}.json"
        record = run_files.read_json(path)
        if not record:
            missing.append(f"pass {name!r}: no {path.name}")
            continue
        final, done = record["config"].get("epochs"), run_files.epochs_done(record)
        if done != final:
            missing.append(f"pass {name!r}: evaluated after {done} of {final} epochs")
            continue
        flags = evaluate.read_records(record)
        for attack, params in record["settings"]["attacks"].items():
            metric = metric_of.get(attack, attack)
            if attack not in flags:
                missing.append(f"pass {name!r}: {attack} not evaluated yet")
                continue
            outcomes[metric] = flags[attack]
            settings["attacks"][metric] = {
                "attack": attack,
                "options": params,
                "images": int(flags[attack].size),
            }
        settings.update(
            eps=record["settings"]["eps"],
            device=record["device"],
            torch=record["torch"],
            seconds=settings.get("seconds", 0.0) + sum(record.get("seconds", {}).values()),
        )
    return outcomes, settings, missing


def _common_images(records: Records) -> Tuple[Records, Dict[str, int]]:
    """Every metric's outcomes cut to the images every run evaluated (the first n of them), so that
    any two runs pair image by image; and that n per metric."""
    sizes: Dict[str, int] = {}
    for seeds in records.values():
        for outcomes in seeds.values():
            for metric, flags in outcomes.items():
                sizes[metric] = min(sizes.get(metric, flags.size), flags.size)
    cut = {
        row: {
            seed: {m: f[: sizes[m]] for m, f in outcomes.items()}
            for seed, outcomes in seeds.items()
        }
        for row, seeds in records.items()
    }
    return cut, sizes


def _spread(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and sd (n − 1) of the seeds' accuracies, in percent; no sd for one seed."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return round(mean, 2), None
    return round(mean, 2), round(
        math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)), 2
    )


def sampling_error(percent: float, n: int) -> float:
    """One standard error of an accuracy on ``n`` images, √(p(1 − p)/n), in percent."""
    p = percent / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def rows_json(
    spec: Mapping[str, Any], records: Records, missing: Mapping[str, Mapping[int, List[str]]]
) -> Dict[str, Dict[str, Any]]:
    """The JSON's ``"rows"``: per row ``"seeds"`` (:func:`paired_stats.rows_table`), and per metric
    the ``"mean"`` and ``"sd"`` over its seeds, the ``"images"`` and the sampling error ``"se"`` of
    one seed at the mean (√(p(1 − p)/n)); ``"missing"`` lists the runs or evaluations not there yet."""
    table = paired_stats.rows_table({row: seeds for row, seeds in records.items() if seeds})
    out: Dict[str, Dict[str, Any]] = {}
    for row in spec["rows"]:
        label = row["label"]
        seeds = table.get(label, {"seeds": {}})["seeds"]
        entry: Dict[str, Any] = {"seeds": seeds, "metrics": {}}
        for metric in METRICS:
            values = [s[metric] for s in seeds.values() if metric in s]
            if not values:
                continue
            mean, sd = _spread(values)
            n = min(o[metric].size for o in records[label].values() if metric in o)
            entry["metrics"][metric] = {
                "mean": mean,
                "sd": sd,
                "n_seeds": len(values),
                "images": n,
                "se": round(sampling_error(mean, n), 2),
            }
        lines = {str(k): v for k, v in missing.get(label, {}).items() if v}
        if lines:
            entry["missing"] = lines
        out[label] = entry
    return out


def last_weights(log: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
    """The instance weights of a run's last epoch, from its log: ``min``, ``max``, ``std`` and the
    effective sample size ``ess`` in percent of the examples, (Σw)² / (N·Σw²) = m² / (m² + s²) for
    weights of mean m and standard deviation s (100 for uniform weights). Empty for a run that does
    not reweight."""
    if not log or "weight_std" not in log[-1]:
        return {}
    r = log[-1]
    mean, std = r["weight_mean"], r["weight_std"]
    return {
        "min": r["weight_min"],
        "max": r["weight_max"],
        "std": std,
        "ess": round(100 * mean**2 / (mean**2 + std**2), 1),
    }


def beyond_gradient(outcomes: Mapping[str, np.ndarray]) -> Optional[Dict[str, float]]:
    """What AutoAttack breaks beyond its two gradient attacks run on their own, on one run's AA
    images, in percent: ``"apgd"``, the accuracy under APGD-CE and APGD-T together (images robust to
    both); ``"aa"``; and ``"gap"``, the images robust to both that AA broke — the breaks of its FAB-T
    and Square (up to the attacks' random starts). A gap well above the baselines' is the signature
    of gradient masking: a black-box attack finds what the gradient attacks miss. ``None`` unless
    the run has all three."""
    if not {"aa", "apgd_ce", "apgd_t"} <= outcomes.keys():
        return None
    aa = outcomes["aa"]
    both = outcomes["apgd_ce"][: aa.size] & outcomes["apgd_t"][: aa.size]
    return {
        "apgd": round(100 * float(both.mean()), 2),
        "aa": round(100 * float(aa.mean()), 2),
        "gap": round(100 * float((both & ~aa).mean()), 2),
    }


def setting_json(
    spec: Mapping[str, Any],
    out_dir: Path,
    runs: Sequence[Mapping[str, Any]],
    evaluations: Sequence[Mapping[str, Any]],
    images: Mapping[str, int],
) -> Dict[str, Any]:
    """The JSON's ``"setting"``: data, threat model, model, recipe, seeds, evaluation and commands."""
    configs = [run_files.read_json(Path(r["folder"]) / "config.json") for r in runs]
    config: Dict[str, Any] = next((c["config"] for c in configs if c.get("config")), {})
    logs = [run_files.read_log(Path(r["folder"]) / "log.jsonl") for r in runs]
    examples = next((log[-1]["examples"] for log in logs if log and "examples" in log[-1]), None)
    seeds: Dict[str, List[int]] = {}
    for run in runs:
        seeds.setdefault(run["label"], []).append(int(run["seed"]))
    found = [e for e in evaluations if e["attacks"]]
    passes = spec.get("evaluations", [])
    return {
        "data": config.get("data"),
        "train_size": config.get("train_size") or examples,
        "test_size": images.get("nat"),
        "aa_size": images.get("aa"),
        "images": dict(images),
        "eps": found[0]["eps"] if found else None,
        "model": config.get("model"),
        "recipe": spec.get("preset"),
        "epochs": config.get("epochs"),
        "seeds": {label: sorted(k) for label, k in seeds.items()},
        "evaluation": {m: s for e in found for m, s in e["attacks"].items()},
        "devices": sorted({e["device"] for e in found}),
        "torch": sorted({e["torch"] for e in found}),
        "compute": compute(logs, evaluations),
        "date": datetime.date.today().isoformat(),
        "commands": [
            f"python examples/reproduce.py {spec['name']} --out {out_dir}",
            *(
                f"python examples/evaluate.py RUN_FOLDER {shlex.join(p['args'])} --name {p['name']}"
                for p in passes
            ),
        ],
    }


def _cell(stats: Optional[Mapping[str, Any]], seeds: int) -> str:
    """``mean ± sd``, with the number of seeds if fewer than the row's (a run not evaluated)."""
    if stats is None:
        return "—"
    fewer = "" if stats["n_seeds"] == seeds else f" ({stats['n_seeds']} of {seeds} seeds)"
    return _mean_sd(stats["mean"], stats["sd"]) + fewer


def _mean_sd(mean: float, sd: Optional[float]) -> str:
    """``98.75 ± 0.08``, unbroken (narrow no-break spaces) so a table cell does not wrap it; the
    mean alone without an sd."""
    return f"{mean:.2f}" + ("" if sd is None else f"\u202f±\u202f{sd:.2f}")


def compute(
    logs: Sequence[Sequence[Mapping[str, Any]]], evaluations: Sequence[Mapping[str, Any]]
) -> Dict[str, Any]:
    """The compute the runs logged: training epochs and hours (the per-epoch monitor included) and
    evaluation hours, each process's seconds summed. A prefix's records are copied into the log of
    every row that branches from it; each is counted once."""
    epochs = {json.dumps(r, sort_keys=True): r for log in logs for r in log if "seconds" in r}
    train = sum(r["seconds"] + r.get("seconds_monitor", 0.0) for r in epochs.values())
    evaluation = sum(e.get("seconds", 0.0) for e in evaluations)  # not `evaluate`: the module
    return {
        "epochs": len(epochs),
        "train_hours": round(train / 3600, 3),
        "eval_hours": round(evaluation / 3600, 3),
    }


def markdown(report: Mapping[str, Any]) -> str:
    """The rows and claims tables of ``<name>-tables.md``."""
    rows, claims = report["rows"], report["claims"]
    metrics = [m for m in METRICS if any(m in r["metrics"] for r in rows.values())]
    lines = [
        "### Rows: accuracy in percent, mean ± sd over seeds (last epoch)",
        "",
        "| row | seeds | " + " | ".join(TITLES.get(m, m) for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for label, row in rows.items():
        done = len(row["seeds"])
        cells = [_cell(row["metrics"].get(m), done) for m in metrics]
        lines.append(f"| {label} | {done} | " + " | ".join(cells) + " |")
    errors = []
    for metric in metrics:
        stats = [r["metrics"][metric] for r in rows.values() if metric in r["metrics"]]
        worst = max(s["se"] for s in stats)
        errors.append(f"{TITLES.get(metric, metric)} ±{worst:.2f} (n = {stats[0]['images']:,})")
    lines += [
        "",
        "Sampling error of one seed's accuracy (one standard error √(p(1 − p)/n) on n test images, "
        "the largest over the rows): " + ", ".join(errors) + ".",
    ]
    spent = report["setting"].get("compute")
    if spent:
        lines += [
            "",
            f"Compute logged: {spent['epochs']} training epochs, {spent['train_hours']:.1f} h of "
            f"training (the per-epoch monitor included) and {spent['eval_hours']:.1f} h of "
            "evaluation, process-hours summed over the processes that ran side by side.",
        ]
    weighted = [(label, row["weights"]) for label, row in rows.items() if row.get("weights")]
    if weighted:
        lines += [
            "",
            "Instance weights at the last epoch (normalised to mean 1 per batch; ESS: effective "
            "sample size m²/(m² + s²), in % of the training examples):",
            "",
            "| row | seed | min | max | sd | ESS % |",
            "|---|---|---|---|---|---|",
            *(
                f"| {label} | {seed} | {w['min']:.2g} | {w['max']:.3g} | {w['std']:.3g} | "
                f"{w['ess']:.1f} |"
                for label, by_seed in weighted
                for seed, w in by_seed.items()
            ),
        ]
    gaps = [
        (label, row["beyond_gradient"]) for label, row in rows.items() if "beyond_gradient" in row
    ]
    if gaps:
        lines += [
            "",
            "AutoAttack beyond its gradient attacks (on the AA images, mean ± sd over seeds): "
            "robust to APGD-CE and APGD-T each run on their own, under AA, and the images robust "
            "to both that AA broke (its FAB-T and Square):",
            "",
            "| row | seeds | APGD-CE and APGD-T | AA | broken only by FAB-T or Square |",
            "|---|---|---|---|---|",
        ]
        for label, by_seed in gaps:
            keys = ("apgd", "aa", "gap")  # the columns
            cells = [_mean_sd(*_spread([g[k] for g in by_seed.values()])) for k in keys]
            lines.append(f"| {label} | {len(by_seed)} | " + " | ".join(cells) + " |")
    missing = [
        f"- {label} seed {seed}: {'; '.join(what)}"
        for label, row in rows.items()
        for seed, what in row.get("missing", {}).items()
    ]
    if missing:
        lines += ["", "Not there yet:", "", *missing]
    lines += [
        "",
        "### Claims: method − baseline in percentage points, 95 % interval",
        "",
        "Each claim under the metrics it states a direction for (the others are in the JSON and, "
        "grey, in the claims figure).",
        "",
        "| claim | comparison | metric | claimed | mean | 95 % interval | over | verdict "
        "| McNemar p per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for claim_id, by_metric in claims.items():
        for metric in JUDGED:
            c = by_metric.get(metric)
            if c is None or c["direction"] is None:
                continue
            claimed = {1: "gain", -1: "loss"}[c["direction"]]
            interval = "—" if c["ci95"] is None else _interval(*c["ci95"])
            mean = "—" if c["mean"] is None else _signed(c["mean"])
            over = {"seeds": f"{c['n_seeds']} seeds (t)", "images": "images (1 seed)"}
            p = ", ".join(f"{k}: {s['mcnemar_p']:.3g}" for k, s in c["seeds"].items()) or "—"
            lines.append(
                f"| {claim_id} | {c['method']} − {c['baseline']} | {TITLES.get(metric, metric)} | "
                f"{claimed} | {mean} | {interval} | {over.get(c['interval'], '—')} | "
                f"{c['verdict'] or '—'} | {p} |"
            )
    return "\n".join(lines) + "\n"


def _signed(points: float) -> str:
    """``+0.12`` or ``−0.62``: a difference with its sign, the minus typeset."""
    return f"{points:+.2f}".replace("-", "−")


def _interval(lo: float, hi: float) -> str:
    """``[−1.36, +0.12]``, unbroken (a no-break space), so a table cell does not wrap it."""
    return f"[{_signed(lo)},\u00a0{_signed(hi)}]"


def plot_rows(rows: Mapping[str, Mapping[str, Any]], path: Path) -> Optional[Path]:
    """Every row's PGD-40 and AA accuracy side by side with 95 % intervals: the t interval over its
    seeds (two or more), else the binomial interval ±1.96·√(p(1 − p)/n) of its one seed; the
    seeds as small dots."""
    plt = plots.import_pyplot(f"the rows figure ({path})")
    if plt is None:
        return None
    labels = [label for label, row in rows.items() if any(m in row["metrics"] for m in JUDGED)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * len(labels) + 2), 4.5))
    for offset, metric, colour in ((-0.17, "pgd40", "tab:blue"), (0.17, "aa", "tab:orange")):
        for x, label in enumerate(labels):
            stats = rows[label]["metrics"].get(metric)
            if stats is None:
                continue
            seeds = [s[metric] for s in rows[label]["seeds"].values() if metric in s]
            if len(seeds) > 1:
                interval = paired_stats.seed_interval(seeds)
                lo, hi, marker = interval.lo, interval.hi, "o"
            else:
                half = 1.96 * sampling_error(seeds[0], stats["images"])
                lo, hi, marker = seeds[0] - half, seeds[0] + half, "s"
            mean = stats["mean"]
            ax.errorbar(x + offset, mean, yerr=[[mean - lo], [hi - mean]], fmt=marker, color=colour,
                        mfc=colour if marker == "o" else "white", capsize=4, ms=6)  # fmt: skip
            ax.plot([x + offset] * len(seeds), seeds, ".", color="k", ms=4, alpha=0.7)
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 100.0))  # an interval past 0 or 100 % runs off the axis
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("PGD-40 and AutoAttack accuracy per row (last epoch)")
    ax.grid(axis="y", alpha=0.3)
    handles = [
        plt.Line2D([], [], color="tab:blue", marker="o", ls=""),
        plt.Line2D([], [], color="tab:orange", marker="o", ls=""),
        plt.Line2D([], [], color="0.3", marker="o", ls="-"),
        plt.Line2D([], [], color="0.3", marker="s", mfc="white", ls="-"),
        plt.Line2D([], [], color="k", marker=".", ls=""),
    ]
    names = [
        "PGD-40",
        "AutoAttack",
        "mean, 95 % t interval over seeds",
        "one seed, 95 % interval over images",
        "seed",
    ]
    fig.legend(handles, names, loc="upper center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 0))
    return plots.save_figure(fig, path, dpi=100)


def write_report(
    spec: Mapping[str, Any], out_dir: Path, runs: Sequence[Mapping[str, Any]]
) -> List[Path]:
    """Writes the benchmark's JSON, tables and figures (see the module docstring) to ``out_dir``.

    Args:
        spec: the table spec, with ``"name"``, ``"rows"`` (``{"label", ...}``), ``"evaluations"``
            (``[{"name": pass, "args": [...]}]``), ``"claims"`` (``[{"id", "method", "baseline",
            "directions": {metric: ±1}}]``), ``"column_of_attack"`` (the metric each evaluation
            attack gives, as for every table of ``tables.py``) and optionally ``"preset"``.
        out_dir: the benchmark's output folder.
        runs: ``{"label", "seed", "folder"}`` for every row and seed of the spec, finished or not.

    Returns:
        The paths written: the JSON, the markdown, then the figures (none without matplotlib).

    Raises:
        ValueError: a claim naming a metric outside :data:`METRICS` or a direction other than ±1.
    """
    out_dir = Path(out_dir)
    metric_of = {**COLUMN_OF_ATTACK, **spec.get("column_of_attack", {})}
    passes = [p["name"] for p in spec.get("evaluations", [])]
    records: Records = {row["label"]: {} for row in spec["rows"]}
    missing: Dict[str, Dict[int, List[str]]] = {}
    evaluations: List[Dict[str, Any]] = []
    for run in runs:
        label, seed, folder = run["label"], int(run["seed"]), Path(run["folder"])
        outcomes, settings, lacking = read_run(folder, passes, metric_of)
        if outcomes:
            records.setdefault(label, {})[seed] = outcomes
        missing.setdefault(label, {})[seed] = lacking
        evaluations.append(settings)
    paired, images = _common_images(records)
    claims = [
        paired_stats.Claim(c["id"], c["method"], c["baseline"], c["directions"])
        for c in spec.get("claims", [])
    ]
    logs = {
        row["label"]: {
            str(r["seed"]): run_files.read_log(Path(r["folder"]) / "log.jsonl")
            for r in runs
            if r["label"] == row["label"]
        }
        for row in spec["rows"]
    }
    report = {
        "setting": setting_json(spec, out_dir, runs, evaluations, images),
        "rows": rows_json(spec, records, missing),
        "claims": paired_stats.claims_table(paired, claims, METRICS),
    }
    for label, seeds in logs.items():
        weights = {seed: w for seed, log in seeds.items() if (w := last_weights(log))}
        if weights:
            report["rows"][label]["weights"] = weights
    for label, by_seed in records.items():
        gaps = {str(k): g for k, o in by_seed.items() if (g := beyond_gradient(o)) is not None}
        if gaps:
            report["rows"][label]["beyond_gradient"] = gaps
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{spec['name']}.json", out_dir / f"{spec['name']}-tables.md"
    run_files.write_json_atomic(report, json_path)
    md_path.write_text(markdown(report))
    written = [json_path, md_path]
    figures = []
    if claims:
        figures.append(plot_claims(report["claims"], out_dir / "claims.png", JUDGED))
    if any(row["metrics"] for row in report["rows"].values()):
        figures.append(plot_rows(report["rows"], out_dir / "rows.png"))
    if any(log for seeds in logs.values() for log in seeds.values()):
        figures.append(plots.plot_row_curves(logs, out_dir / "curves.png"))
    for label, seeds in logs.items():
        first = next(((k, log) for k, log in seeds.items() if log), None)
        if first is not None:
            title = f"{label} seed {first[0]}"
            figures.append(
                plots.plot_histograms(first[1], out_dir / f"histograms-{label}.png", title)
            )
    return written + [f for f in figures if f is not None]
