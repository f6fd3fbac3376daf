"""Reproduces a table of the papers: trains every row, evaluates it, writes the table beside the paper's.

Examples::

    python examples/reproduce.py --list
    python examples/reproduce.py mail-table2 --data-root data --out runs/mail-table2
    # in pieces of at most 9 minutes (e.g. a GPU command limit): run the same command until it says done
    python examples/reproduce.py mail-table2 --data-root data --out runs/mail-table2 --max-minutes 9
    # only some rows, or only one stage
    python examples/reproduce.py mail-table2 --rows AT,GAIRAT --stage train

A table spec (built in, see ``tables.py``, or a JSON file of the same shape) names the preset, the
rows (label and method of ``ir.methods``), the evaluation protocol and the checkpoints to evaluate
(``last``, and ``best`` for GAIRAT's tables), and notes printed under the table. Rows may share one
burn-in prefix run (``prefixes``; e.g. AT, GAIRAT and MAIL-AT off AT's 74 epochs) and branch from it
with ``train.py --init-from``; each row's lineage is printed with the table.

Everything lives under ``--out``::

    prefixes/<name>/        shared burn-in runs (train.py folders)
    runs/<label>/           one train.py folder per row, with eval-last.json / eval-best.json
    <table>.md              the table: paper numbers beside ours, protocol, ε, seed, device,
                            seconds per epoch, the exact commands
    <table>.json            our numbers, percent, and the setting:
                            {"rows": {"AT": {"nat": ..., "pgd100": ..., ...}, ...}, "setting": {...}}
    <table>-details.json    the same with the paper's numbers, settings, timings and commands
    curves.png              learning curves of the rows (when matplotlib is installed)

Every step skips what is already done, and training and evaluation continue where they stopped, so
the same command resumes a table across calls.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import evaluate
import plots
import run_files
import train
import training
from tables import SPECS, markdown, our_numbers

STAGES = ("train", "evaluate", "report")


def load_spec(name: str) -> Dict[str, Any]:
    """A built-in spec by name, or a JSON spec file by path."""
    if name in SPECS:
        return SPECS[name]
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        spec = json.loads(path.read_text())
        missing = sorted({"name", "rows", "protocol", "columns"} - set(spec))
        if missing:
            raise ValueError(
                f"Expected the keys {missing} in the table spec '{path}', got {sorted(spec)}."
            )
        # The name and the labels become file and folder names under --out.
        plain_name(spec["name"], 'the table\'s "name"')
        for row in spec["rows"]:
            _slug(row["label"])
        for prefix in spec.get("prefixes", {}):
            _slug(prefix)
        kinds = spec.get("checkpoints", ["last"])
        unprefixed = [
            c for c in spec["columns"] if len(kinds) > 1 and not c.startswith(("best_", "last_"))
        ]
        if unprefixed:
            raise ValueError(
                f"Expected columns named best_<column> or last_<column> with checkpoints {kinds}, "
                f"got {unprefixed} in '{path}'."
            )
        return spec
    raise ValueError(
        f"Expected a table among {', '.join(SPECS)} or a .json spec file, got {name!r}. "
        "Run 'python examples/reproduce.py --list'."
    )


_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def plain_name(name: object, what: str) -> str:
    """``name`` if it is a plain file name (letters, digits, ``.``, ``_``, ``-``; not starting with
    ``.`` or ``-``), which cannot point outside the folder it is joined to; else an error."""
    if not isinstance(name, str):
        raise TypeError(f"Expected {what} to be a plain file name (a string), got {name!r}.")
    if not _PLAIN.fullmatch(name):
        raise ValueError(
            f"Expected {what} to be a plain file name (letters, digits, '.', '_', '-', not starting "
            f"with '.' or '-'), got {name!r}. Use e.g. 'my-table'; it names files under --out."
        )
    return name


def _slug(label: str) -> str:
    """A row label or prefix name as a folder name: other characters become ``_``."""
    slug = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in str(label))
    return plain_name(slug, f"a row label or prefix name ({label!r})")


class Reproduction:
    """One table under one output folder; each method does its stage for the selected rows."""

    def __init__(
        self,
        spec: Dict[str, Any],
        out: Path,
        *,
        data_root: str,
        rows: Optional[Sequence[str]] = None,
        train_args: Sequence[str] = (),
        eval_args: Sequence[str] = (),
        max_minutes: Optional[float] = None,
        progress: bool = True,
    ) -> None:
        self.spec = spec
        self.out = out
        self.data_root = data_root
        labels = [r["label"] for r in spec["rows"]]
        unknown = sorted(set(rows or ()) - set(labels))
        if unknown:
            raise ValueError(
                f"Expected --rows among {', '.join(labels)}, got {', '.join(unknown)}."
            )
        self.rows = [r for r in spec["rows"] if r["method"] and (not rows or r["label"] in rows)]
        self.train_args = list(train_args)
        self.eval_args = list(eval_args)
        self.deadline = None if max_minutes is None else time.perf_counter() + 60 * max_minutes
        self.progress = progress

    # --- paths and commands -------------------------------------------------------------------

    def run_dir(self, row: Dict[str, Any]) -> Path:
        return self.out / "runs" / _slug(row["label"])

    def prefix_dir(self, name: str) -> Path:
        return self.out / "prefixes" / _slug(name)

    def _minutes_left(self) -> Optional[float]:
        return None if self.deadline is None else (self.deadline - time.perf_counter()) / 60

    def _common_train_args(self) -> List[str]:
        preset = ["--preset", self.spec["preset"]] if self.spec.get("preset") else []
        return [
            *preset,
            *self.spec.get("train_args", []),
            *self.train_args,
            "--data-root",
            self.data_root,
        ]

    def prefix_command(self, name: str) -> List[str]:
        prefix = self.spec["prefixes"][name]
        return [
            *self._common_train_args(),
            "--method",
            prefix["method"],
            *prefix.get("args", []),
            "--stop-after",
            str(prefix["epochs"]),
            "--out",
            str(self.prefix_dir(name)),
        ]

    def row_command(self, row: Dict[str, Any]) -> List[str]:
        branch = []
        if row.get("prefix"):
            branch = ["--init-from", str(self.prefix_dir(row["prefix"]) / "checkpoint.pt")]
        return [
            *self._common_train_args(),
            "--method",
            row["method"],
            *row.get("args", []),
            "--out",
            str(self.run_dir(row)),
            *branch,
        ]

    def eval_command(self, row: Dict[str, Any], kind: str) -> List[str]:
        checkpoint = "best.pt" if kind == "best" else "checkpoint.pt"
        return [
            str(self.run_dir(row) / checkpoint),
            # the paper's protocol and evaluation radius (e.g. MAIL's 0.031), as the table compares;
            # a spec without a protocol gives its attacks and ε in eval_args
            *(
                ["--protocol", self.spec["protocol"], "--eps", "protocol"]
                if self.spec["protocol"]
                else []
            ),
            *self.spec.get("eval_args", []),
            *self.eval_args,
            "--data-root",
            self.data_root,
            "--out",
            str(self.run_dir(row) / f"eval-{kind}.json"),
        ]

    # --- stages -------------------------------------------------------------------------------

    def _train(self, argv: List[str], folder: Path) -> Optional[training.RunResult]:
        """Runs one train.py command, or continues it (``--resume``) if its folder holds a
        checkpoint; None when no time is left."""
        left = self._minutes_left()
        if left is not None and left <= 0:
            return None
        if (folder / "checkpoint.pt").is_file():
            if "--init-from" in argv:
                i = argv.index("--init-from")
                argv = argv[:i] + argv[i + 2 :]
            argv = [*argv, "--resume"]
        budget = [] if left is None else ["--max-minutes", f"{left:.3f}"]
        progress = [] if self.progress else ["--no-progress"]
        print("$ python examples/train.py " + shlex.join(argv), flush=True)
        return train.main([*argv, *budget, *progress])

    def train(self) -> bool:
        """Trains the prefixes, then the rows; True when every selected row is trained."""
        for name in dict.fromkeys(r["prefix"] for r in self.rows if r.get("prefix")):
            epochs = self.spec["prefixes"][name]["epochs"]
            if run_files.read_status(self.prefix_dir(name)).get("epochs_done", 0) < epochs:
                result = self._train(self.prefix_command(name), self.prefix_dir(name))
                if result is None or result.epochs_done < epochs:
                    return False
        for row in self.rows:
            if not run_files.read_status(self.run_dir(row)).get("complete"):
                result = self._train(self.row_command(row), self.run_dir(row))
                if result is None or not result.complete:
                    return False
        return True

    def evaluate(self) -> bool:
        """Evaluates every trained row; True when every selected row is evaluated."""
        complete = True
        for row in self.rows:
            if not run_files.read_status(self.run_dir(row)).get("complete"):
                complete = False
                continue
            for kind in self.spec.get("checkpoints", ["last"]):
                path = self.run_dir(row) / f"eval-{kind}.json"
                if run_files.read_json(path).get("complete"):
                    continue
                left = self._minutes_left()
                if left is not None and left <= 0:
                    return False
                budget = [] if left is None else ["--max-minutes", f"{left:.3f}"]
                progress = [] if self.progress else ["--no-progress"]
                argv = self.eval_command(row, kind)
                print("$ python examples/evaluate.py " + shlex.join(argv), flush=True)
                complete &= bool(evaluate.main([*argv, *budget, *progress])["complete"])
        return complete

    def report(self, command: str) -> Path:
        """Writes the markdown table and the JSON files from what exists; returns the markdown."""
        spec, name = self.spec, self.spec["name"]
        rows = [r for r in spec["rows"] if r["method"]]
        evals = {r["label"]: self._evaluations(r) for r in rows}
        ours = {label: values for label, e in evals.items() if (values := our_numbers(spec, e))}
        details = {r["label"]: self._details(r, evals[r["label"]]) for r in rows}
        settings = next(
            (r["settings"] for e in evals.values() for r in e.values() if r.get("settings")), None
        )
        setting = {
            "protocol": spec["protocol"],
            "evaluation": settings,
            "preset": spec.get("preset"),
            "train_args": [*spec.get("train_args", []), *self.train_args],
            "seeds": sorted({d["seed"] for d in details.values() if d["seed"] is not None}),
            "devices": sorted({d["device"] for d in details.values() if d["device"]}),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        md = self.out / f"{name}.md"
        md.write_text(markdown(spec, ours, details, setting, command))
        run_files.write_json_atomic({"rows": ours, "setting": setting}, self.out / f"{name}.json")
        run_files.write_json_atomic(
            {
                "table": name,
                "title": spec.get("title"),
                "protocol": spec["protocol"],
                "settings": settings,
                "paper": spec.get("paper", {}),
                "ours": ours,
                "rows": details,
                "command": command,
            },
            self.out / f"{name}-details.json",
        )
        logs = {r["label"]: run_files.read_log(self.run_dir(r) / "log.jsonl") for r in rows}
        logs = {k: v for k, v in logs.items() if v}
        if logs:
            plots.plot_curves(logs, self.out / "curves.png")
        return md

    def _evaluations(self, row: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
        """The row's evaluation records by checkpoint kind (empty where not evaluated yet)."""
        return {
            kind: run_files.read_json(self.run_dir(row) / f"eval-{kind}.json")
            for kind in self.spec.get("checkpoints", ["last"])
        }

    def _details(self, row: Dict[str, Any], evals: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
        """What the report says about a row beside its numbers: status, timings, lineage, commands."""
        log = run_files.read_log(self.run_dir(row) / "log.jsonl")
        config = run_files.read_json(self.run_dir(row) / "config.json")
        return {
            "method": row["method"],
            "status": _describe_status(self.run_dir(row), evals),
            "seconds_per_epoch": run_files.mean_epoch_seconds(log),
            "train_minutes": sum(r["seconds"] + r.get("seconds_monitor", 0.0) for r in log) / 60,
            "eval_minutes": sum(sum(r.get("seconds", {}).values()) for r in evals.values()) / 60,
            "epochs_logged": len(log),
            "lineage": config.get("lineage"),
            "device": config.get("device"),
            "seed": (config.get("config") or {}).get("seed"),
            "commands": self._commands(row),
            "best_epoch": evals.get("best", {}).get("epoch"),
        }

    def _commands(self, row: Dict[str, Any]) -> List[str]:
        commands = []
        if row.get("prefix"):
            commands.append(
                "python examples/train.py " + shlex.join(self.prefix_command(row["prefix"]))
            )
        commands.append("python examples/train.py " + shlex.join(self.row_command(row)))
        commands.extend(
            "python examples/evaluate.py " + shlex.join(self.eval_command(row, kind))
            for kind in self.spec.get("checkpoints", ["last"])
        )
        return commands


def _describe_status(folder: Path, evals: Dict[str, Dict[str, Any]]) -> str:
    status = run_files.read_status(folder)
    if not status:
        return "not trained"
    if not status.get("complete"):
        return f"trained {status['epochs_done']}/{status['epochs']} epochs"
    missing = [k for k, r in evals.items() if not r.get("complete")]
    return f"evaluation of {', '.join(missing)} incomplete" if missing else "done"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", nargs="?", help=f"one of {', '.join(SPECS)}, or a .json spec")
    parser.add_argument("--list", action="store_true", help="list the built-in tables and exit")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<table>)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--rows", help="comma-separated row labels (default: all)")
    parser.add_argument("--stage", choices=STAGES + ("all",), default="all")
    parser.add_argument(
        "--max-minutes", type=float, help="stop starting work after this many minutes"
    )
    parser.add_argument(
        "--train-arg",
        action="append",
        default=[],
        help="extra train.py argument for every run (repeatable), e.g. --train-arg=--compile",
    )
    parser.add_argument(
        "--eval-arg",
        action="append",
        default=[],
        help="extra evaluate.py argument (repeatable), e.g. --eval-arg=--num-examples=1000",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Runs ``reproduce.py`` with ``argv``; returns ``{"trained", "evaluated", "report"}``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.list:
        for spec in SPECS.values():
            print(
                f"{spec['name']}: {spec['title']} (preset {spec['preset']}, protocol {spec['protocol']})"
            )
        return {}
    if args.table is None:
        raise ValueError(f"Expected a table among {', '.join(SPECS)} or a .json spec, got none.")
    spec = load_spec(args.table)
    reproduction = Reproduction(
        spec,
        args.out or Path("runs") / spec["name"],
        data_root=args.data_root,
        rows=args.rows.split(",") if args.rows else None,
        train_args=args.train_arg,
        eval_args=args.eval_arg,
        max_minutes=args.max_minutes,
        progress=not args.no_progress,
    )
    result: Dict[str, Any] = {}
    if args.stage in ("train", "all"):
        result["trained"] = reproduction.train()
    if args.stage in ("evaluate", "all") and result.get("trained", True):
        result["evaluated"] = reproduction.evaluate()
    if args.stage in ("report", "all"):
        result["report"] = reproduction.report("python examples/reproduce.py " + shlex.join(argv))
        print(f"table: {result['report']}")
    finished = result.get("trained", True) and result.get("evaluated", True)
    print("done" if finished else "not finished: run the same command again to continue")
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, ImportError) as err:
        sys.exit(f"reproduce.py: error: {err}")
