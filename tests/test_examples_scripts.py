"""train.py, evaluate.py, reproduce.py and plots.py end to end on a tiny CIFAR-10 written here (CPU).

The runs are tiny (SmallCNN, 80 training images, PGD-2) and shared through module fixtures, so the whole
file takes seconds; they check the plumbing and exactness, not accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import evaluate  # noqa: E402
import plots  # noqa: E402
import reproduce  # noqa: E402
import run_files  # noqa: E402
import train  # noqa: E402
import training  # noqa: E402
from config import Runtime, TrainConfig, accepted_overrides, make_method  # noqa: E402
from presets import PRESETS  # noqa: E402
from tables import SPECS  # noqa: E402

import instance_reweight as ir  # noqa: E402


def write_tiny_cifar10(root: Path) -> Path:
    """CIFAR-10 in the binary layout: 5 × 16 training and 32 test records, class-coloured noise."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 16) for i in range(1, 6)] + [("test_batch", 32)]:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        pixels = labels[:, None] * 25.0 + rng.normal(0, 30, (n, 3 * 1024))
        records = np.concatenate([labels[:, None], pixels.clip(0, 255).astype(np.uint8)], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar"))


# A seconds-long CPU run: SmallCNN, PGD-2, batches of 16, 16 monitored examples.
TINY = [
    "--model=smallcnn",
    "--epochs=2",
    "--batch-size=16",
    "--lr=0.01",
    "--set=steps=2",
    "--monitor-size=16",
]


def tiny(data_root: Path, *extra: str) -> list[str]:
    return [*TINY, f"--data-root={data_root}", "--no-progress", *extra]


def params(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def assert_same_params(a: Path, b: Path) -> None:
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory) -> Path:
    """GAIRAT for 2 epochs, burn-in 1, in one go."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    train.main(tiny(data_root, "--method=gairat", "--set=burn_in_epochs=1", f"--out={out}"))
    return out


# --- presets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_resolves_for_every_method(preset):
    recipe = PRESETS[preset]
    for method in ir.methods.names():
        args = train.build_parser().parse_args(["--preset", preset, "--method", method])
        config = train.resolve(args, None)
        assert (config.model, config.data, config.epochs) == (
            recipe.model,
            recipe.data,
            recipe.epochs,
        )
        assert config.lr_schedule == [list(p) for p in recipe.lr_schedule]
        # The preset's hyper-parameters reach exactly the methods that take them.
        takes = accepted_overrides(method)
        expected = recipe.overrides_for(method, takes)
        assert config.overrides == expected
        if any("burn_in_epochs" in given for given in recipe.method_overrides.values()):
            assert ("burn_in_epochs" in config.overrides) == ("burn_in_epochs" in takes)
        make_method(config, torch.nn.Linear(2, 2))


def test_mail_preset_follows_the_paper():
    args = train.build_parser().parse_args(["--preset", "mail-resnet18", "--method", "mail-at"])
    config = train.resolve(args, None)
    assert (config.lr, config.weight_decay, config.batch_size) == (0.01, 3.5e-3, 128)
    # Divided by 10 at the 75th and 90th epoch; reweighting from the 75th (0-based 74).
    assert [config.lr_at(e) for e in (73, 74, 88, 89)] == [0.01, 0.001, 0.001, 0.0001]
    method = make_method(config, torch.nn.Linear(2, 2))
    method.set_epoch(73)
    assert not method.reweighting
    method.set_epoch(74)
    assert method.reweighting


def test_gairat_preset_epsilon_and_schedule():
    args = train.build_parser().parse_args(["--preset", "gairat-wrn32", "--method", "gair-fat"])
    config = train.resolve(args, None)
    assert config.model == "wrn-34-10" and config.best_window == [58, 99]
    assert config.overrides["eps"] == 0.031 and config.overrides["step_size"] == 0.007
    assert [config.lr_at(e) for e in (59, 60, 90, 110)] == [0.1, 0.01, 0.001, 0.0005]


def test_list_presets_and_start_message_say_what_they_follow(capsys, data_root, tmp_path):
    train.main(["--list-presets"])
    listing = capsys.readouterr().out
    for recipe in PRESETS.values():
        assert recipe.name in listing and recipe.follows in listing
    args = train.build_parser().parse_args(["--preset", "gair-trades-wrn34", "--method", "trades"])
    message = train.describe_run(train.resolve(args, None), tmp_path, args)
    assert "follows: GAIRAT Appendix C.9" in message and "deviates:" in message


def test_bad_arguments_say_how_to_fix():
    with pytest.raises(ValueError, match="mail-resnet18.*gair-trades-wrn34"):
        train.main(["--preset", "mail-resnet19", "--method", "at"])
    with pytest.raises(ValueError, match="Expected --method to be one of"):
        train.main(["--method", "gairatt", "--out", "unused"])
    with pytest.raises(ValueError, match="Expected --set KEY=VALUE"):
        train.main(["--method", "at", "--set", "lam", "--out", "unused"])
    with pytest.raises(ValueError, match="EPOCH:LR"):
        train.main(["--method", "at", "--lr-schedule", "75-0.01", "--out", "unused"])
    with pytest.raises(ValueError, match="Expected hyper-parameters of 'at'"):
        train.main(["--method", "at", "--set", "lam=-1", "--out", "unused"])


# --- train.py ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_writes_log_checkpoint_and_status(straight):
    log = run_files.read_log(straight / "log.jsonl")
    assert [r["epoch"] for r in log] == [0, 1]
    assert [r["reweighting"] for r in log] == [False, True]
    for record in log:
        assert record["examples"] == 80 and record["lr"] == 0.01
        assert sum(record["kappa_hist"]) == 80 and len(record["kappa_hist"]) == 3  # κ in 0..K=2
        assert 0 <= record["kappa_median"] <= record["kappa_mean"] * 3 + 2
        for key in ("train_nat_acc", "train_pgd_acc", "test_nat_acc", "test_pgd_acc"):
            assert 0.0 <= record[key] <= 1.0
        assert record["seconds"] > 0 and np.isfinite(record["loss"])
    # Burn-in: weights all 1; then normalised to mean 1.
    assert log[0]["weight_min"] == log[0]["weight_max"] == 1.0
    assert log[1]["weight_mean"] == pytest.approx(1.0, abs=1e-5)
    assert sum(log[1]["weight_hist"]) == 80
    state = torch.load(straight / "checkpoint.pt", weights_only=True)
    assert state["epochs_done"] == 2 and state["burn_in"]["burn_in_epochs"] == 1
    assert json.loads((straight / "status.json").read_text())["complete"] is True
    config = json.loads((straight / "config.json").read_text())
    assert config["config"]["method"] == "gairat" and config["processes"] == 1


@pytest.mark.slow
def test_resume_is_bit_exact(straight, data_root, tmp_path):
    out = tmp_path / "pieces"
    first = train.main(
        tiny(
            data_root, "--method=gairat", "--set=burn_in_epochs=1", f"--out={out}", "--stop-after=1"
        )
    )
    assert first is not None and (first.epochs_done, first.complete) == (1, False)
    # Only the folder: the settings come from the checkpoint.
    second = train.main([f"--out={out}", "--resume", f"--data-root={data_root}", "--no-progress"])
    assert second is not None and (second.epochs_done, second.complete) == (2, True)
    assert_same_params(straight, out)
    torch.testing.assert_close(
        torch.load(out / "checkpoint.pt", weights_only=True)["optimizer"]["state"][0][
            "momentum_buffer"
        ],
        torch.load(straight / "checkpoint.pt", weights_only=True)["optimizer"]["state"][0][
            "momentum_buffer"
        ],
        rtol=0,
        atol=0,
    )
    straight_log, resumed_log = (run_files.read_log(p / "log.jsonl") for p in (straight, out))
    drop = ("seconds", "seconds_monitor")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed_log] == [
        {k: v for k, v in r.items() if k not in drop} for r in straight_log
    ]


@pytest.mark.slow
def test_branch_from_a_shared_prefix_equals_the_straight_run(straight, data_root, tmp_path):
    # GAIRAT's burn-in is AT (uniform start, CE, uniform weights): AT for epoch 0, then GAIRAT.
    prefix, branch = tmp_path / "prefix", tmp_path / "branch"
    train.main(tiny(data_root, "--method=at", f"--out={prefix}", "--stop-after=1"))
    result = train.main(
        tiny(
            data_root,
            "--method=gairat",
            "--set=burn_in_epochs=1",
            f"--out={branch}",
            f"--init-from={prefix / 'checkpoint.pt'}",
        )
    )
    assert result is not None and result.complete
    assert_same_params(straight, branch)
    state = torch.load(branch / "checkpoint.pt", weights_only=True)
    assert [(s["method"], s["first_epoch"]) for s in state["lineage"]] == [("at", 0), ("gairat", 1)]
    assert [r["method"] for r in run_files.read_log(branch / "log.jsonl")] == ["at", "gairat"]
    # A second branch off the same prefix, another method.
    other = train.main(
        tiny(
            data_root,
            "--method=mail-at",
            "--set=burn_in_epochs=1",
            f"--out={tmp_path / 'mail'}",
            f"--init-from={prefix / 'checkpoint.pt'}",
        )
    )
    assert (
        other is not None
        and other.log[-1]["method"] == "mail-at"
        and "margin_mean" in other.log[-1]
    )
    with pytest.raises(ValueError, match="model: 'smallcnn' -> 'resnet18'"):
        train.main(
            tiny(
                data_root,
                "--method=gairat",
                "--model=resnet18",
                f"--out={tmp_path / 'bad'}",
                f"--init-from={prefix / 'checkpoint.pt'}",
            )
        )


def test_resume_refuses_other_settings_and_reuse_needs_resume(straight, data_root):
    with pytest.raises(ValueError, match="lr: 0.01 -> 0.1"):
        train.main(
            tiny(
                data_root,
                "--method=gairat",
                "--set=burn_in_epochs=1",
                f"--out={straight}",
                "--resume",
                "--lr=0.1",
            )
        )
    with pytest.raises(ValueError, match="Pass --resume"):
        train.main(tiny(data_root, "--method=gairat", f"--out={straight}"))


@pytest.mark.slow
def test_max_minutes_stops_before_an_epoch_that_would_not_fit(data_root, tmp_path):
    out = tmp_path / "budget"
    train.main(tiny(data_root, "--method=at", f"--out={out}", "--stop-after=1"))
    result = train.main(
        [f"--out={out}", "--resume", f"--data-root={data_root}", "--max-minutes=0", "--no-progress"]
    )
    assert result is not None and result.epochs_done == 1 and not result.complete


@pytest.mark.slow
def test_fast_path_bf16_channels_last_runs_on_cpu(data_root, tmp_path):
    # The GPU default (bf16 autocast, channels-last), exercised on the CPU.
    config = TrainConfig(
        method="mail-at", model="smallcnn", epochs=1, batch_size=16, lr=0.01,
        overrides={"steps": 2, "burn_in_epochs": 0}, precision="bf16", monitor_size=16,
    )  # fmt: skip
    runtime = Runtime(str(data_root), device="cpu", channels_last=True, progress=False)
    result = training.train(config, tmp_path / "fast", runtime, log_to=None)
    assert result.complete and np.isfinite(result.log[0]["loss"]) and result.log[0]["reweighting"]
    state = torch.load(tmp_path / "fast" / "checkpoint.pt", weights_only=True)
    assert {v.dtype for v in state["model"].values() if v.is_floating_point()} == {torch.float32}


@pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo"
)
@pytest.mark.slow
def test_torchrun_two_processes_with_global_weights(data_root, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(EXAMPLES / "train.py"),
        *tiny(data_root, "--method=mail-trades", "--set=burn_in_epochs=1", "--normalize=global", f"--out={out}"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = run_files.read_log(out / "log.jsonl")
    # Per-process batches of 8; statistics cover both processes' examples.
    assert [r["examples"] for r in log] == [80, 80] and log[1]["reweighting"]
    assert log[1]["weight_mean"] == pytest.approx(1.0, abs=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["processes"] == 2 and config["config"]["overrides"]["normalize"] == "global"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epochs_done"] == 2


# --- evaluate.py ------------------------------------------------------------------------------


def test_evaluate_writes_json_and_continues(straight, data_root, tmp_path):
    out = tmp_path / "eval.json"
    common = [str(straight / "checkpoint.pt"), "--protocol=gairat", "--num-examples=16",
              "--eps=protocol", f"--data-root={data_root}", f"--out={out}", "--no-progress"]  # fmt: skip
    first = evaluate.main([*common, "--attacks=natural,pgd20"])
    assert first["complete"] and set(first["accuracy"]) == {"natural", "pgd20"}
    assert 0 <= first["accuracy"]["pgd20"] <= first["accuracy"]["natural"] <= 1
    assert (
        first["settings"]["eps"] == 0.031 and first["settings"]["attacks"]["pgd20"]["steps"] == 20
    )
    assert first["mode"] == "eval, float32" and first["epochs_done"] == 2
    second = evaluate.main([*common, "--attacks=natural,pgd20,cw"])
    assert second["seconds"]["pgd20"] == first["seconds"]["pgd20"]  # reused, not recomputed
    assert json.loads(out.read_text())["accuracy"].keys() == {"natural", "pgd20", "cw"}
    # A file written before the epoch convention names the count "epoch"; its results still apply.
    old = json.loads(out.read_text())
    old["epoch"] = old.pop("epochs_done")
    out.write_text(json.dumps(old))
    third = evaluate.main([*common, "--attacks=natural,pgd20,cw"])
    assert third["seconds"] == second["seconds"] and third["epochs_done"] == 2


# --- reproduce.py -----------------------------------------------------------------------------


def test_builtin_table_specs_are_consistent():
    protocols = {"gairat", "mail", "robustbench", None}  # None: the spec's eval_args say it all
    for name, spec in SPECS.items():
        assert spec["name"] == name and spec["preset"] in PRESETS and spec["protocol"] in protocols
        for row in spec["rows"]:
            assert row["method"] is None or row["method"] in ir.methods.names()
            assert row.get("prefix") is None or row["prefix"] in spec["prefixes"]
            assert set(spec["paper"].get(row["label"], {})) <= set(spec["columns"])
    assert SPECS["mail-table2"]["paper"]["GAIRAT"]["aa"] == (33.35, 0.57)
    assert SPECS["gairat-table1"]["paper"]["GAIRAT"]["best_pgd20"] == (57.81, 0.54)
    # The GPU plan: one burn-in per family, MART and FAT as full runs.
    prefix = {r["label"]: r.get("prefix") for r in SPECS["mail-table2"]["rows"]}
    assert prefix == {"AT": "at", "GAIRAT": "at", "MAIL-AT": "at", "TRADES": "trades",
                      "MAIL-TRADES": "trades", "MART": None, "FAT": None, "AWP": None}  # fmt: skip


@pytest.mark.slow
def test_reproduce_tiny_table_in_pieces(data_root, tmp_path, capsys):
    spec = {
        "name": "tiny",
        "title": "Tiny table",
        "preset": None,
        "protocol": "mail",
        "checkpoints": ["best", "last"],
        "columns": ["best_nat", "last_nat", "last_pgd100"],
        "train_args": [*TINY, "--best-window", "0", "1"],
        "prefixes": {"at": {"method": "at", "epochs": 1}},
        "notes": ["GAIRAT continues AT's burn-in."],
        "rows": [
            {"label": "AT", "method": "at", "prefix": "at"},
            {
                "label": "GAIRAT",
                "method": "gairat",
                "prefix": "at",
                "args": ["--set", "burn_in_epochs=1"],
            },
            {"label": "AWP", "method": None},
        ],
        "paper": {
            "AT": {"last_nat": [84.86, 0.17]},
            "GAIRAT": {"last_pgd100": [54.81, 0.15]},
            "AWP": {},
        },
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "table"
    common = [str(path), f"--out={out}", f"--data-root={data_root}", "--no-progress",
              "--eval-arg=--attacks=natural,pgd100", "--eval-arg=--num-examples=16"]  # fmt: skip
    # Piece 1: the prefix and the rows' training only.
    assert reproduce.main([*common, "--stage=train"]) == {"trained": True}
    assert json.loads((out / "runs" / "GAIRAT" / "status.json").read_text())["complete"]
    # Piece 2: everything else; training is not redone.
    result = reproduce.main(common)
    assert result["trained"] and result["evaluated"]
    assert capsys.readouterr().out.count("--stop-after 1") == 1  # the prefix ran once
    markdown = (out / "tiny.md").read_text()
    assert (
        "84.86 ± 0.17" in markdown
        and "54.81 ± 0.15" in markdown
        and "not in ir.methods" in markdown
    )
    assert "Protocol: `mail`" in markdown and "ε = 0.031" in markdown and "seed 0" in markdown
    assert "python examples/train.py" in markdown and "--init-from" in markdown
    assert "- GAIRAT continues AT's burn-in." in markdown
    table = json.loads((out / "tiny.json").read_text())
    ours = table["rows"]
    assert table["setting"]["protocol"] == "mail" and table["setting"]["seeds"] == [0]
    assert set(ours) == {"AT", "GAIRAT"}
    assert set(ours["AT"]) == {"best_nat", "best_pgd100", "last_nat", "last_pgd100"}
    assert all(0 <= v <= 100 for row in ours.values() for v in row.values())
    details = json.loads((out / "tiny-details.json").read_text())
    assert details["paper"]["AT"]["last_nat"] == [84.86, 0.17]
    assert details["rows"]["GAIRAT"]["seconds_per_epoch"] > 0
    assert details["rows"]["GAIRAT"]["train_minutes"] > 0 < details["rows"]["AT"]["eval_minutes"]


def test_reproduce_rejects_unknown_rows_and_tables(tmp_path):
    with pytest.raises(ValueError, match="mail-table2"):
        reproduce.main(["no-such-table"])
    with pytest.raises(ValueError, match="Expected --rows among AT"):
        reproduce.main(["mail-table2", "--rows=AT,ATT", f"--out={tmp_path}"])


# --- plots.py ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_plots_draw_or_say_matplotlib_is_missing(straight, tmp_path, capsys, monkeypatch):
    try:
        import matplotlib  # noqa: F401

        assert plots.main([str(straight / "log.jsonl"), f"--out={tmp_path / 'c.png'}"]).is_file()
        assert plots.main(
            [str(straight / "log.jsonl"), "--histograms", f"--out={tmp_path / 'h.png'}"]
        ).is_file()
    except ImportError:
        pass
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plots.main([str(straight / "log.jsonl"), f"--out={tmp_path / 'x.png'}"]) is None
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "x.png").exists()


def test_reproduce_reports_only_the_rows_it_was_given(tmp_path):
    # Nothing trained: the report of --rows AT tables AT alone, not every row as "not trained".
    out = tmp_path / "table"
    reproduce.main(["mnist-study", f"--out={out}", "--rows=AT,GAIRAT", "--stage=report"])
    table = [
        line for line in (out / "mnist-study.md").read_text().splitlines() if line.startswith("| ")
    ]
    labels = [line.split("|")[1].strip() for line in table[1:]]  # after the header
    assert labels == ["AT", "GAIRAT"]
    details = json.loads((out / "mnist-study-details.json").read_text())
    assert sorted(details["rows"]) == ["AT", "GAIRAT"]
