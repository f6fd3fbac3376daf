"""Smoke tests of benchmarks/: each script runs end to end at its tiniest setting and writes its results.

Speed is never asserted: these check the keys of the results file and that every ratio is a finite
positive number, not how large it is.
"""

from __future__ import annotations

import doctest
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402
import gpu  # noqa: E402
import ratios  # noqa: E402

THREADS = torch.get_num_threads()


def _finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


@pytest.fixture
def restore_torch_settings(monkeypatch):
    """The scripts set global torch options; put them back after each test."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    # torch's own patch: monkeypatch's undo deletes the attribute from torch's config module.
    with torch._dynamo.config.patch(recompile_limit=torch._dynamo.config.recompile_limit):
        yield
    torch.set_num_threads(THREADS)
    torch._dynamo.reset()


@pytest.mark.parametrize("module", [common, ratios], ids=lambda m: m.__name__)
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


@pytest.mark.slow
def test_ratios_benchmark_writes_the_three_ratios(tmp_path, restore_torch_settings):
    out = tmp_path / "cpu.json"
    argv = ["--batch", "4", "--steps", "2", "--rounds", "2", "--warmup", "0"]
    data = ratios.main([*argv, "--threads", str(THREADS), "--out", str(out)])
    assert json.loads(out.read_text()) == data
    assert data["device"] == common.device_name(torch.device("cpu"))
    config = "smallcnn, batch 4, K=2"
    results = {section: data[section][config] for section in ratios.SECTIONS.values()}
    assert set(results["kappa_overhead"]["comparisons"]) == {"kappa_only", "attack"}
    assert set(results["weights_overhead"]["comparisons"]) == {"gairat", "mail"}
    assert set(results["attack_vs_official"]["comparisons"]) == {"speedup"}
    for result in results.values():
        for comparison in result["comparisons"].values():
            stats = comparison["ratio"]
            assert stats["n"] == 2
            assert all(_finite_positive(v) for v in (stats["median"], *stats["ci95"]))
    # The baselines compute what the library computes (same seed: same iterates, same κ).
    assert results["kappa_overhead"]["identical"]
    assert results["attack_vs_official"]["kappa_identical"]


@pytest.mark.slow
def test_gpu_benchmark_runs_on_a_cpu_with_quick(tmp_path, restore_torch_settings):
    out = tmp_path / "gpu.json"
    data = gpu.main(
        [
            "--quick", "--device", "cpu", "--models", "smallcnn", "--precisions", "float32",
            "--compile-backend", "eager", "--peak-tflops", "1", "--parts", "grid", "agreement",
            "--agreement-model", "smallcnn", "--out", str(out),
        ]
    )  # fmt: skip
    assert json.loads(out.read_text()) == data
    assert {"device", "throughput", "mfu", "fast_vs_official", "bf16_agreement"} <= set(data)
    variants = [f"smallcnn, batch 4: {c.label}" for c in (
        gpu.Config("float32", f, m) for f in gpu.FORMATS for m in gpu.MODES
    )]  # fmt: skip
    assert set(data["fast_vs_official"]) == set(variants)
    assert set(data["mfu"]) == {*variants, f"smallcnn, batch 4: {gpu.OFFICIAL}"}
    for entry in data["fast_vs_official"].values():
        assert _finite_positive(entry["speedup"]["median"])
    for entry in data["mfu"].values():
        assert _finite_positive(entry["mfu"]) and entry["peak_bf16_tflops"] == 1.0
    (result,) = data["bf16_agreement"].values()
    assert set(result["accuracy"]) == {"float32", "bfloat16"}
    assert math.isfinite(result["pgd20_difference_points"])


def test_results_of_several_commands_merge_into_one_file(tmp_path):
    path = tmp_path / "machine.json"
    cpu_device = torch.device("cpu")
    common.save(path, cpu_device, {"fast_vs_official": {"a": {"x": 1}}})
    data = common.save(path, cpu_device, {"fast_vs_official": {"b": {"x": 2}}, "mfu": {"b": {}}})
    assert data["fast_vs_official"] == {"a": {"x": 1}, "b": {"x": 2}} and data["mfu"] == {"b": {}}


def test_forward_flops_matches_the_issue_count_for_resnet18():
    model = common.build_model("resnet18", torch.device("cpu"))
    assert gpu.forward_flops(model, torch.device("cpu")) == pytest.approx(1.11e9, rel=0.01)


@pytest.mark.parametrize(
    "script, flags",
    [
        ("ratios", ["--rounds", "0"]),
        ("ratios", ["--threads", "nan"]),
        ("ratios", ["--batch", "-1"]),
        ("gpu", ["--iters", "0"]),
        ("gpu", ["--peak-tflops", "inf"]),
    ],
)
def test_a_bad_flag_is_refused_when_parsed(script, flags, capsys):
    module = __import__(script)
    with pytest.raises(SystemExit) as info:
        module.main(flags)
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {flags[0]}: Expected" in err


def test_a_user_error_of_a_benchmark_is_one_line(tmp_path):
    import subprocess

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    result = subprocess.run(
        [sys.executable, str(benchmarks / "gpu_calibration.py"), "--budget", "-1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        == "gpu_calibration.py: error: Expected --budget >= 0 seconds, got -1.0."
    )
