"""benchmarks/gpu_calibration.py: the whole plan at its smoke size on a CPU, and what a cut-off run leaves.

Speed is never asserted: these check that every stage ran, that the combined file holds every
section with finite positive numbers, and that results reach the disk stage by stage (a stage that
fails, hangs or does not fit the budget leaves the earlier stages' results in place).
"""

from __future__ import annotations

import doctest
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402
import epoch  # noqa: E402
import gpu  # noqa: E402
import gpu_calibration as cal  # noqa: E402

CPU = torch.device("cpu")
COMBINED = common.default_output(CPU).name
CIFAR10_TRAIN = 50_000


def _finite_positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One ``--smoke`` run of every stage on the CPU: its folder and the combined results."""
    out = tmp_path_factory.mktemp("calibration")
    return out, cal.main(["--smoke", "--device", "cpu", "--out", str(out)])


@pytest.mark.parametrize("module", [cal, epoch], ids=lambda m: m.__name__)
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


@pytest.mark.slow
def test_smoke_runs_every_stage_and_writes_the_combined_file(smoke):
    out, data = smoke
    names = [s.name for s in cal.plan(out, "cpu", smoke=True)]
    stages = data["calibration"]["stages"]
    assert list(stages) == names
    assert {name: s["status"] for name, s in stages.items()} == dict.fromkeys(names, "ok")
    assert all(s["command"].startswith("python benchmarks/") for s in stages.values())
    assert json.loads((out / COMBINED).read_text()) == data
    # Within the device tool's eight files back from $OUT.
    files = {p.name for p in out.iterdir()}
    assert files == {COMBINED, "ratios.json", "gpu.json", "epoch.json", cal.LOG}
    assert data["device"] == common.device_name(CPU)
    assert {"torch", "date"} <= set(data["machine"])


@pytest.mark.slow
def test_smoke_results_are_finite_and_positive(smoke):
    _, data = smoke
    for section in ("kappa_overhead", "weights_overhead", "attack_vs_official"):
        (result,) = data[section].values()
        for comparison in result["comparisons"].values():
            assert _finite_positive(comparison["ratio"]["median"])
    variants = [
        f"smallcnn, batch 4: {gpu.Config(p, f, m).label}"
        for p in gpu.PRECISIONS
        for f in gpu.FORMATS
        for m in gpu.MODES
    ]
    assert set(data["throughput"]) == {*variants, f"smallcnn, batch 4: {gpu.OFFICIAL}"}
    for entry in data["throughput"].values():
        assert _finite_positive(entry["seconds_per_step"]["median"])
        assert _finite_positive(entry["images_per_s"])
    assert set(data["fast_vs_official"]) == set(variants)
    for entry in data["fast_vs_official"].values():
        assert _finite_positive(entry["speedup"]["median"])
    (run,) = data["epoch_seconds"].values()
    for name in epoch.PASSES:
        assert run[name]["steps"] >= 1
        assert _finite_positive(run[name]["seconds_per_epoch"])
    (agreement,) = data["bf16_agreement"].values()
    for accuracy in agreement["accuracy"].values():
        assert 0.0 <= accuracy["natural"] <= 1.0 and 0.0 <= accuracy["pgd20"] <= 1.0
    assert math.isfinite(agreement["pgd20_difference_points"])


@pytest.mark.slow
def test_epoch_stage_times_the_mail_preset_after_its_burn_in(smoke):
    _, data = smoke
    (run,) = data["epoch_seconds"].values()
    # MAIL §4.1: the initial 74 epochs burn in; the smoke run's batch is 8.
    assert run["reweighting_epoch"] == 74
    assert run["steps_per_epoch"] == math.ceil(CIFAR10_TRAIN / 8)
    together = run["together"]
    assert run["seconds_per_epoch"] == pytest.approx(
        together["seconds"] / together["steps"] * math.ceil(CIFAR10_TRAIN / 8)
    )


@pytest.mark.slow
def test_mfu_is_null_with_a_note_on_a_device_without_a_known_peak(smoke):
    _, data = smoke
    assert data["calibration"]["peak_bf16_tflops"] is None
    assert "no dense bf16 peak known" in data["calibration"]["peak_note"]
    assert all(entry["mfu"] is None for entry in data["mfu"].values())


@pytest.mark.parametrize(
    ("name", "peak"),
    [  # vendor data sheets, dense bf16 (half the "with sparsity" figure)
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H200", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_peak_of_the_device_by_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    cuda = torch.device("cuda")
    assert gpu.peak_tflops(cuda, None) == peak
    note = cal.peak_note(cuda, peak)
    assert name in note and (f"{peak:g} TFLOP/s" in note if peak else "mfu is null" in note)


def _python(code: str) -> tuple:
    return ("-c", code)


@pytest.mark.slow
def test_results_reach_the_disk_stage_by_stage(tmp_path):
    """A stage that fails, one that hangs and one over budget leave the first stage's results."""
    combined = tmp_path / COMBINED
    result = {"epoch_seconds": {"first": {"seconds_per_epoch": 2.5}}}
    write = (
        f"import json; open({str(tmp_path / 'first.json')!r}, 'w').write({json.dumps(result)!r})"
    )
    # Run while the calibration goes on: the first stage's results must already be on disk.
    check = (
        f"import json, sys; d = json.load(open({str(combined)!r})); "
        "sys.exit(0 if d['epoch_seconds']['first'] and "
        "d['calibration']['stages']['first']['status'] == 'ok' else 7)"
    )
    stages = [
        cal.Stage("first", 30, _python(write), "first.json"),
        cal.Stage("reads-the-disk", 30, _python(check)),
        cal.Stage("raises", 30, _python("raise SystemExit(3)"), "missing.json"),
        cal.Stage("hangs", 1, _python("import time; time.sleep(60)")),
        cal.Stage("over-budget", 10_000, _python("pass")),
    ]
    start = time.perf_counter()
    data = cal.calibrate(stages, tmp_path, CPU, budget_s=60, record={"smoke": True})
    assert time.perf_counter() - start < 30  # the hanging stage was stopped at its budget
    statuses = {name: s["status"] for name, s in data["calibration"]["stages"].items()}
    assert statuses == {
        "first": "ok",
        "reads-the-disk": "ok",
        "raises": "failed: exit code 3",
        "hangs": "timeout: stopped at its budget of 1 s",
        "over-budget": "skipped: budget",
    }
    assert json.loads(combined.read_text()) == data
    assert data["epoch_seconds"] == result["epoch_seconds"]
    assert "=== raises: python -c 'raise SystemExit(3)'" in (tmp_path / cal.LOG).read_text()


def test_a_tiny_budget_skips_every_stage_and_still_writes_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))  # the device tool's results folder is the default
    data = cal.main(["--smoke", "--device", "cpu", "--budget", "1"])
    stages = data["calibration"]["stages"]
    assert {s["status"] for s in stages.values()} == {"skipped: budget"}
    assert json.loads((tmp_path / COMBINED).read_text()) == data


def test_stages_picks_a_subset_in_plan_order(tmp_path):
    data = cal.main(
        ["--smoke", "--device", "cpu", "--budget", "0", "--out", str(tmp_path),
         "--stages", "agreement", "ratios"]
    )  # fmt: skip
    assert list(data["calibration"]["stages"]) == ["ratios", "agreement"]


def test_bad_arguments_say_what_was_expected(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    with pytest.raises(ValueError, match="Expected --out DIR or the environment variable OUT"):
        cal.main(["--smoke", "--device", "cpu"])
    with pytest.raises(ValueError, match="Expected --stages among ratios, .*got \\['gird'\\]"):
        cal.main(["--smoke", "--device", "cpu", "--out", str(tmp_path), "--stages", "gird"])
    with pytest.raises(ValueError, match="Expected --budget >= 0 seconds, got -1.0"):
        cal.main(["--smoke", "--device", "cpu", "--out", str(tmp_path), "--budget", "-1"])


@pytest.mark.parametrize(
    ("option", "message"),
    [("--steps=0", "Expected --steps >= 1, got 0"), ("--warmup=-1", "Expected --warmup >= 0"),
     ("--batch-size=0", "Expected --batch-size >= 1")],
)  # fmt: skip
def test_epoch_rejects_counts_below_one(tmp_path, option, message):
    with pytest.raises(ValueError, match=message):
        epoch.main(["--device", "cpu", option, "--out", str(tmp_path / "epoch.json")])


def test_timed_pass_stops_at_its_time_cap():
    steps = epoch.timed_pass(
        iter([(torch.zeros(1), torch.zeros(1))] * 100),
        lambda x, y: time.sleep(0.02),
        steps=100,
        max_seconds=0.05,
        sync=lambda: None,
    )
    # Each step sleeps 20 ms: the pass ends after the first step past 50 ms (the third, unloaded).
    assert steps["steps"] < 100
    assert steps["seconds"] > 0.05
    assert steps["seconds_per_step"] == pytest.approx(steps["seconds"] / steps["steps"])
