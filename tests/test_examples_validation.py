"""The scripts refuse a user's mistake before any work, in one line with exit status 2, and their
files lose nothing: every numeric flag, --device, --out, --set, reproduce.py specs, an interrupted
log append, and a symlink planted at the atomic writer's temporary path."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import arguments  # noqa: E402
import evaluate  # noqa: E402
import quickstart  # noqa: E402
import reproduce  # noqa: E402
import run_files  # noqa: E402
import table_spec  # noqa: E402
import train  # noqa: E402
from arguments import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Bounds  # noqa: E402
from config import MOMENTUM, TrainConfig  # noqa: E402
from tables import SPECS  # noqa: E402

NOWHERE = "/nonexistent-data-root"
# script main, the arguments that make it otherwise valid, flag, bounds, integer
FLAGS = [
    *[
        (train.main, ["--method=at", f"--data-root={NOWHERE}"], flag, bounds, integer)
        for flag, bounds, integer in [
            ("--epochs", AT_LEAST_ONE, True),
            ("--batch-size", AT_LEAST_ONE, True),
            ("--lr", POSITIVE, False),
            ("--momentum", MOMENTUM, False),
            ("--weight-decay", NON_NEGATIVE, False),
            ("--seed", NON_NEGATIVE, True),
            ("--monitor-size", NON_NEGATIVE, True),
            ("--train-size", AT_LEAST_ONE, True),
            ("--test-size", AT_LEAST_ONE, True),
            ("--max-steps-per-epoch", AT_LEAST_ONE, True),
            ("--stop-after", AT_LEAST_ONE, True),
            ("--max-minutes", NON_NEGATIVE, False),
            ("--eps-ramp-epochs", NON_NEGATIVE, False),
        ]
    ],
    *[
        (evaluate.main, ["/nonexistent/checkpoint.pt"], flag, bounds, integer)
        for flag, bounds, integer in [
            ("--num-examples", AT_LEAST_ONE, True),
            ("--batch-size", AT_LEAST_ONE, True),
            ("--max-minutes", NON_NEGATIVE, False),
            ("--eps", NON_NEGATIVE, False),
        ]
    ],
    *[
        (quickstart.main, ["--no-figure"], flag, bounds, integer)
        for flag, bounds, integer in [
            ("--epochs", AT_LEAST_ONE, True),
            ("--n", Bounds(2), True),
            ("--eps", NON_NEGATIVE, False),
            ("--seed", NON_NEGATIVE, True),
        ]
    ],
    *[
        (reproduce.main, ["mnist-study", "--status"], flag, bounds, integer)
        for flag, bounds, integer in [
            ("--jobs", AT_LEAST_ONE, True),
            ("--threads", AT_LEAST_ONE, True),
            ("--max-minutes", NON_NEGATIVE, False),
        ]
    ],
]


def _bad_values(bounds: Bounds, integer: bool) -> st.SearchStrategy[str]:
    """Text of values the flag must refuse: non-finite, out of range, not an integer, not a number."""
    texts = st.sampled_from(["nan", "inf", "-inf", "1/0", "0/0", "-1e999", "", "abc", "1,2"])
    if integer:  # every integer flag has an integer lower bound and no upper one
        below = st.integers(max_value=int(bounds.low) - (0 if bounds.open_low else 1))
        numbers = below.map(str) | st.sampled_from(["1.5", "1e3", "2/1"])
    else:
        below = st.floats(max_value=bounds.low, exclude_max=not bounds.open_low, allow_nan=False)
        above = st.floats(min_value=bounds.high, exclude_min=not bounds.open_high, allow_nan=False)
        numbers = ((below | above) if bounds.high < math.inf else below).map(repr)
    return texts | numbers


@pytest.mark.parametrize(
    "main, valid, flag, bounds, integer",
    FLAGS,
    ids=[f"{m.__module__} {f}" for m, _, f, *_ in FLAGS],
)
def test_every_numeric_flag_refuses_bad_values_before_any_work(
    main, valid, flag, bounds, integer, capsys
):
    @given(_bad_values(bounds, integer))
    def check(text):
        if flag == "--eps" and text == "abc":
            return  # --eps also takes the word 'protocol'; other words are refused below
        with pytest.raises(SystemExit) as info:
            main([*valid, f"{flag}={text}"])
        err = capsys.readouterr().err
        assert info.value.code == 2
        assert f"argument {flag}: Expected" in err and "Traceback" not in err

    check()


@pytest.mark.parametrize(
    "main, valid, flag, bounds, integer",
    FLAGS,
    ids=[f"{m.__module__} {f}" for m, _, f, *_ in FLAGS],
)
def test_every_numeric_flag_takes_its_range(main, valid, flag, bounds, integer):
    parse = arguments.numeric(bounds, integer)
    low = bounds.low if not bounds.open_low else bounds.low + (1 if integer else 1e-9)
    assert parse(str(int(low)) if integer else repr(low)) == low


def test_a_fraction_is_a_number_and_set_reads_it():
    assert arguments.numeric(POSITIVE)("8/255") == 8 / 255
    assert train.parse_set(["eps=8/255", "random_start=normal"]) == {
        "eps": 8 / 255,
        "random_start": "normal",
    }
    for bad in ("eps=NaN", "eps=Infinity", "eps=1e999", "eps=1/0", "eps=inf"):
        with pytest.raises(ValueError, match="Expected --set eps=VALUE with a finite number"):
            train.parse_set([bad])


def _exit_message(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("device", ["cuda:99", "gpu", "cuda:x"])
def test_device_is_checked_first(device, capsys):
    if device == "cuda:99" and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    err = _exit_message(train.main, ["--method=at", f"--device={device}"], capsys)
    assert "argument --device: Expected" in err


def test_out_under_a_file_or_unwritable_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = _exit_message(train.main, ["--method=at", f"--out={tmp_path / 'file' / 'run'}"], capsys)
    assert "argument --out: Expected" in err and "that is a file" in err
    if Path("/proc/self").is_dir():  # a folder nobody, root included, may create files in
        err = _exit_message(reproduce.main, ["mnist-study", "--out=/proc/run"], capsys)
        assert "argument --out: Expected --out '/proc/run' to be writable" in err


def test_an_evaluation_out_without_its_folder_is_refused_before_the_checkpoint(tmp_path, capsys):
    argv = [str(tmp_path / "missing.pt"), f"--out={tmp_path / 'no' / 'eval.json'}"]
    err = _exit_message(evaluate.main, argv, capsys)
    assert "argument --out: Expected the folder of --out" in err and "mkdir -p" in err


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(tmp_path):
    script = EXAMPLES / "train.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, str(script), "--method=at", "--set=lam=oops", f"--data-root={NOWHERE}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.startswith("train.py: error: Expected") and "Traceback" not in result.stderr
    )

    def ours():
        raise ValueError("Expected a bug to keep its traceback, got this.")

    def not_ours():
        return int("x")

    with pytest.raises(ValueError) as raised:
        not_ours()
    assert not arguments.is_user_error(raised.value)
    with pytest.raises(ValueError) as raised:
        ours()
    assert not arguments.is_user_error(raised.value)  # raised by the tests, not the package
    with pytest.raises(ValueError) as raised:
        TrainConfig(method="at", lr=math.inf)
    assert arguments.is_user_error(raised.value)


def test_train_config_checks_its_numbers():
    for bad in ({"lr": math.nan}, {"momentum": 1.0}, {"seed": -1}, {"test_size": 10_001}):
        with pytest.raises(ValueError, match="Expected"):
            TrainConfig(method="at", **bad)
    with pytest.raises(TypeError, match="Expected lr to be a finite number"):
        TrainConfig(method="at", lr="0.1")


# --- reproduce.py specs ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_built_in_spec_passes_the_validation(name):
    assert table_spec.validate(SPECS[name], name) is SPECS[name]


def _broken(change):
    spec = copy.deepcopy(SPECS["mnist-benchmark"])
    change(spec)
    return spec


SPEC_CASES = {
    "rows[1].label": lambda s: s["rows"][1].update(label=s["rows"][0]["label"]),
    "rows[2]": lambda s: s["rows"][2].pop("label"),
    "rows[0].method": lambda s: s["rows"][0].update(method=3),
    "rows[3].prefix": lambda s: s["rows"][3].update(prefix="nowhere"),
    "rows[4].seeds[1]": lambda s: s["rows"][4].update(seeds=[0, -1]),
    "checkpoints": lambda s: s.update(checkpoints=["last", "last"]),
    "checkpoints[0]": lambda s: s.update(checkpoints=["final"]),
    "claims[0].baseline": lambda s: s["claims"][0].update(baseline="PGD-AT"),
    "prefixes.at.epochs": lambda s: s["prefixes"]["at"].update(epochs="10"),
    "rows[0].method: 'pgd-at'": lambda s: s["rows"][0].update(method="pgd-at"),
    "preset": lambda s: s.update(preset="nope"),
    "(top level)": lambda s: s.update(row=[]),
}


@pytest.mark.parametrize("field", sorted(SPEC_CASES))
def test_a_broken_spec_is_refused_naming_the_file_and_the_field(tmp_path, field):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(_broken(SPEC_CASES[field])))
    with pytest.raises(ValueError) as info:
        reproduce.load_spec(str(path))
    assert str(info.value).startswith(f"Expected a valid table spec in '{path}', got {field}")


def test_a_spec_that_is_not_json_names_the_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text('{"name": "t",')
    with pytest.raises(ValueError, match=f"JSON table spec in '{path}'.*not JSON"):
        reproduce.load_spec(str(path))


# --- files --------------------------------------------------------------------------------------


def _run_with_checkpoint(out: Path) -> list:
    """A run folder holding epochs 0 and 1 (a checkpoint and their log records)."""
    config = TrainConfig(method="at", model="smallcnn", epochs=3, monitor_size=0)
    out.mkdir()
    state = {"model": {}, "optimizer": {}, "burn_in": None, "lineage": []}
    records = [{"epoch": e, "method": "at", "seconds": 1.0} for e in range(2)]
    for record in records:
        run_files.save_epoch(out, config, record, state, None)
    return records


def test_an_append_cut_at_every_byte_still_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    kept = _run_with_checkpoint(out)
    log = out / "log.jsonl"
    whole = log.read_bytes()
    line = (json.dumps({"epoch": 2, "method": "at", "seconds": 1.0}) + "\n").encode()
    config = TrainConfig(method="at", model="smallcnn", epochs=3, monitor_size=0)
    for cut in range(len(line) + 1):
        log.write_bytes(whole + line[:cut])
        start = run_files.start(config, out, resume=True, init_from=None)
        assert start.epoch == 2 and start.log == kept, cut
        note = capsys.readouterr().err
        unfinished = 0 < cut < len(line) - 1
        assert ("dropped the unfinished last line" in note) == unfinished, cut


def test_a_corrupted_line_inside_the_log_names_the_line(tmp_path):
    out = tmp_path / "run"
    _run_with_checkpoint(out)
    log = out / "log.jsonl"
    log.write_text("{oops\n" + log.read_text())
    with pytest.raises(ValueError, match=f"'{log}', got line 1 that is not one"):
        run_files.read_log(log)


def test_the_atomic_writer_does_not_follow_a_symlink_at_its_temporary_path(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    target = tmp_path / "status.json"
    (tmp_path / ".status.json.tmp").symlink_to(victim)
    run_files.write_json_atomic({"epochs_done": 1}, target)
    assert victim.read_text() == "keep me"
    assert not target.is_symlink() and json.loads(target.read_text()) == {"epochs_done": 1}
    assert not (tmp_path / ".status.json.tmp").exists()


def test_plots_tells_a_missing_log_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "plots.py"), str(tmp_path / "no-run"),
         "--out", str(tmp_path / "curves.png")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "plots.py: error: Expected per-epoch records in every log, got none in "
    )
