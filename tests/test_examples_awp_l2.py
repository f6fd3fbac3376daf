"""The example scripts with AWP methods and the ℓ2 ball: train.py drives an AWP method through
``method.training_step``, trains and monitors in the ball it was given, and evaluate.py follows the
checkpoint's ball unless told otherwise. On the tiny CIFAR-10 of ``test_examples_scripts``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import evaluate  # noqa: E402
import run_files  # noqa: E402
import train  # noqa: E402
from test_examples_scripts import TINY, write_tiny_cifar10  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar"))


def _weights(out: Path) -> dict:
    return run_files.load_checkpoint(out / "checkpoint.pt")["model"]


@pytest.mark.slow
def test_an_awp_method_trains_through_train_py_and_perturbs_only_from_its_warm_up(
    data_root, tmp_path
):
    common = [*TINY, "--epochs=1", f"--data-root={data_root}", "--no-progress"]
    train.main([*common, "--method=at", f"--out={tmp_path / 'at'}"])
    # AWP from epoch 5 of a 1-epoch run: never applied, so the run is plain AT.
    late = ["--method=at-awp", "--set=awp_warmup=5", f"--out={tmp_path / 'late'}"]
    train.main([*common, *late])
    awp = train.main(
        [*common, "--method=at-awp", "--set=awp_gamma=0.05", f"--out={tmp_path / 'awp'}"]
    )
    assert awp.complete and all(torch.isfinite(torch.tensor(r["loss"])) for r in awp.log)
    at, late_w, awp_w = (_weights(tmp_path / k) for k in ("at", "late", "awp"))
    for key in at:
        torch.testing.assert_close(late_w[key], at[key], rtol=1e-5, atol=1e-6)
    # Every step is taken at perturbed weights, so the trained weights leave plain AT's.
    moved = max(
        (awp_w[k].float() - at[k].float()).abs().max().item() for k in at if at[k].dim() > 1
    )
    assert moved > 1e-4


@pytest.mark.slow
def test_l2_training_is_monitored_and_evaluated_in_the_l2_ball(data_root, tmp_path):
    out = tmp_path / "l2"
    ball = ["--norm=l2", "--set=eps=0.5", "--set=step_size=0.125"]
    train.main([*TINY, "--epochs=1", "--method=at", *ball, f"--data-root={data_root}",
                "--no-progress", f"--out={out}"])  # fmt: skip
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["overrides"]["norm"] == "l2"
    assert "test_pgd_acc" in json.loads((out / "log.jsonl").read_text().splitlines()[-1])

    common = [str(out / "checkpoint.pt"), "--attacks=natural,pgd20", "--num-examples=8",
              "--no-progress"]  # fmt: skip
    record = evaluate.main(common)  # the checkpoint's ball
    assert (record["settings"]["eps"], record["settings"]["norm"]) == (0.5, "l2")
    assert (out / "eval-last-default-l2-eps0.5.json").is_file()
    # The protocol's ball with --eps protocol; an explicit --norm wins.
    record = evaluate.main([*common, "--protocol=robustbench", "--eps=protocol"])
    assert record["settings"]["norm"] == "linf" and record["settings"]["eps"] == pytest.approx(
        8 / 255
    )
    record = evaluate.main([*common, "--norm=linf", "--eps=0.03"])
    assert (record["settings"]["eps"], record["settings"]["norm"]) == (0.03, "linf")
    assert (out / "eval-last-default-eps0.03.json").is_file()


def test_the_l2_awp_preset_sets_the_ball_for_every_method_and_gamma_for_at_awp():
    def overrides(method: str) -> dict:
        args = train.build_parser().parse_args(
            ["--preset=awp-preact-resnet18-l2", f"--method={method}"]
        )
        return train.resolve(args, None).overrides

    awp = overrides("at-awp")
    assert awp["norm"] == "l2" and awp["eps"] == pytest.approx(128 / 255)
    assert awp["step_size"] == pytest.approx(15 / 255) and awp["awp_gamma"] == 0.01
    at = overrides("at")
    assert at["norm"] == "l2" and "awp_gamma" not in at
