"""A newcomer's run: smoke runs, defaults, resume that remembers, Ctrl-C, no debris, and
evaluations that follow the checkpoint and never overwrite each other (tiny CIFAR-10 on the CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import evaluate  # noqa: E402
import run_files  # noqa: E402
import train  # noqa: E402
import training  # noqa: E402
from test_examples_scripts import tiny, write_tiny_cifar10  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="module")
def smoke(data_root, tmp_path_factory) -> Path:
    """One epoch of AT ended after 2 of its 5 batches."""
    out = tmp_path_factory.mktemp("runs") / "smoke"
    train.main(
        tiny(data_root, "--method=at", "--epochs=1", "--max-steps-per-epoch=2", f"--out={out}")
    )
    return out


def test_max_steps_per_epoch_ends_the_epoch_early_and_is_recorded(smoke):
    (record,) = run_files.read_log(smoke / "log.jsonl")
    assert record["epoch"] == 0 and record["examples"] == 2 * 16  # 2 batches of 16, not 80
    assert run_files.load_checkpoint(smoke / "checkpoint.pt")["config"]["max_steps_per_epoch"] == 2


def test_console_and_log_number_epochs_from_zero(data_root, tmp_path, capsys):
    train.main(tiny(data_root, "--method=at", "--max-steps-per-epoch=1", f"--out={tmp_path / 'r'}"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    logged = [r["epoch"] for r in run_files.read_log(tmp_path / "r" / "log.jsonl")]
    assert [int(line.split()[1]) for line in lines] == logged == [0, 1]


def test_mnist_defaults_to_smallcnn_and_cifar_to_resnet18(tmp_path):
    args = train.build_parser().parse_args(["--method=at", "--data=mnist"])
    assert train.resolve(args, tmp_path / "x").model == "smallcnn"
    assert train.default_out(args) == Path("runs/mnist-smallcnn-at-s0")
    args = train.build_parser().parse_args(["--method=at", "--data=svhn"])
    assert train.resolve(args, tmp_path / "x").model == "resnet18"


def test_resume_remembers_the_data_root_and_a_finished_run_says_so(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(
        tiny(data_root, "--method=at", "--max-steps-per-epoch=1", "--stop-after=1", f"--out={out}")
    )
    assert json.loads((out / "config.json").read_text())["data_root"] == str(data_root)
    resumed = train.main([f"--out={out}", "--resume", "--no-progress"])  # no --data-root
    assert resumed.complete and resumed.epochs_done == 2
    capsys.readouterr()
    before = (out / "checkpoint.pt").read_bytes()
    again = train.main([f"--out={out}", "--resume", "--no-progress"])
    assert again.complete and again.epochs_done == 2
    assert "is finished: all 2 epochs (0..1) are done" in capsys.readouterr().out
    assert (out / "checkpoint.pt").read_bytes() == before


def test_ctrl_c_exits_with_one_line_and_keeps_the_last_epoch(data_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []
    real_monitor = training.monitor

    def interrupted_second_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_monitor(*args, **kwargs)

    monkeypatch.setattr(training, "monitor", interrupted_second_time)
    with pytest.raises(SystemExit) as stop:
        train.main(tiny(data_root, "--method=at", "--max-steps-per-epoch=1", f"--out={out}"))
    message = str(stop.value.code)
    assert "\n" not in message and "holds epochs 0..0" in message
    assert f"--out {out} --resume" in message
    assert run_files.load_checkpoint(out / "checkpoint.pt")["epochs_done"] == 1
    assert not list(out.glob(".*tmp"))


def test_ctrl_c_before_the_first_epoch_says_nothing_was_saved(data_root, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "load_dataset", interrupt)
    with pytest.raises(SystemExit, match="before the first epoch ended; nothing was saved"):
        train.main(tiny(data_root, "--method=at", f"--out={tmp_path / 'run'}"))


@pytest.mark.parametrize(
    "extra, error",
    [(["--data-root=/nonexistent"], FileNotFoundError), (["--preset=nope"], ValueError)],
)
def test_a_run_that_fails_to_start_leaves_no_folder(data_root, tmp_path, extra, error):
    out = tmp_path / "runs" / "failed"
    with pytest.raises(error):
        train.main([*tiny(data_root, "--method=gairat", f"--out={out}"), *extra])
    assert not out.exists()


def test_evaluate_takes_eps_from_the_checkpoint_and_names_the_output(smoke, data_root, capsys):
    common = [
        str(smoke / "checkpoint.pt"),
        "--attacks=natural,pgd20",
        "--num-examples=8",
        "--no-progress",
    ]
    first = evaluate.main([*common, "--protocol=mail"])  # data root from the run's config.json
    assert first["settings"]["eps"] == pytest.approx(8 / 255)
    assert first["eps_from"] == "the checkpoint's training config"
    printed = capsys.readouterr().out
    assert "ε = 0.03137 (ℓ∞, 8/255; from the checkpoint's training config)" in printed
    assert (smoke / "eval-last-mail-eps8-255.json").is_file()
    second = evaluate.main([*common, "--protocol=mail", "--eps=protocol"])
    assert second["settings"]["eps"] == 0.031
    third = evaluate.main([*common, "--protocol=mail", "--eps=0.01"])
    assert third["settings"]["eps"] == 0.01
    written = sorted(p.name for p in smoke.glob("eval-*.json"))
    assert written == [
        "eval-last-mail-eps0.01.json",
        "eval-last-mail-eps0.031.json",
        "eval-last-mail-eps8-255.json",
    ]
    assert (
        json.loads((smoke / "eval-last-mail-eps8-255.json").read_text())["accuracy"]
        == first["accuracy"]
    )


def test_evaluate_checks_optional_packages_before_any_attack(smoke, monkeypatch):
    monkeypatch.setattr(evaluate, "find_spec", lambda name: None)

    def no_attack(*args, **kwargs):
        raise AssertionError("an attack ran before the package check")

    monkeypatch.setattr(evaluate.evaluation, "evaluate", no_attack)
    with pytest.raises(ImportError, match="pyautoattack for the attacks aa.*pip install"):
        evaluate.main([str(smoke / "checkpoint.pt"), "--attacks=natural,pgd20,aa", "--no-progress"])
    assert not list(smoke.glob("eval-*default*.json"))


def test_checkpoint_digest_is_stable_across_save_and_load(smoke):
    state = run_files.load_checkpoint(smoke / "checkpoint.pt")
    raw = torch.load(smoke / "checkpoint.pt", weights_only=True)
    assert raw["sha256"] == run_files.state_digest(state)


# The run folder's files and keys as the scripts wrote them before training.py was split (58867ee):
# another session may hold folders started then, and they must resume. The checkpoints' count of
# epochs done was then named "epoch"; a resumed run writes it as "epochs_done".
CHECKPOINT_KEYS = ["format", "config", "epoch", "model", "optimizer", "burn_in", "lineage", "best"]
BEST_KEYS = ["format", "config", "epoch", "model", "best"]
STATUS_KEYS = ["epochs_done", "epochs", "complete", "best"]
CONFIG_JSON_KEYS = ["config", "data_root", "lineage", "method", "device", "processes", "torch",
                    "compile", "channels_last"]  # fmt: skip


def write_old_run_folder(out: Path, state: dict, best: dict, log: list, config_json: dict) -> None:
    """A run folder in the earlier format, written here key by key (the checkpoint unchecksummed, as
    the oldest ones are)."""
    out.mkdir()
    state, best = ({"epoch": s["epochs_done"], **s} for s in (state, best))
    torch.save(
        {key: state[key] for key in CHECKPOINT_KEYS}, out / "checkpoint.pt"
    )  # format "instance_reweight-examples/1"
    torch.save({key: best[key] for key in BEST_KEYS}, out / "best.pt")
    (out / "log.jsonl").write_text("".join(json.dumps(record) + "\n" for record in log))
    status = {"epochs_done": state["epoch"], "epochs": state["config"]["epochs"],
              "complete": False, "best": state["best"]}  # fmt: skip
    (out / "status.json").write_text(json.dumps(status, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")


@pytest.mark.slow
def test_a_run_folder_in_the_earlier_format_resumes_bit_exact(data_root, tmp_path):
    gairat = ("--method=gairat", "--set=burn_in_epochs=1", "--best-window", "0", "1")
    straight, piece, old = tmp_path / "straight", tmp_path / "piece", tmp_path / "old"
    train.main(tiny(data_root, *gairat, f"--out={straight}"))
    train.main(tiny(data_root, *gairat, f"--out={piece}", "--stop-after=1"))
    state = torch.load(piece / "checkpoint.pt", weights_only=True)
    assert state["format"] == "instance_reweight-examples/1" and state["epochs_done"] == 1
    best = torch.load(piece / "best.pt", weights_only=True)
    config_json = json.loads((piece / "config.json").read_text())
    write_old_run_folder(old, state, best, run_files.read_log(piece / "log.jsonl"), config_json)

    result = train.main([f"--out={old}", "--resume", "--no-progress"])
    assert result is not None and (result.epochs_done, result.complete) == (2, True)
    ours, reference = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (old, straight))
    renamed = [("epochs_done" if k == "epoch" else k) for k in CHECKPOINT_KEYS]
    assert list(ours) == [*renamed, "sha256"]
    for key, value in reference["model"].items():
        assert torch.equal(ours["model"][key], value), key
    # best.pt is rewritten only when an epoch beats the best so far (with the count renamed).
    best_keys = [k for k in torch.load(old / "best.pt", weights_only=True) if k != "sha256"]
    assert best_keys in (BEST_KEYS, [("epochs_done" if k == "epoch" else k) for k in BEST_KEYS])
    status = json.loads((old / "status.json").read_text())
    assert list(status) == STATUS_KEYS and status["complete"] and status["epochs_done"] == 2
    assert list(json.loads((old / "config.json").read_text())) == CONFIG_JSON_KEYS
    timing = ("seconds", "seconds_monitor")
    assert [{k: v for k, v in r.items() if k not in timing} for r in result.log] == [
        {k: v for k, v in r.items() if k not in timing}
        for r in run_files.read_log(straight / "log.jsonl")
    ]
    assert sorted(p.name for p in old.iterdir()) == [
        "best.pt", "checkpoint.pt", "config.json", "log.jsonl", "status.json"
    ]  # fmt: skip
