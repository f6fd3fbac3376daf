"""evaluate.py's per-image records, pass names, run folders and its checks, on a tiny CPU run.

The run is one epoch of AT with SmallCNN on a tiny CIFAR-10 written here (seconds); the tests check
the plumbing — records that decode to the JSON's accuracies, resumption, file names — not accuracy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import evaluate  # noqa: E402
import paired_stats  # noqa: E402
import train  # noqa: E402

from instance_reweight import evaluation  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One epoch of AT, SmallCNN, PGD-2, 32 training and 16 test images of class-coloured noise."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 8) for i in range(1, 6)] + [("test_batch", 16)]:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        pixels = labels[:, None] * 25.0 + rng.normal(0, 30, (n, 3 * 1024))
        records = np.concatenate([labels[:, None], pixels.clip(0, 255).astype(np.uint8)], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    out = tmp_path_factory.mktemp("runs") / "at"
    train.main(["--model=smallcnn", "--method=at", "--epochs=1", "--batch-size=16", "--lr=0.01",
                "--set=steps=2", "--monitor-size=0", f"--data-root={root}", "--no-progress",
                f"--out={out}"])  # fmt: skip
    return out


def test_records_decode_to_the_accuracies_and_pass_name_picks_the_file(run):
    options = '{"pgd20": {"steps": 3, "step_size": 0.01}, "cw": {"steps": 2}}'
    record = evaluate.main([str(run), "--eps=0.03", "--attacks=natural,pgd20,cw", "--name=full",
                            f"--options={options}", "--no-progress"])  # fmt: skip
    path = run / "eval-last-full.json"
    assert json.loads(path.read_text()) == record and record["complete"]
    assert record["records"]["first"] == 0 and record["records"]["n"] == 16
    assert "n_of" not in record["records"]
    outcomes = evaluate.read_records(record)
    assert set(outcomes) == {"natural", "pgd20", "cw"}
    for attack, flags in outcomes.items():
        assert flags.dtype == bool and flags.shape == (16,)
        assert flags.mean() == record["accuracy"][attack]
        assert not (flags & ~outcomes["natural"]).any()  # robust implies correct
    # the flags are ir.evaluation's per-image masks of the same model and images
    assert record["settings"]["attacks"]["pgd20"]["steps"] == 3
    assert record["epochs_done"] == 1 and record["accuracy"].keys() == {"natural", "pgd20", "cw"}


def test_records_are_kept_on_resume_and_a_subset_size_is_named(run, tmp_path):
    out = tmp_path / "eval.json"
    common = [str(run / "checkpoint.pt"), "--eps=0.03", f"--out={out}", "--no-progress"]
    first = evaluate.main([*common, "--attacks=natural", "--num-examples=10"])
    second = evaluate.main([*common, "--attacks=natural,pgd20", "--num-examples=10",
                            '--options={"pgd20": {"steps": 2}}'])  # fmt: skip
    assert second["seconds"]["natural"] == first["seconds"]["natural"]  # reused
    assert second["records"]["flags"]["natural"] == first["records"]["flags"]["natural"]
    assert second["records"]["n"] == 10
    assert {k: v.mean() for k, v in evaluate.read_records(second).items()} == second["accuracy"]
    # an evaluation without records (written before them) is run again, so records are complete
    old = json.loads(out.read_text())
    del old["records"]
    out.write_text(json.dumps(old))
    third = evaluate.main([*common, "--attacks=natural,pgd20", "--num-examples=10",
                           '--options={"pgd20": {"steps": 2}}'])  # fmt: skip
    assert third["seconds"]["natural"] != first["seconds"]["natural"]
    assert set(evaluate.read_records(third)) == {"natural", "pgd20"}
    # the MAIL protocol evaluates AutoAttack on fewer images than the rest: its count is kept
    flags = {"natural": paired_stats.pack_flags(np.ones(16, bool)), "aa": "AA=="}
    records = evaluate._records(flags, {"natural": 16, "aa": 3})
    assert records == {"first": 0, "n": 16, "flags": flags, "n_of": {"aa": 3}}
    assert evaluate.read_records({"records": records})["aa"].shape == (3,)
    assert evaluate.read_records({"accuracy": {}}) == {}


def test_apgd_t_is_autoattacks_apgd_t_alone_beside_aa(run, tmp_path, monkeypatch):
    settings = evaluate.attack_settings(
        attacks=["aa", "apgd-ce", "apgd-t"], eps=0.03, norm=None, protocol=None,
        num_examples=4, clip=(0.0, 1.0),
    )  # fmt: skip
    assert settings["attacks"]["aa"] == {"version": "standard", "seed": 0, "attacks": None}
    assert settings["attacks"]["apgd-t"] == {"version": "custom", "seed": 0, "attacks": ["apgd-t"]}
    assert settings["num_examples"] == {"aa": 4, "apgd-ce": 4, "apgd-t": 4}
    # the MAIL protocol's AutoAttack subset holds for its part too
    mail = evaluate.attack_settings(attacks=["natural", "apgd-t"], protocol="mail", clip=(0.0, 1.0))
    assert mail["num_examples"] == {"natural": None, "apgd-t": 1000} and mail["eps"] == 0.031
    # evaluate.py hands ir.evaluation its "aa" with these options (AutoAttack itself is not run
    # here: APGD-T's 9 × 100 steps take a minute on this CPU even for 4 images)
    calls = []

    def masks(model, data, *, attacks, options, num_examples, **kwargs):
        calls.append((attacks, options, num_examples))
        return {attacks[0]: torch.tensor([True, False, True, True])}

    monkeypatch.setattr(evaluation, "robust_masks", masks)
    monkeypatch.setattr(evaluate, "check_optional_packages", lambda attacks: None)
    record = evaluate.main([str(run), "--eps=0.03", "--attacks=apgd-t", "--num-examples=4",
                            f"--out={tmp_path / 'aa.json'}", "--no-progress"])  # fmt: skip
    assert calls == [(("aa",), {"aa": settings["attacks"]["apgd-t"]}, {"aa": 4})]
    assert record["accuracy"] == {"apgd-t": 0.75}
    assert evaluate.read_records(record)["apgd-t"].tolist() == [True, False, True, True]


def test_bad_output_folder_attack_and_option_fail_before_any_attack(
    run, tmp_path, monkeypatch, capsys
):
    def no_attack(*args, **kwargs):
        raise AssertionError("an attack ran")

    monkeypatch.setattr(evaluation, "robust_masks", no_attack)
    with pytest.raises(SystemExit):
        evaluate.main([str(run), f"--out={tmp_path / 'missing' / 'e.json'}", "--no-progress"])
    assert "create it first" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="create it first"):
        evaluate.evaluate_checkpoint(run, data_root="data", out=tmp_path / "missing" / "e.json")
    with pytest.raises(ValueError, match="Expected attacks among .*apgd-t"):
        evaluate.main([str(run), "--attacks=natural,apgd-x", "--no-progress"])
    with pytest.raises(ValueError, match="Expected --options keys among"):
        evaluate.main([str(run), "--attacks=natural", '--options={"cw": {}}', "--no-progress"])
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        evaluate.main([str(tmp_path), "--no-progress"])  # a folder without a run
    with pytest.raises(SystemExit):
        evaluate.main([str(run), "--name=a/b"])
    with pytest.raises(SystemExit):
        evaluate.main([str(run), "--name=full", f"--out={tmp_path / 'e.json'}"])
