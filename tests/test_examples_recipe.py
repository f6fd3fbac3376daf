"""The MNIST benchmark's recipe pieces in ``train.py``: Adam, the per-batch ε ramp (logged, exact on
resume), FAT's τ as a schedule written as data, and the ``mnist-benchmark`` preset (tiny MNIST, CPU)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import run_files  # noqa: E402
import train  # noqa: E402
import training  # noqa: E402
from config import StepSchedule, TrainConfig, make_method  # noqa: E402
from test_examples_scripts import assert_same_params  # noqa: E402
from torch import nn  # noqa: E402


def write_tiny_mnist(root: Path, train_size: int = 64, test_size: int = 32) -> Path:
    """The four MNIST IDX files in ``root``: class-valued noise, 28×28."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train_size), ("t10k", test_size)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        pixels = labels[:, None, None] * 25.0 + rng.normal(0, 30, (n, 28, 28))
        for kind, magic, array in (
            ("images-idx3", 2051, pixels.clip(0, 255).astype(np.uint8)),
            ("labels-idx1", 2049, labels),
        ):
            header = struct.pack(f">i{array.ndim}i", magic, *array.shape)
            (root / f"{prefix}-{kind}-ubyte").write_bytes(header + array.tobytes())
    return root


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist"))


# 64 images in batches of 16: 4 steps per epoch; PGD-2 at ε = 0.3 ramped over 2 epochs.
RAMP = [
    "--data=mnist",
    "--model=wong-mnist",
    "--epochs=3",
    "--batch-size=16",
    "--optimizer=adam",
    "--lr=0.001",
    "--weight-decay=0",
    "--set=eps=0.3",
    "--set=step_size=0.04",
    "--set=steps=2",
    "--eps-ramp-epochs=2",
    "--monitor-size=8",
    "--no-progress",
]


def test_eps_ramp_per_batch_is_logged_and_matches_the_formula(mnist_root, tmp_path, monkeypatch):
    seen = []
    step = training.train_step

    def recording(method, optimizer, x, y, autocast):
        seen.append((method.attack.eps, method.attack.step_size))
        return step(method, optimizer, x, y, autocast)

    monkeypatch.setattr(training, "train_step", recording)
    out = tmp_path / "ramp"
    train.main([*RAMP, "--method=at", f"--data-root={mnist_root}", f"--out={out}"])
    # ε(t) = 0.3 · min(1, t / 2), α(t) = 0.04 · ε(t)/0.3, at t = epoch + i/4 before batch i.
    expected = []
    for t in (e + i / 4 for e in range(3) for i in range(4)):
        fraction = min(1.0, t / 2)
        expected.append((0.3 * fraction, 0.04 * fraction if fraction > 0 else 0.04))
    assert [v for pair in seen for v in pair] == pytest.approx(
        [v for pair in expected for v in pair], abs=1e-12
    )
    logged = [r["eps"] for r in run_files.read_log(out / "log.jsonl")]
    assert logged == pytest.approx([0.3 * 0.75 / 2, 0.3 * 1.75 / 2, 0.3])  # the last batch's ε
    config = run_files.read_json(out / "config.json")["config"]
    assert config["optimizer"] == "adam" and config["momentum"] == 0.0
    assert config["overrides"]["eps_ramp_epochs"] == 2
    state = run_files.load_checkpoint(out / "checkpoint.pt")["optimizer"]["state"]
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(state.values())))


@pytest.mark.slow
def test_resume_mid_ramp_is_bit_identical(mnist_root, tmp_path):
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    common = [*RAMP, "--method=mail-at", "--set=burn_in_epochs=1", f"--data-root={mnist_root}"]
    train.main([*common, f"--out={straight}"])
    train.main([*common, f"--out={pieces}", "--stop-after=1"])  # half-way up the ramp
    assert run_files.read_status(pieces)["epochs_done"] == 1
    train.main([f"--out={pieces}", "--resume", "--no-progress"])
    assert_same_params(straight, pieces)
    assert run_files.read_log(straight / "log.jsonl")[1]["eps"] == pytest.approx(0.3 * 1.75 / 2)


def test_no_ramp_sets_the_epoch_once_per_epoch(mnist_root, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        training.ir.methods.Method, "set_epoch", lambda self, e: calls.append(e), raising=True
    )
    args = [a for a in RAMP if a != "--eps-ramp-epochs=2"]
    out = tmp_path / "flat"
    train.main([*args, "--method=at", f"--data-root={mnist_root}", f"--out={out}"])
    # The methods built before training set epoch 0; then the loop: once per epoch, whole epochs.
    assert set(calls[:-3]) == {0} and calls[-3:] == [0, 1, 2]
    assert "eps" not in run_files.read_log(out / "log.jsonl")[0]


def test_adam_refuses_momentum_and_sgd_stays_the_default(tmp_path):
    with pytest.raises(ValueError, match="Expected no --momentum with --optimizer adam"):
        train.main(["--method=at", "--optimizer=adam", "--momentum=0.9", f"--out={tmp_path}"])
    with pytest.raises(ValueError, match="Expected no momentum with Adam"):
        TrainConfig(method="at", optimizer="adam")
    with pytest.raises(ValueError, match="Expected --optimizer in"):
        TrainConfig(method="at", optimizer="rmsprop")
    assert TrainConfig.from_dict({"method": "at"}).optimizer == "sgd"


def test_a_config_written_before_optimizer_existed_resumes_and_branches_as_sgd(
    mnist_root, tmp_path
):
    out = tmp_path / "old"
    common = [
        "--data=mnist",
        "--model=wong-mnist",
        "--epochs=2",
        "--batch-size=32",
        "--monitor-size=0",
    ]
    train.main([*common, "--method=at", "--stop-after=1", "--no-progress",
                f"--data-root={mnist_root}", f"--out={out}"])  # fmt: skip
    # Rewrite it as an older version wrote it: no "optimizer" in the saved settings.
    state = run_files.load_checkpoint(out / "checkpoint.pt")
    del state["config"]["optimizer"]
    run_files.save_atomic(state, out / "checkpoint.pt")
    branch = tmp_path / "branch"
    train.main([*common, "--method=gairat", "--no-progress", f"--data-root={mnist_root}",
                f"--init-from={out / 'checkpoint.pt'}", f"--out={branch}"])  # fmt: skip
    assert run_files.read_status(branch)["complete"]
    assert train.main([f"--out={out}", "--resume", "--no-progress"]).complete
    assert run_files.load_checkpoint(out / "checkpoint.pt")["config"]["optimizer"] == "sgd"
    with pytest.raises(ValueError, match="optimizer: 'sgd' -> 'adam'"):
        train.main([*common, "--method=gairat", "--optimizer=adam", f"--data-root={mnist_root}",
                    f"--init-from={out / 'checkpoint.pt'}", f"--out={tmp_path / 'x'}"])  # fmt: skip


@pytest.mark.parametrize("written", ["0:0,7:3,12:6", [[0, 0], [7, 3], [12, 6]]])
def test_fat_tau_schedule_as_data(written):
    config = TrainConfig(method="fat", overrides={"tau": written})
    assert config.overrides["tau"] == [[0, 0], [7, 3], [12, 6]]  # JSON in config.json
    method = make_method(config, nn.Linear(1, 1))
    taus = []
    for epoch in range(20):
        method.set_epoch(epoch)
        taus.append(method.attack.tau)
    assert taus == [0] * 7 + [3] * 5 + [6] * 8


@pytest.mark.parametrize(
    "bad", ["7:3,12:6", [[0, 0], [12, 6], [7, 3]], [[0, -1]], "0:a", [[0, 1.5]]]
)
def test_a_bad_tau_schedule_says_how_to_write_one(bad):
    with pytest.raises(ValueError, match="Expected tau as a schedule|EPOCH:VALUE"):
        TrainConfig(method="fat", overrides={"tau": bad})


def test_set_tau_reads_the_schedule_from_the_command_line(tmp_path):
    args = train.build_parser().parse_args(["--method=fat", "--set=tau=0:0,7:3,12:6"])
    assert train.resolve(args, tmp_path).overrides["tau"] == [[0, 0], [7, 3], [12, 6]]
    assert StepSchedule([[0, 1], [3, 2]])(2) == 1


def test_mnist_benchmark_preset_is_the_draft_recipe(tmp_path):
    def config(method):
        args = train.build_parser().parse_args(["--preset=mnist-benchmark", f"--method={method}"])
        return train.resolve(args, tmp_path)

    at = config("at")
    assert (at.data, at.model, at.epochs, at.batch_size) == ("mnist", "wong-mnist", 20, 128)
    assert (at.optimizer, at.lr, at.momentum, at.weight_decay) == ("adam", 1e-3, 0.0, 0.0)
    assert [at.lr_at(e) for e in (15, 16, 19)] == [1e-3, 1e-4, 1e-4]
    assert at.train_size is None and at.best_window is None
    assert at.overrides == {"eps": 0.3, "step_size": 0.04, "steps": 10, "eps_ramp_epochs": 2}
    assert config("fat").overrides["tau"] == [[0, 0], [7, 3], [12, 6]]
    assert config("gairat").overrides["burn_in_epochs"] == 10
    awp = config("mail-at-awp").overrides
    assert (awp["awp_gamma"], awp["awp_warmup"], awp["burn_in_epochs"]) == (5e-3, 2, 10)
    # Each paper's defaults otherwise.
    method = make_method(config("mail-trades"), nn.Linear(1, 1))
    assert (method.params["slope"], method.params["bias"], method.params["beta"]) == (2.0, 0.0, 5.0)
    assert make_method(config("gair-trades"), nn.Linear(1, 1)).params["lam"] == -1.0
    assert json.loads(json.dumps(at.to_dict())) == at.to_dict()
