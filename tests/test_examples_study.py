"""Quick runs on a fixed subset (``--train-size``/``--test-size``) and the CPU study's table spec.

The subset is checked against a per-class oracle; the study spec (``reproduce.py mnist-study``) is
checked for what it promises (its preset, its attacks, a table without paper columns) on the tiny
CIFAR-10 of ``test_examples_scripts``, not for accuracy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import reproduce  # noqa: E402
import train  # noqa: E402
from data import balanced_subset, load_dataset  # noqa: E402
from tables import SPECS  # noqa: E402
from test_examples_scripts import TINY, write_tiny_cifar10  # noqa: E402

import instance_reweight as ir  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar"))


def test_balanced_subset_matches_a_per_class_oracle():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (200,), generator=generator)
    images = torch.arange(200, dtype=torch.uint8).view(200, 1, 1, 1)
    for size in (4, 7, 50, 101):
        sub_images, sub_labels = balanced_subset((images, labels), size, 4)
        # Oracle: size // C of each class, one more for the first size % C classes.
        expected = [size // 4 + (c < size % 4) for c in range(4)]
        assert [int((sub_labels == c).sum()) for c in range(4)] == expected
        index = sub_images.view(-1).long()  # the images are their own indices
        assert torch.equal(labels[index], sub_labels)
        assert bool((index[1:] > index[:-1]).all())  # data-set order, no repeats
        # Fixed: the same examples on every call, whatever the global RNG does.
        torch.manual_seed(size)
        assert torch.equal(balanced_subset((images, labels), size, 4)[0], sub_images)


def test_balanced_subset_refuses_what_the_split_cannot_give():
    images, labels = torch.zeros(6, 1, 1, 1, dtype=torch.uint8), torch.tensor([0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"subset size in 1\.\.6"):
        balanced_subset((images, labels), 7, 2)
    with pytest.raises(ValueError, match="examples per class"):
        balanced_subset((images, labels), 4, 2)


@pytest.mark.slow
def test_train_size_is_recorded_and_kept_on_resume(data_root, tmp_path):
    out = tmp_path / "run"
    common = [*TINY, f"--data-root={data_root}", "--no-progress", f"--out={out}"]
    first = train.main(
        [*common, "--method=at", "--train-size=40", "--test-size=5", "--stop-after=1"]
    )
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["train_size"], config["test_size"]) == (40, 5)
    assert first.log[0]["examples"] == 40  # every training example of the epoch, once
    resumed = train.main([*common, "--resume"])
    assert resumed.complete and resumed.log[1]["examples"] == 40
    assert sorted(load_dataset("cifar10", data_root, train=False, size=5)[1].tolist()) == [
        0,
        1,
        2,
        3,
        4,
    ]


def test_mnist_study_spec_and_preset():
    spec = SPECS["mnist-study"]
    labels = {row["label"]: row for row in spec["rows"]}
    assert set(labels) == {
        "AT", "TRADES", "MART", "FAT", "GAIRAT", "MAIL-AT", "MAIL-TRADES", "AT-AWP", "MAIL-AT-AWP"
    }  # fmt: skip
    assert {labels[k]["prefix"] for k in ("AT", "GAIRAT", "MAIL-AT")} == {"at"}
    assert {labels[k]["prefix"] for k in ("TRADES", "MAIL-TRADES")} == {"trades"}
    assert {labels[k]["prefix"] for k in ("AT-AWP", "MAIL-AT-AWP")} == {"at-awp"}
    assert {labels[k].get("prefix") for k in ("MART", "FAT")} == {None}
    args = train.build_parser().parse_args(["--preset=mnist-study", "--method=gairat"])
    config = train.resolve(args, None)
    assert (config.data, config.model, config.train_size) == ("mnist", "smallcnn", 8000)
    assert config.overrides["eps"] == 0.3 and config.overrides["burn_in_epochs"] == 5
    assert spec["protocol"] is None and spec["eval_args"][:2] == ["--eps", "0.3"]
    options = json.loads(spec["eval_args"][spec["eval_args"].index("--options") + 1])
    settings = ir.evaluation.settings(
        attacks=["natural", "pgd20", "cw", "pgd20-ls", "aa"], eps=0.3, options=options
    )
    assert settings["attacks"]["pgd20"]["steps"] == 40
    assert settings["attacks"]["aa"]["attacks"] == ["apgd-ce", "apgd-t"]


@pytest.mark.slow
def test_a_table_without_paper_numbers(data_root, tmp_path):
    spec = {
        "name": "study",
        "title": "A study",
        "preset": None,
        "protocol": None,
        "eval_args": ["--eps=0.01", "--attacks=natural,pgd20", "--num-examples=16"],
        "columns": ["nat", "pgd"],
        "column_of_attack": {"pgd20": "pgd"},
        "column_titles": {"pgd": "PGD-2"},
        "train_args": [*TINY, "--epochs=1"],
        "rows": [{"label": "AT", "method": "at"}],
        "paper": {},
    }
    path = tmp_path / "study.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "table"
    result = reproduce.main(
        [
            str(path),
            f"--out={out}",
            f"--data-root={data_root}",
            "--no-progress",
            '--eval-arg=--options={"pgd20": {"steps": 2}}',
        ]  # fmt: skip
    )
    assert result["trained"] and result["evaluated"]
    table = json.loads((out / "study.json").read_text())
    assert set(table["rows"]["AT"]) == {"nat", "pgd"}
    assert table["setting"]["evaluation"]["eps"] == 0.01
    header = (out / "study.md").read_text().splitlines()[4]
    assert header.startswith("| method | NAT | PGD-2 | s/epoch | train min | eval min |")
    assert "paper" not in header
