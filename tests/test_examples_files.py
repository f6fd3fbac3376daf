"""Safe files in examples/: checkpoints with checksums written durably, clear errors for damaged
files, and table names that cannot leave the output folder."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import reproduce  # noqa: E402
import run_files  # noqa: E402
import train  # noqa: E402
from test_examples_scripts import tiny, write_tiny_cifar10  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar"))


STATE = {
    "format": run_files.CHECKPOINT_FORMAT,
    "config": {"method": "at"},
    "epochs_done": 3,
    "model": {"w": torch.arange(64, dtype=torch.float32), "b": torch.tensor(0.5)},
    "lineage": [{"method": "at", "first_epoch": 0}],
}


def test_checkpoint_round_trip_carries_a_checksum_and_loads_weights_only(tmp_path):
    path = tmp_path / "checkpoint.pt"
    run_files.save_atomic(STATE, path)
    raw = torch.load(path, weights_only=True)
    assert raw["sha256"] == run_files.state_digest(STATE)
    loaded = run_files.load_checkpoint(path)
    assert "sha256" not in loaded and torch.equal(loaded["model"]["w"], STATE["model"]["w"])
    assert not list(tmp_path.glob(".*tmp"))


def test_digest_sees_every_tensor_byte_and_every_value():
    base = run_files.state_digest(STATE)
    flipped = {**STATE, "model": {**STATE["model"], "w": STATE["model"]["w"].clone()}}
    flipped["model"]["w"][17] = 17.000002
    assert run_files.state_digest(flipped) != base
    assert run_files.state_digest({**STATE, "epochs_done": 4}) != base
    as_tuple = {**STATE, "lineage": tuple(STATE["lineage"])}
    assert run_files.state_digest(as_tuple) == base


def test_flipped_bytes_inside_a_checkpoint_are_detected(tmp_path):
    path = tmp_path / "checkpoint.pt"
    run_files.save_atomic(STATE, path)
    data = bytearray(path.read_bytes())
    at = bytes(data).index(STATE["model"]["w"].numpy().tobytes()) + 4 * 40 + 1
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["model"]["w"][40] != 40  # torch alone loads it
    with pytest.raises(ValueError, match="checkpoint.pt' to match the checksum.*corrupted"):
        run_files.load_checkpoint(path)


@pytest.mark.parametrize(
    "damage", [lambda b: b"", lambda b: b[: len(b) // 2], lambda b: b"garbage " * 20]
)
def test_empty_truncated_or_garbage_checkpoint_names_the_file(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    run_files.save_atomic(STATE, path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match="complete checkpoint at '.*checkpoint.pt'.*delete it"):
        run_files.load_checkpoint(path)


def test_checkpoint_without_checksum_still_loads(tmp_path):
    path = tmp_path / "old.pt"
    torch.save(STATE, path)
    assert run_files.load_checkpoint(path)["epochs_done"] == 3


def test_a_count_stored_under_its_old_name_epoch_reads_as_epochs_done(tmp_path):
    old = {("epoch" if k == "epochs_done" else k): v for k, v in STATE.items()}
    for path, save in (
        (tmp_path / "old.pt", torch.save),
        (tmp_path / "ck.pt", run_files.save_atomic),
    ):
        save(old, path)
        loaded = run_files.load_checkpoint(path)
        assert loaded["epochs_done"] == 3 and "epoch" not in loaded
    assert run_files.epochs_done({"epoch": 3}) == run_files.epochs_done({"epochs_done": 3}) == 3


def test_previous_checkpoint_is_kept_when_the_new_one_does_not_verify(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    run_files.save_atomic(STATE, path)
    before = path.read_bytes()
    real_save = torch.save

    def torn_save(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)  # as if the disk kept only half

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(ValueError, match="complete checkpoint"):
        run_files.save_atomic({**STATE, "epochs_done": 4}, path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp"))


def test_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1]
    )
    run_files.write_json_atomic({"a": 1}, tmp_path / "status.json")
    assert calls == ["fsync", "replace", "fsync"]  # file, rename, folder
    assert json.loads((tmp_path / "status.json").read_text()) == {"a": 1}


def test_resume_from_a_corrupted_checkpoint_stops_with_the_path(data_root, tmp_path):
    out = tmp_path / "run"
    train.main(tiny(data_root, "--method=at", "--epochs=1", f"--out={out}"))
    checkpoint = out / "checkpoint.pt"
    weight = next(iter(torch.load(checkpoint, weights_only=True)["model"].values()))
    data = bytearray(checkpoint.read_bytes())
    data[bytes(data).index(weight.numpy().tobytes()) + 2] ^= 0x80
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"'{checkpoint}' to match the checksum"):
        train.main(tiny(data_root, f"--out={out}", "--resume", "--epochs=2"))


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "..", ".hidden", "", "x y", 3])
def test_reproduce_refuses_table_names_that_are_not_plain(tmp_path, name):
    spec = tmp_path / "spec.json"
    rows = [{"label": "AT", "method": "at"}]
    spec.write_text(
        json.dumps({"name": name, "rows": rows, "protocol": "mail", "columns": ["nat"]})
    )
    with pytest.raises(ValueError, match="spec.json', got name: "):
        reproduce.load_spec(str(spec))


@pytest.mark.parametrize("label", ["..", "."])
def test_reproduce_refuses_row_labels_that_would_leave_the_folder(tmp_path, label):
    spec = {
        "name": "t",
        "rows": [{"label": label, "method": "at"}],
        "protocol": "mail",
        "columns": ["nat"],
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"spec.json', got rows\[0\].label: "):
        reproduce.load_spec(str(path))


def test_reproduce_slugs_labels_with_other_characters(tmp_path):
    spec = {
        "name": "t",
        "rows": [{"label": "GAIR/AT (λ=0)", "method": "gairat"}],
        "protocol": "mail",
        "columns": ["nat"],
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    run = reproduce.Reproduction(reproduce.load_spec(str(path)), tmp_path / "out", data_root="d")
    assert run.run_dir(spec["rows"][0]).parent == tmp_path / "out" / "runs"
