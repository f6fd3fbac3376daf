"""``reproduce.py`` on a seeded benchmark spec of the MNIST benchmark's shape, end to end on a tiny
MNIST (CPU): two rows × two seeds off a per-seed prefix, two evaluation passes, ``--jobs 2``,
stopped by ``--max-minutes`` and resumed, ``--status``, the report call and ``--publish``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import reproduce  # noqa: E402
import run_files  # noqa: E402
from tables import SPECS  # noqa: E402
from test_examples_recipe import write_tiny_mnist  # noqa: E402

import instance_reweight as ir  # noqa: E402

TINY_SPEC = {
    "name": "tiny-benchmark",
    "title": "Tiny benchmark",
    "preset": None,
    "protocol": None,
    "train_args": [
        "--data=mnist",
        "--model=wong-mnist",
        "--epochs=2",
        "--batch-size=32",
        "--optimizer=adam",
        "--lr=0.001",
        "--set=eps=0.3",
        "--set=step_size=0.1",
        "--set=steps=2",
        "--eps-ramp-epochs=1",
        "--monitor-size=0",
    ],  # fmt: skip
    "evaluations": [
        {"name": "full", "args": ["--eps", "0.3", "--attacks", "natural,pgd20"]},
        {"name": "aa", "args": ["--eps", "0.3", "--attacks", "cw", "--num-examples", "8"]},
    ],
    "columns": ["nat", "pgd40", "cw"],
    "column_of_attack": {"natural": "nat", "pgd20": "pgd40"},
    "prefixes": {"at": {"method": "at", "epochs": 1}},
    "rows": [
        {"label": "AT", "method": "at", "prefix": "at", "seeds": [0, 1]},
        {
            "label": "GAIRAT",
            "method": "gairat",
            "prefix": "at",
            "seeds": [0, 1],
            "args": ["--set", "burn_in_epochs=1"],
        },  # fmt: skip
    ],
    "claims": [{"id": "C1", "method": "GAIRAT", "baseline": "AT", "directions": {"pgd40": 1}}],
    "paper": {},
}
UNITS = ["prefixes/at-seed0", "prefixes/at-seed1", "runs/AT-seed0", "runs/AT-seed1",
         "runs/GAIRAT-seed0", "runs/GAIRAT-seed1"]  # fmt: skip


@pytest.fixture
def report_calls(monkeypatch):
    """benchmark_report.write_report, spied on: records what reproduce.py gives it, then runs it."""
    import benchmark_report

    calls = []
    real = benchmark_report.write_report

    def write_report(spec, out_dir, runs):
        calls.append((spec["name"], out_dir, runs))
        return real(spec, out_dir, runs)

    monkeypatch.setattr(benchmark_report, "write_report", write_report)
    return calls


@pytest.mark.slow
def test_tiny_benchmark_in_jobs_stopped_resumed_reported_and_published(
    tmp_path, report_calls, capsys
):
    (tmp_path / "mnist").mkdir()
    data = write_tiny_mnist(tmp_path / "mnist")
    path = tmp_path / "tiny-benchmark.json"
    path.write_text(json.dumps(TINY_SPEC))
    out = tmp_path / "bench"
    common = [str(path), f"--out={out}", f"--data-root={data}", "--no-progress"]

    status = reproduce.main([*common, "--status"])["status"]
    lines = status.splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == UNITS
    assert "runs/AT-seed0" in status and "waiting" in lines[3] and "0/2 passes" in lines[3]
    assert "not started" in lines[1] and lines[-1].startswith("compute left:")
    # 2 prefix epochs, and each of the 4 rows' epoch after its prefix; nothing timed yet.
    assert lines[-1] == "compute left: not timed yet (6 epochs; 8 evaluations)"

    # Piece 1: a budget that ends before anything could start stops cleanly.
    first = reproduce.main([*common, "--jobs=2", "--max-minutes=0"])
    assert first["trained"] is False and first["evaluated"] is False
    assert not (out / "runs").exists()
    # Piece 2: only seed 1, two at a time; its prefix first, then both rows.
    second = reproduce.main([*common, "--jobs=2", "--seeds=1"])
    assert second["trained"] and second["evaluated"]
    printed = capsys.readouterr().out
    assert printed.index("prefixes/at-seed1: started") < printed.index("runs/AT-seed1: started")
    assert "prefixes/at-seed1: finished" in printed
    assert "\r" not in (out / "logs" / "runs-AT-seed1.log").read_text()
    assert not (out / "prefixes" / "at-seed0").exists()
    mid = reproduce.main([*common, "--status"])["status"].splitlines()
    assert "done" in mid[2] and "2/2 epochs" in mid[6] and "2/2 passes" in mid[6]
    assert "not started" in mid[1] and "waiting" in mid[3]
    assert "s;" in mid[-1] or "s)" in mid[-1]  # now timed from the seed-1 logs

    # A budget shorter than the epoch measured so far starts nothing (a unit would stop at once).
    capsys.readouterr()
    late = reproduce.main([*common, "--jobs=2", "--max-minutes=0.01"])
    assert late["trained"] is False and "started" not in capsys.readouterr().out
    assert not (out / "prefixes" / "at-seed0").exists()

    # Piece 3: the same command without --seeds does the rest, then reports and publishes.
    publish = tmp_path / "published"
    result = reproduce.main([*common, "--jobs=2", f"--publish={publish}"])
    assert result["trained"] and result["evaluated"]
    assert reproduce.main([*common, "--status"])["status"].endswith("nothing left to compute")

    for label in ("AT", "GAIRAT"):
        for seed in (0, 1):
            run = out / "runs" / f"{label}-seed{seed}"
            config = run_files.read_json(run / "config.json")
            assert config["config"]["seed"] == seed and config["config"]["optimizer"] == "adam"
            # Each row continues the prefix of its own seed.
            assert config["lineage"][0]["method"] == "at"
            assert [r["epoch"] for r in run_files.read_log(run / "log.jsonl")] == [0, 1]
            assert (
                run_files.read_log(run / "log.jsonl")[0]
                == run_files.read_log(out / "prefixes" / f"at-seed{seed}" / "log.jsonl")[0]
            )
            full = run_files.read_json(run / "eval-last-full.json")
            assert set(full["accuracy"]) == {"natural", "pgd20"}
            aa = run_files.read_json(run / "eval-last-aa.json")
            assert set(aa["accuracy"]) == {"cw"} and aa["settings"]["num_examples"]["cw"] == 8
            # Published: slim weights that the loader reads, and the evaluation files as they are.
            weights = run_files.load_checkpoint(publish / "checkpoints" / f"{label}-seed{seed}.pt")
            assert "optimizer" not in weights and weights["config"]["seed"] == seed
            model = run_files.model_from_checkpoint(weights)
            assert sum(p.numel() for p in model.parameters()) == 166_406
            for name in ("full", "aa"):
                copied = publish / "records" / f"{label}-seed{seed}-{name}.json"
                assert copied.read_bytes() == (run / f"eval-last-{name}.json").read_bytes()
    # The report got every (row, seed) of the spec.
    (name, report_out, runs), *_ = report_calls[-1:]
    assert name == "tiny-benchmark" and Path(report_out) == out
    assert [(r["label"], r["seed"], r["folder"]) for r in runs] == [
        (label, seed, out / "runs" / f"{label}-seed{seed}")
        for label in ("AT", "GAIRAT")
        for seed in (0, 1)
    ]
    # The real report: every row and seed, and the claim paired seed by seed on the same images.
    report = json.loads((out / "tiny-benchmark.json").read_text())
    for label in ("AT", "GAIRAT"):
        for seed in ("0", "1"):
            accuracies = report["rows"][label]["seeds"][seed]
            assert {"nat", "pgd40", "cw"} <= set(accuracies)
            assert all(0 <= accuracies[m] <= 100 for m in ("nat", "pgd40", "cw"))
    claim = report["claims"]["C1"]["pgd40"]
    diffs = [
        report["rows"]["GAIRAT"]["seeds"][k]["pgd40"] - report["rows"]["AT"]["seeds"][k]["pgd40"]
        for k in ("0", "1")
    ]
    assert claim["n_seeds"] == 2 and claim["mean"] == pytest.approx(sum(diffs) / 2, abs=0.011)
    assert claim["verdict"] in ("shown", "not shown", "contradicted")
    assert (out / "claims.png").is_file()
    # Published beside the weights: the report's JSON as <DIR>.json, its tables and figures in DIR.
    assert (tmp_path / "published.json").read_bytes() == (out / "tiny-benchmark.json").read_bytes()
    for name in ("tiny-benchmark-tables.md", "claims.png", "rows.png", "curves.png"):
        assert (publish / name).read_bytes() == (out / name).read_bytes()
    # A unit that is done is not redone.
    capsys.readouterr()
    assert reproduce.main([*common, "--jobs=2"])["evaluated"]
    assert ": started" not in capsys.readouterr().out


def test_a_seeded_spec_needs_claims_and_unknown_seeds_say_so(tmp_path, capsys):
    spec = {**TINY_SPEC}
    del spec["claims"]
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match='got claims: none, with per-row "seeds"'):
        reproduce.load_spec(str(path))
    for flag, message in [
        ("--seeds=a", "Expected --seeds as comma-separated"),
        ("--jobs=0", ">= 1"),
    ]:
        with pytest.raises(SystemExit) as info:
            reproduce.main(["mnist-benchmark", flag, "--status"])
        assert info.value.code == 2 and message in capsys.readouterr().err


def test_mnist_benchmark_spec_is_the_draft(tmp_path):
    spec = SPECS["mnist-benchmark"]
    seeds = {r["label"]: r["seeds"] for r in spec["rows"]}
    assert seeds == {"AT": [0, 1, 2], "TRADES": [0, 1, 2], "MART": [0], "FAT": [0],
                     "GAIRAT": [0, 1, 2], "MAIL-AT": [0, 1, 2], "MAIL-TRADES": [0, 1, 2],
                     "AT-AWP": [0], "MAIL-AT-AWP": [0], "GAIR-TRADES": [0]}  # fmt: skip
    prefix = {r["label"]: r.get("prefix") for r in spec["rows"]}
    assert prefix == {"AT": "at", "TRADES": "trades", "MART": None, "FAT": None,
                      "GAIRAT": "at", "MAIL-AT": "at", "MAIL-TRADES": "trades",
                      "AT-AWP": "at-awp", "MAIL-AT-AWP": "at-awp", "GAIR-TRADES": "trades"}  # fmt: skip
    assert all(p["epochs"] == 10 for p in spec["prefixes"].values())
    assert all(r["method"] in ir.methods.names() for r in spec["rows"])
    directions = {c["id"]: (c["method"], c["baseline"], c["directions"]) for c in spec["claims"]}
    assert directions == {
        "C1": ("GAIRAT", "AT", {"pgd40": 1}),
        "C2": ("GAIRAT", "AT", {"aa": -1}),
        "C3": ("MAIL-AT", "AT", {"pgd40": 1}),
        "C4": ("MAIL-AT", "AT", {"aa": -1}),
        "C5": ("MAIL-TRADES", "TRADES", {"aa": 1, "pgd40": 1}),
        "C6": ("AT-AWP", "AT", {"pgd40": 1, "aa": 1}),
        "C7": ("MAIL-AT-AWP", "AT-AWP", {"pgd40": 1, "aa": 1}),
        "C8": ("GAIR-TRADES", "TRADES", {"pgd40": 1}),
    }
    full, aa = spec["evaluations"]
    assert full["name"] == "full" and aa["name"] == "aa"
    settings = ir.evaluation.settings(
        attacks=["natural", "pgd20", "cw"], eps=0.3, options=json.loads(full["args"][-1])
    )
    assert settings["attacks"]["pgd20"]["steps"] == 40 == settings["attacks"]["cw"]["steps"]
    assert (
        settings["attacks"]["pgd20"]["step_size"] == 0.01 and "--num-examples" not in full["args"]
    )
    assert aa["args"][aa["args"].index("--attacks") + 1] == "aa,apgd-ce,apgd-t,pgd20-ls"
    assert aa["args"][aa["args"].index("--num-examples") + 1] == "1000"
    # 7 prefixes (at, trades × 3 seeds; at-awp × 1) and 5 rows × 3 seeds + 5 rows × 1 = 20 runs.
    run = reproduce.Reproduction(spec, tmp_path, data_root="d")
    units = run.units()
    assert sum(u.kind == "prefix" for u in units) == 7 and sum(u.kind == "row" for u in units) == 20
    at1 = next(u for u in units if u.name == "GAIRAT-seed1")
    assert at1.needs is not None and at1.needs.folder == tmp_path / "prefixes" / "at-seed1"
    command = run.train_command(at1)
    assert command[:2] == ["--preset", "mnist-benchmark"] and "--seed" in command
    assert command[command.index("--seed") + 1] == "1"
