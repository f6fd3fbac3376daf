"""The committed MNIST benchmark (docs/results/mnist-benchmark.md, .json and folder) re-checked from the
repository alone: every accuracy and claim of the JSON recomputed from the committed per-image records,
every final checkpoint loadable as the model it names, the page's tables the report's, and — where
../shared/data/mnist is present — one checkpoint's natural outcomes re-measured image by image.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import benchmark_report  # noqa: E402
import evaluate  # noqa: E402
import paired_stats  # noqa: E402
import run_files  # noqa: E402
from data import load_mnist, to_float  # noqa: E402
from tables import COLUMN_OF_ATTACK, SPECS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
FOLDER = RESULTS / "mnist-benchmark"
REPORT = json.loads((RESULTS / "mnist-benchmark.json").read_text())
SPEC = SPECS["mnist-benchmark"]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
RUNS = [(label, seed) for label, seeds in REPORT["setting"]["seeds"].items() for seed in seeds]

pytestmark = pytest.mark.slow


def outcomes(label: str, seed: int) -> dict:
    """``{metric: (n,) bool}`` of one run, read from its committed records, one file per pass."""
    metric_of = {**COLUMN_OF_ATTACK, **SPEC["column_of_attack"]}
    flags = {}
    for evaluation in SPEC["evaluations"]:
        path = FOLDER / "records" / f"{label}-seed{seed}-{evaluation['name']}.json"
        record = json.loads(path.read_text())
        assert run_files.epochs_done(record) == REPORT["setting"]["epochs"], path
        for attack, bits in evaluate.read_records(record).items():
            flags[metric_of.get(attack, attack)] = bits
    return flags


@pytest.fixture(scope="module")
def records() -> dict:
    out: dict = {}
    for label, seed in RUNS:
        out.setdefault(label, {})[seed] = outcomes(label, seed)
    return out


def test_every_row_and_seed_of_the_spec_is_in_the_report():
    spec_runs = {(row["label"], s) for row in SPEC["rows"] for s in row["seeds"]}
    assert set(RUNS) == spec_runs
    assert not any("missing" in row for row in REPORT["rows"].values())


def test_accuracies_are_the_records_and_the_images_are_the_settings(records):
    images = REPORT["setting"]["images"]
    for label, seed in RUNS:
        for metric, flags in records[label][seed].items():
            assert flags.size == images[metric], (label, seed, metric)
            got = REPORT["rows"][label]["seeds"][str(seed)][metric]
            assert got == pytest.approx(100 * flags.mean(), abs=0.005), (label, seed, metric)


def test_claims_recompute_from_the_records(records):
    claims = [
        paired_stats.Claim(c["id"], c["method"], c["baseline"], c["directions"])
        for c in SPEC["claims"]
    ]
    again = paired_stats.claims_table(records, claims, benchmark_report.METRICS)
    assert again == REPORT["claims"]
    # and one cell by hand: C2 (GAIRAT − AT under AA) is the mean of the seeds' differences
    diffs = [100 * (records["GAIRAT"][k]["aa"].mean() - records["AT"][k]["aa"].mean())
             for k in (0, 1, 2)]  # fmt: skip
    assert REPORT["claims"]["C2"]["aa"]["mean"] == pytest.approx(np.mean(diffs), abs=0.005)


def test_autoattack_beyond_its_gradient_attacks_recomputes(records):
    for label, seed in RUNS:
        o = records[label][seed]
        both = o["apgd_ce"] & o["apgd_t"]
        gap = REPORT["rows"][label]["beyond_gradient"][str(seed)]["gap"]
        assert gap == pytest.approx(100 * (both & ~o["aa"]).mean(), abs=0.005), (label, seed)


def test_every_final_checkpoint_loads_as_its_model():
    for label, seed in RUNS:
        state = run_files.load_checkpoint(FOLDER / "checkpoints" / f"{label}-seed{seed}.pt")
        assert state["epochs_done"] == REPORT["setting"]["epochs"]
        assert state["config"]["model"] == REPORT["setting"]["model"]
        assert state["config"]["seed"] == seed
        run_files.model_from_checkpoint(state)  # strict: every parameter present and shaped


def test_the_pages_tables_are_the_reports():
    page = (RESULTS / "mnist-benchmark.md").read_text()
    tables = benchmark_report.markdown(REPORT)
    lines = [line for line in tables.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(lines) > 30  # rows, weights, beyond-gradient and claims tables
    assert [line for line in lines if line not in page] == []


def test_the_pages_exploratory_differences_are_the_jsons():
    """The hand-written table of GAIRAT − AT and MAIL-AT − AT under every attack."""
    page = (RESULTS / "mnist-benchmark.md").read_text()

    def signed(x: float) -> str:
        return f"{x:+.2f}".replace("-", "−")

    for claim in ("C1", "C3"):
        for metric in ("pgd40", "cw", "apgd_ce", "apgd_t", "aa"):
            c = REPORT["claims"][claim][metric]
            lo, hi = c["ci95"]
            assert f"| {signed(c['mean'])} [{signed(lo)}, {signed(hi)}] |" in page, (claim, metric)


@pytest.mark.skipif(not MNIST.is_dir(), reason="../shared/data/mnist is absent")
def test_a_checkpoint_gives_its_recorded_natural_outcomes(records):
    state = run_files.load_checkpoint(FOLDER / "checkpoints" / "AT-seed0.pt")
    model = run_files.model_from_checkpoint(state).eval()
    x, y = load_mnist(MNIST, train=False)
    with torch.no_grad():
        correct = model(to_float(x)).argmax(1) == y
    recorded = torch.from_numpy(records["AT"][0]["nat"])
    # the same images correct, up to a borderline image flipped by another summation order
    assert int((correct != recorded).sum()) <= 2
