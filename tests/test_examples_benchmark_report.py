"""benchmark_report.write_report on a synthetic, partly finished benchmark: the JSON's numbers checked
by hand, missing runs reported, the tables and figures written.

Outcomes are "the first k of n images correct", so every accuracy, difference and McNemar count is
k/n arithmetic: AT seeds 0/1 and GAIRAT seeds 0/1 evaluated, MART seed 0 trained but not evaluated.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import benchmark_report  # noqa: E402
from paired_stats import pack_flags  # noqa: E402
from tables import SPECS  # noqa: E402

pytest.importorskip("matplotlib")

T_975_1 = 12.706204736174707  # Student t, 0.975 quantile, 1 degree of freedom (two seeds)
FULL, AA = 10, 4  # images of the two passes
PASSES = {
    "full": {"natural": "nat", "pgd20": "pgd40", "cw": "cw"},
    "aa": {"aa": "aa", "apgd-ce": "apgd_ce", "apgd-t": "apgd_t", "pgd20-ls": "lspgd"},
}
# correct images (the first k) per run and metric
CORRECT = {
    ("AT", 0): dict(nat=9, pgd40=5, cw=5, aa=2, apgd_ce=3, apgd_t=2, lspgd=2),
    ("AT", 1): dict(nat=8, pgd40=4, cw=4, aa=1, apgd_ce=2, apgd_t=1, lspgd=1),
    ("GAIRAT", 0): dict(nat=9, pgd40=7, cw=3, aa=1, apgd_ce=2, apgd_t=1, lspgd=1),
    ("GAIRAT", 1): dict(nat=9, pgd40=7, cw=3, aa=1, apgd_ce=2, lspgd=1),  # APGD-T not run yet
}
SPEC = {
    "name": "mnist-benchmark",
    "preset": "mnist-benchmark",
    "rows": [{"label": "AT"}, {"label": "GAIRAT"}, {"label": "MART"}],
    "column_of_attack": SPECS["mnist-benchmark"]["column_of_attack"],  # the benchmark's metrics
    "evaluations": [
        {"name": "full", "args": ["--eps", "0.3"]},
        {"name": "aa", "args": ["--eps", "0.3"]},
    ],
    "claims": [
        {"id": "C1", "method": "GAIRAT", "baseline": "AT", "directions": {"pgd40": 1, "aa": 1}},
        {"id": "C2", "method": "GAIRAT", "baseline": "AT", "directions": {"aa": -1}},
        {"id": "C9", "method": "MART", "baseline": "AT", "directions": {"pgd40": 1}},
    ],
}


def first(k: int, n: int) -> np.ndarray:
    return np.arange(n) < k


def log(seed: int, reweighted: bool) -> list:
    """Two epochs of shared AT burn-in (κ), then two of the row's own (weights if reweighted)."""
    records = [{"epoch": e, "lr": 1e-3, "loss": 1.0, "seconds": 1.0, "examples": 60000,
                "test_nat_acc": 0.5 + 0.1 * e, "test_pgd_acc": 0.2 + 0.1 * e + seed / 100,
                "kappa_hist": [1, 2, 3]} for e in range(4)]  # fmt: skip
    for r in records[2:]:
        r["test_pgd_acc"] += 0.05 * reweighted
        if reweighted:
            r["weight_hist"] = [5] + [0] * 22 + [1]
            r.update(weight_min=0.2, weight_mean=1.0, weight_max=5.0, weight_std=1.5 + seed)
    return records


def write_run(folder: Path, label: str, seed: int) -> None:
    folder.mkdir(parents=True)
    config = {"model": "wong-mnist", "data": "mnist", "epochs": 4, "train_size": None}
    (folder / "config.json").write_text(json.dumps({"config": config, "lineage": []}))
    lines = [json.dumps(r) for r in log(seed, label != "AT")]
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n")
    if (label, seed) not in CORRECT:
        return
    for name, metrics in PASSES.items():
        n = FULL if name == "full" else AA
        done = {a: m for a, m in metrics.items() if m in CORRECT[label, seed]}
        record = {
            "epoch": 4,  # the count's name before the epoch convention, as the benchmark's runs wrote it
            "config": config,
            "settings": {
                "eps": 0.3,
                "norm": "linf",
                "attacks": {a: {} for a in metrics},
                "num_examples": dict.fromkeys(metrics, n),
            },  # fmt: skip
            "accuracy": {a: CORRECT[label, seed][m] / n for a, m in done.items()},
            "seconds": dict.fromkeys(done, 3.0),
            "device": "cpu",
            "torch": "2.x",
            "records": {
                "first": 0,
                "n": n,
                "flags": {
                    a: pack_flags(first(CORRECT[label, seed][m], n)) for a, m in done.items()
                },
            },
        }
        (folder / f"eval-last-{name}.json").write_text(json.dumps(record))


@pytest.fixture
def benchmark(tmp_path):
    runs = []
    for label, seeds in (("AT", (0, 1)), ("GAIRAT", (0, 1)), ("MART", (0,))):
        for seed in seeds:
            folder = tmp_path / "runs" / f"{label}-seed{seed}"
            write_run(folder, label, seed)
            runs.append({"label": label, "seed": seed, "folder": folder})
    return tmp_path, runs


@pytest.mark.slow
def test_report_json_has_the_issues_shape_and_hand_checked_numbers(benchmark):
    out, runs = benchmark
    written = benchmark_report.write_report(SPEC, out, runs)
    report = json.loads((out / "mnist-benchmark.json").read_text())
    assert set(report) == {"setting", "rows", "claims"}
    setting = report["setting"]
    assert (setting["train_size"], setting["test_size"], setting["aa_size"]) == (60000, 10, 4)
    assert setting["eps"] == 0.3 and setting["model"] == "wong-mnist"
    assert (setting["data"], setting["epochs"], setting["recipe"]) == (
        "mnist",
        4,
        "mnist-benchmark",
    )
    # Compute: a prefix epoch copied into several rows' logs counts once (per seed: 2 shared epochs,
    # then AT's 2 and GAIRAT's 2; MART's log here repeats GAIRAT seed 0's); 3 s per attack evaluated.
    attacks = sum(len(c) for c in CORRECT.values())
    assert setting["compute"] == {"epochs": 12, "train_hours": round(12 / 3600, 3),
                                  "eval_hours": round(3 * attacks / 3600, 3)}  # fmt: skip
    assert setting["seeds"] == {"AT": [0, 1], "GAIRAT": [0, 1], "MART": [0]}
    assert setting["evaluation"]["pgd40"]["attack"] == "pgd20"
    assert any("--name aa" in c for c in setting["commands"])
    # rows: percent per seed, mean and sd over seeds, sampling error at the mean
    at = report["rows"]["AT"]
    assert at["seeds"]["0"] == {m: 100 * k / (FULL if m in ("nat", "pgd40", "cw") else AA)
                                for m, k in CORRECT["AT", 0].items()}  # fmt: skip
    pgd = at["metrics"]["pgd40"]
    assert (pgd["mean"], pgd["sd"], pgd["images"]) == (45.0, round(math.sqrt(50), 2), FULL)
    assert pgd["se"] == round(100 * math.sqrt(0.45 * 0.55 / FULL), 2)
    assert report["rows"]["GAIRAT"]["metrics"]["apgd_t"]["n_seeds"] == 1
    assert "apgd-t not evaluated yet" in report["rows"]["GAIRAT"]["missing"]["1"][0]
    assert report["rows"]["MART"]["seeds"] == {}
    assert "no eval-last-full.json" in report["rows"]["MART"]["missing"]["0"][0]
    # the last epoch's weights of a reweighting row; ESS = m² / (m² + s²) = 1 / (1 + 1.5²)
    assert "weights" not in report["rows"]["AT"]
    w0 = report["rows"]["GAIRAT"]["weights"]["0"]
    assert w0 == {"min": 0.2, "max": 5.0, "std": 1.5, "ess": round(100 / 3.25, 1)}
    assert report["rows"]["GAIRAT"]["weights"]["1"]["ess"] == round(100 / (1 + 2.5**2), 1)
    # beyond the gradient attacks: first-k outcomes nest, so robust to both = min(APGD-CE, APGD-T)
    # = AA here and AA breaks nothing more; GAIRAT seed 1 has no APGD-T
    assert report["rows"]["AT"]["beyond_gradient"]["0"] == {"apgd": 50.0, "aa": 50.0, "gap": 0.0}
    assert list(report["rows"]["GAIRAT"]["beyond_gradient"]) == ["0"]
    # claims: d = GAIRAT − AT per seed; PGD-40 d = 20, 30; AA d = −25, 0
    c1 = report["claims"]["C1"]["pgd40"]
    half = T_975_1 * math.sqrt(50) / math.sqrt(2)
    assert c1["mean"] == 25.0 and c1["interval"] == "seeds" and c1["n_seeds"] == 2
    assert c1["ci95"] == pytest.approx([25 - half, 25 + half], abs=0.01)
    assert c1["verdict"] == "not shown"
    assert c1["seeds"]["0"]["b10"] == 2 and c1["seeds"]["0"]["b01"] == 0
    assert c1["seeds"]["0"]["mcnemar_p"] == 0.5  # 2 · P(Binomial(2, ½) ≤ 0)
    c2 = report["claims"]["C2"]["aa"]
    assert c2["mean"] == -12.5 and c2["direction"] == -1
    assert report["claims"]["C2"]["apgd_t"]["n_seeds"] == 1  # seed 1 skipped, named
    assert "'apgd_t'" in report["claims"]["C2"]["apgd_t"]["skipped_seeds"]["1"]
    c9 = report["claims"]["C9"]["pgd40"]
    assert c9["n_seeds"] == 0 and c9["verdict"] is None
    names = [p.name for p in written]
    assert names == ["mnist-benchmark.json", "mnist-benchmark-tables.md", "claims.png", "rows.png",
                     "curves.png", "histograms-AT.png", "histograms-GAIRAT.png",
                     "histograms-MART.png"]  # fmt: skip
    assert all(p.stat().st_size > 0 for p in written)


def test_beyond_gradient_counts_images_robust_to_both_gradient_attacks_that_aa_broke():
    flags = {  # 8 images; image 7 robust to AA but not to APGD-T (another random start)
        "apgd_ce": np.array([1, 1, 1, 1, 1, 0, 0, 1], bool),
        "apgd_t": np.array([1, 1, 1, 0, 1, 1, 0, 0], bool),
        "aa": np.array([1, 0, 0, 0, 0, 0, 0, 1], bool),
        "pgd40": np.ones(20, bool),  # another pass, on more images: not used
    }
    # robust to both: images 0, 1, 2, 4 (50 %); of those AA broke 1, 2 and 4 (37.5 %)
    got = benchmark_report.beyond_gradient(flags)
    assert got == {"apgd": 50.0, "aa": 25.0, "gap": 37.5}
    # the standalone attacks on more images than AA: cut to AA's first n
    longer = {**flags, "apgd_ce": np.concatenate([flags["apgd_ce"], np.zeros(4, bool)])}
    assert benchmark_report.beyond_gradient(longer) == got
    assert benchmark_report.beyond_gradient({k: flags[k] for k in ("aa", "apgd_ce")}) is None


@pytest.mark.slow
def test_tables_show_rows_claims_sampling_error_and_what_is_missing(benchmark):
    out, runs = benchmark
    benchmark_report.write_report(SPEC, out, runs)
    text = (out / "mnist-benchmark-tables.md").read_text()
    assert "| AT | 2 | 85.00\u202f±\u202f7.07 | 45.00\u202f±\u202f7.07 |" in text  # unbroken
    assert "| MART | 0 | — |" in text
    assert "PGD-40 ±15.73 (n = 10)" in text  # √(.45·.55/10), AT the largest
    assert "- MART seed 0: pass 'full': no eval-last-full.json" in text
    assert "| GAIRAT | 0 | 0.2 | 5 | 1.5 | 30.8 |" in text  # the weights, ESS 100/3.25 %
    assert (
        "| AT | 2 | 37.50\u202f±\u202f17.68 | 37.50\u202f±\u202f17.68 | 0.00\u202f±\u202f0.00 |"
        in text
    )
    assert "| GAIRAT | 1 | 25.00 | 25.00 | 0.00 |" in text  # seed 1 lacks APGD-T
    assert "| C1 | GAIRAT − AT | PGD-40 | gain | +25.00 | [−38.53,\u00a0+88.53] |" in text
    assert "| C2 | GAIRAT − AT | PGD-40 |" not in text  # C2 states no direction under PGD-40
    assert "2 seeds (t) | not shown | 0: 0.5, 1: 0.25 |" in text  # 2·(½)³ for b10 = 3


@pytest.mark.slow
def test_an_evaluation_of_an_unfinished_checkpoint_is_missing(benchmark):
    out, runs = benchmark
    path = runs[0]["folder"] / "eval-last-full.json"
    record = json.loads(path.read_text())
    path.write_text(
        json.dumps({**{k: v for k, v in record.items() if k != "epoch"}, "epochs_done": 3})
    )
    report = json.loads(benchmark_report.write_report(SPEC, out, runs)[0].read_text())
    assert "pgd40" not in report["rows"]["AT"]["seeds"]["0"]
    assert "evaluated after 3 of 4 epochs" in report["rows"]["AT"]["missing"]["0"][0]


def test_nothing_evaluated_yet_still_writes_the_json(tmp_path):
    folder = tmp_path / "runs" / "AT-seed0"
    runs = [{"label": "AT", "seed": 0, "folder": folder}]
    written = benchmark_report.write_report(SPEC, tmp_path, runs)
    report = json.loads(written[0].read_text())
    assert report["rows"]["AT"] == {"seeds": {}, "metrics": {}, "missing": {"0": [
        "pass 'full': no eval-last-full.json", "pass 'aa': no eval-last-aa.json"]}}  # fmt: skip
    assert report["claims"]["C1"]["pgd40"]["verdict"] is None
    assert [p.name for p in written] == ["mnist-benchmark.json", "mnist-benchmark-tables.md",
                                         "claims.png"]  # fmt: skip
