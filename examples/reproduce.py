"""Reproduces a table of the papers: trains every row, evaluates it, writes the table beside the paper's.

Examples::

    python examples/reproduce.py --list
    python examples/reproduce.py mail-table2 --data-root data --out runs/mail-table2
    # in pieces of at most 9 minutes (e.g. a GPU command limit): run the same command until it says done
    python examples/reproduce.py mail-table2 --data-root data --out runs/mail-table2 --max-minutes 9
    # only some rows, or only one stage
    python examples/reproduce.py mail-table2 --rows AT,GAIRAT --stage train
    # the MNIST benchmark: rows × seeds, two single-threaded units at a time; what is left
    python examples/reproduce.py mnist-benchmark --data-root ../shared/data/mnist --jobs 2
    python examples/reproduce.py mnist-benchmark --data-root ../shared/data/mnist --status

A table spec (built in, see ``tables.py``, or a JSON file of the same shape) names the preset, the
rows (label and method of ``ir.methods``), the evaluation protocol and the checkpoints to evaluate
(``last``, and ``best`` for GAIRAT's tables), and notes printed under the table. Rows may share one
burn-in prefix run (``prefixes``; e.g. AT, GAIRAT and MAIL-AT off AT's 74 epochs) and branch from it
with ``train.py --init-from``; each row's lineage is printed with the table.

A row with ``"seeds": [0, 1, 2]`` is one *unit* per seed (``runs/<label>-seed<k>``), branching from the
prefix of its own seed (``prefixes/<prefix>-seed<k>``); a spec with ``"evaluations"`` (named passes
of evaluate.py arguments) writes ``eval-last-<pass>.json`` per pass, and one with ``"claims"`` is
reported by ``benchmark_report.write_report``. ``--jobs N`` runs N units at a time, each a
single-threaded subprocess that trains its unit, then evaluates it (its output in
``logs/<unit>.log``); a unit waits for its prefix.

Everything lives under ``--out``::

    prefixes/<name>/        shared burn-in runs (train.py folders)
    runs/<label>/           one train.py folder per row, with eval-last.json / eval-best.json
                            (runs/<label>-seed<k>/ with eval-last-<pass>.json for seeded rows)
    logs/<unit>.log         the output of a unit run by --jobs
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
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import arguments
import evaluate
import plots
import run_files
import table_spec
import torch
import train
import training
from tables import SPECS, markdown, our_numbers

STAGES = ("train", "evaluate", "report")


def load_spec(name: str) -> Dict[str, Any]:
    """A built-in spec by name, or a JSON spec file by path, validated as a whole
    (:func:`table_spec.validate`)."""
    if name in SPECS:
        return table_spec.validate(SPECS[name], f"the built-in table {name!r}")
    path = Path(name)
    if path.suffix != ".json":
        raise ValueError(
            f"Expected a table among {', '.join(SPECS)} or a .json spec file, got {name!r}. "
            "Run 'python examples/reproduce.py --list'."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Expected a table spec file at '{path}', got no such file.")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"Expected a JSON table spec in '{path}', got text that is not JSON ({err}). Fix the "
            "file (see docs/examples.md for the shape)."
        ) from None
    return table_spec.validate(spec, f"'{path}'")


_PLAIN = re.compile(table_spec.PLAIN_NAME)


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
    """A row label or prefix name as a folder name (:func:`table_spec.folder_name`)."""
    return plain_name(table_spec.folder_name(str(label)), f"a row label or prefix name ({label!r})")


@dataclass(frozen=True)
class Unit:
    """One piece of work: a shared prefix of one seed (trained only) or a row of one seed (trained,
    then evaluated). ``seed`` is None for the rows and prefixes of a spec without seeds."""

    kind: str  # "prefix" or "row"
    label: str  # the row's label or the prefix's name
    seed: Optional[int]
    folder: Path
    needs: Optional[Unit] = None  # the prefix a row branches from

    @property
    def name(self) -> str:
        """The unit's name (its folder's): ``AT-seed0``, or the plain label without seeds."""
        return self.folder.name

    @property
    def where(self) -> str:
        return f"{self.folder.parent.name}/{self.folder.name}"


class Reproduction:
    """One table under one output folder; each method does its stage for the selected rows."""

    def __init__(
        self,
        spec: Dict[str, Any],
        out: Path,
        *,
        data_root: str,
        rows: Optional[Sequence[str]] = None,
        seeds: Optional[Sequence[int]] = None,
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
        # The rows the report tables: those asked for, or all (paper-only rows included).
        self.tabled = [r for r in spec["rows"] if not rows or r["label"] in rows]
        self.rows = [r for r in self.tabled if r["method"]]
        self.seeds = None if seeds is None else list(seeds)
        self.train_args = list(train_args)
        self.eval_args = list(eval_args)
        self.deadline = None if max_minutes is None else time.perf_counter() + 60 * max_minutes
        self.progress = progress

    # --- units, paths and commands ------------------------------------------------------------

    def row_seeds(self, row: Dict[str, Any]) -> List[Optional[int]]:
        """The seeds of a row that ``--seeds`` selects; ``[None]`` for a row without seeds."""
        if "seeds" not in row:
            return [None]
        return [k for k in row["seeds"] if self.seeds is None or k in self.seeds]

    def units(self) -> List[Unit]:
        """The selected rows' units, each prefix before the rows that branch from it."""
        prefixes: Dict[Any, Unit] = {}
        rows = []
        for row in self.rows:
            for seed in self.row_seeds(row):
                needs = None
                if row.get("prefix"):
                    key = (row["prefix"], seed)
                    needs = prefixes.setdefault(
                        key, Unit("prefix", row["prefix"], seed, self.prefix_dir(*key))
                    )
                rows.append(Unit("row", row["label"], seed, self.run_dir(row, seed), needs))
        return [*prefixes.values(), *rows]

    def _row(self, unit: Unit) -> Dict[str, Any]:
        return next(r for r in self.spec["rows"] if r["label"] == unit.label)

    def run_dir(self, row: Dict[str, Any], seed: Optional[int] = None) -> Path:
        return self.out / "runs" / _seeded(_slug(row["label"]), seed)

    def prefix_dir(self, name: str, seed: Optional[int] = None) -> Path:
        return self.out / "prefixes" / _seeded(_slug(name), seed)

    def _minutes_left(self) -> Optional[float]:
        return None if self.deadline is None else (self.deadline - time.perf_counter()) / 60

    def _common_train_args(self, seed: Optional[int] = None) -> List[str]:
        preset = ["--preset", self.spec["preset"]] if self.spec.get("preset") else []
        return [
            *preset,
            *self.spec.get("train_args", []),
            *self.train_args,
            *([] if seed is None else ["--seed", str(seed)]),
            "--data-root",
            self.data_root,
        ]

    def prefix_command(self, name: str, seed: Optional[int] = None) -> List[str]:
        prefix = self.spec["prefixes"][name]
        return [
            *self._common_train_args(seed),
            "--method",
            prefix["method"],
            *prefix.get("args", []),
            "--stop-after",
            str(prefix["epochs"]),
            "--out",
            str(self.prefix_dir(name, seed)),
        ]

    def row_command(self, row: Dict[str, Any], seed: Optional[int] = None) -> List[str]:
        branch = []
        if row.get("prefix"):
            branch = ["--init-from", str(self.prefix_dir(row["prefix"], seed) / "checkpoint.pt")]
        return [
            *self._common_train_args(seed),
            "--method",
            row["method"],
            *row.get("args", []),
            "--out",
            str(self.run_dir(row, seed)),
            *branch,
        ]

    def train_command(self, unit: Unit) -> List[str]:
        if unit.kind == "prefix":
            return self.prefix_command(unit.label, unit.seed)
        return self.row_command(self._row(unit), unit.seed)

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

    def evaluations(self, unit: Unit) -> Dict[str, List[str]]:
        """A row unit's evaluation commands by the name of what they write: the spec's passes
        (``eval-last-<pass>.json`` of the last checkpoint) or its checkpoint kinds (``eval-<kind>.json``)."""
        if unit.kind != "row":
            return {}
        if "evaluations" not in self.spec:
            row = self._row(unit)
            return {k: self.eval_command(row, k) for k in self.spec.get("checkpoints", ["last"])}
        return {
            p["name"]: [
                str(unit.folder / "checkpoint.pt"),
                *p["args"],
                *self.eval_args,
                "--data-root",
                self.data_root,
                "--out",
                str(self.eval_file(unit, p["name"])),
            ]
            for p in self.spec["evaluations"]
        }

    def eval_file(self, unit: Unit, name: str) -> Path:
        kind = f"last-{name}" if "evaluations" in self.spec else name
        return unit.folder / f"eval-{kind}.json"

    # --- where a unit stands ------------------------------------------------------------------

    def epochs_done(self, unit: Unit) -> int:
        return int(run_files.read_status(unit.folder).get("epochs_done", 0))

    def trained(self, unit: Unit) -> bool:
        if unit.kind == "prefix":
            return self.epochs_done(unit) >= self.spec["prefixes"][unit.label]["epochs"]
        return bool(run_files.read_status(unit.folder).get("complete"))

    def passes_done(self, unit: Unit) -> List[str]:
        return [
            name
            for name in self.evaluations(unit)
            if run_files.read_json(self.eval_file(unit, name)).get("complete")
        ]

    def finished(self, unit: Unit, stage: str = "all") -> bool:
        """Whether ``stage`` has nothing left to do for the unit."""
        trained = self.trained(unit)
        if stage == "train" or unit.kind == "prefix":
            return trained
        return trained and len(self.passes_done(unit)) == len(self.evaluations(unit))

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

    def train_unit(self, unit: Unit) -> bool:
        """Trains (or continues) one unit; True when it is trained."""
        if not self.trained(unit):
            self._train(self.train_command(unit), unit.folder)
        return self.trained(unit)

    def train(self) -> bool:
        """Trains the prefixes, then the rows; True when every selected row is trained."""
        return all(self.train_unit(u) for u in self.units())

    def evaluate_unit(self, unit: Unit) -> bool:
        """Runs the trained unit's missing evaluations; True when every one is complete."""
        if not self.trained(unit):
            return False
        for name, argv in self.evaluations(unit).items():
            if run_files.read_json(self.eval_file(unit, name)).get("complete"):
                continue
            left = self._minutes_left()
            if left is not None and left <= 0:
                return False
            budget = [] if left is None else ["--max-minutes", f"{left:.3f}"]
            progress = [] if self.progress else ["--no-progress"]
            print("$ python examples/evaluate.py " + shlex.join(argv), flush=True)
            evaluate.main([*argv, *budget, *progress])
        return self.finished(unit)

    def evaluate(self) -> bool:
        """Evaluates every trained row; True when every selected row is evaluated."""
        results = [self.evaluate_unit(u) for u in self.units() if u.kind == "row"]
        return all(results)

    def run_jobs(self, jobs: int, stage: str, unit_argv: List[str]) -> bool:
        """Runs the unfinished units ``jobs`` at a time, each as ``reproduce.py ... --unit NAME`` in
        a single-threaded subprocess (output in ``logs/<unit>.log``); a unit starts once its prefix
        is trained, and none starts once less time is left than one epoch takes (the mean epoch
        measured so far), as it would stop at once. True when every unit is finished."""
        units = [u for u in self.units() if stage == "train" or u.kind == "row" or stage == "all"]
        pending = [u for u in units if not self.finished(u, stage)]
        running: Dict[Unit, subprocess.Popen[bytes]] = {}
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        epoch_seconds = _measured_epoch_seconds(self.out) or 0.0  # read again as units end
        while pending or running:
            for unit, process in list(running.items()):
                if process.poll() is not None:
                    del running[unit]
                    state = "finished" if self.finished(unit, stage) else "stopped"
                    code = "" if process.returncode == 0 else f", exit code {process.returncode}"
                    print(f"{unit.where}: {state}{code} (log: {self._log(unit)})", flush=True)
                    epoch_seconds = _measured_epoch_seconds(self.out) or 0.0
            left = self._minutes_left()
            if left is not None and 60 * left < epoch_seconds + 1:
                pending = []  # start nothing new; the running units stop at their own budget
            startable = [u for u in pending if u.needs is None or self.trained(u.needs)]
            for unit in startable[: max(0, jobs - len(running))]:
                pending.remove(unit)
                argv = [*unit_argv, "--unit", unit.name, "--stage", stage, "--threads", "1"]
                if left is not None:
                    argv += ["--max-minutes", f"{left:.3f}"]
                print(f"{unit.where}: started", flush=True)
                with open(self._log(unit), "ab") as log:
                    running[unit] = subprocess.Popen(
                        [sys.executable, str(Path(__file__).resolve()), *argv],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
            waiting_on = {u.needs for u in pending if u.needs is not None}
            if not running and pending and not startable:
                missing = ", ".join(sorted(u.where for u in waiting_on if u is not None))
                print(f"not started (their prefix did not finish: {missing})", flush=True)
                break
            time.sleep(0.2)
        return all(self.finished(u, stage) for u in units)

    def _log(self, unit: Unit) -> Path:
        return self.out / "logs" / f"{unit.folder.parent.name}-{unit.name}.log"

    def run_unit(self, name: str, stage: str) -> bool:
        """Trains, then evaluates, the unit called ``name`` in this process (``--unit``)."""
        unit = next((u for u in self.units() if u.name == name), None)
        if unit is None:
            raise ValueError(
                f"Expected --unit among {', '.join(u.name for u in self.units())}, got {name!r}."
            )
        if stage in ("train", "all"):
            self.train_unit(unit)
        if stage in ("evaluate", "all"):
            self.evaluate_unit(unit)
        return self.finished(unit, stage)

    # --- status and publishing ----------------------------------------------------------------

    def status(self, jobs: int = 1) -> str:
        """Every unit's state (done, partial, waiting, not started) and the compute left, estimated
        from the seconds per epoch and per evaluation pass measured so far under ``--out``."""
        units = self.units()
        epoch_seconds = _measured_epoch_seconds(self.out)
        pass_seconds: Dict[str, List[float]] = {}
        lines = [f"{'unit':<28} {'state':<12} {'training':<16} evaluation"]
        left_epochs, left_passes = 0, []
        for unit in units:
            total = self._epochs_total(unit)
            done = self.epochs_done(unit)
            passes = self.evaluations(unit)
            passed = self.passes_done(unit)
            for name in passed:
                seconds = run_files.read_json(self.eval_file(unit, name)).get("seconds", {})
                pass_seconds.setdefault(name, []).append(sum(seconds.values()))
            first = unit.needs and self.spec["prefixes"][unit.needs.label]["epochs"]
            left_epochs += total - max(done, first or 0)
            left_passes += [n for n in passes if n not in passed]
            if self.finished(unit):
                state = "done"
            elif unit.needs is not None and not self.trained(unit.needs):
                state = "waiting"
            elif done or passed:
                state = "partial"
            else:
                state = "not started"
            evaluation = f"{len(passed)}/{len(passes)} passes" if passes else ""
            lines.append(
                f"{unit.where:<28} {state:<12} {f'{done}/{total} epochs':<16} {evaluation}"
            )
        lines.append(self._estimate(left_epochs, left_passes, epoch_seconds, pass_seconds, jobs))
        return "\n".join(lines)

    def _epochs_total(self, unit: Unit) -> int:
        if unit.kind == "prefix":
            return int(self.spec["prefixes"][unit.label]["epochs"])
        status = run_files.read_status(unit.folder)
        if status:
            return int(status["epochs"])
        args = train.build_parser().parse_args(self.train_command(unit))
        return train.resolve(args, None).epochs

    @staticmethod
    def _estimate(
        epochs: int,
        passes: List[str],
        epoch_seconds: Optional[float],
        pass_seconds: Dict[str, List[float]],
        jobs: int,
    ) -> str:
        if not epochs and not passes:
            return "nothing left to compute"
        parts, seconds = [], 0.0
        if epochs:
            if epoch_seconds is None:
                parts.append(f"{epochs} epochs")
            else:
                seconds += epochs * epoch_seconds
                parts.append(f"{epochs} epochs × {epoch_seconds:.0f} s")
        untimed = [p for p in passes if p not in pass_seconds]
        for name in sorted(set(passes) - set(untimed)):
            count, mean = passes.count(name), sum(pass_seconds[name]) / len(pass_seconds[name])
            seconds += count * mean
            parts.append(f"{count} '{name}' evaluations × {mean:.0f} s")
        if untimed:
            parts.append(f"{len(untimed)} evaluations")
        if not seconds:
            return f"compute left: not timed yet ({'; '.join(parts)})"
        return (
            f"compute left: about {seconds / 3600:.1f} h ({'; '.join(parts)}), about "
            f"{seconds / 3600 / jobs:.1f} h with --jobs {jobs}"
        )

    def publish(self, folder: Path, report: Sequence[Path] = ()) -> List[Path]:
        """Copies every trained row's final weights to ``folder/checkpoints/<unit>.pt`` (the model
        and its settings, loadable by ``run_files.load_checkpoint``; no optimiser state), its
        evaluation files to ``folder/records/<unit>-<pass>.json`` and the ``report``'s files: the
        JSON beside the folder as ``<folder>.json`` (as the page beside it is ``<folder>.md``), the
        tables and figures into it. Returns the paths written."""
        written = []
        for path in report:
            json_file = path.suffix == ".json"
            target = folder.parent / f"{folder.name}.json" if json_file else folder / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            written.append(target)
        for unit in self.units():
            if unit.kind != "row" or not self.trained(unit):
                continue
            state = run_files.load_checkpoint(unit.folder / "checkpoint.pt")
            keep = ("format", "config", "epochs_done", "model", "lineage")
            target = folder / "checkpoints" / f"{unit.name}.pt"
            target.parent.mkdir(parents=True, exist_ok=True)
            run_files.save_atomic({k: state[k] for k in keep}, target)
            written.append(target)
            for name in self.passes_done(unit):
                record = folder / "records" / f"{unit.name}-{name}.json"
                record.parent.mkdir(parents=True, exist_ok=True)
                record.write_bytes(self.eval_file(unit, name).read_bytes())
                written.append(record)
        return written

    # --- report -------------------------------------------------------------------------------

    def benchmark_report(self) -> List[Path]:
        """The report of a spec with claims: ``benchmark_report.write_report`` over every row and
        seed of the spec."""
        import benchmark_report  # only seeded benchmarks need it (and its plotting)

        everything = Reproduction(self.spec, self.out, data_root=self.data_root)
        runs = [
            {"label": u.label, "seed": u.seed, "folder": u.folder}
            for u in everything.units()
            if u.kind == "row"
        ]
        return list(benchmark_report.write_report(self.spec, self.out, runs))

    def report(self, command: str) -> Path:
        """Writes the markdown table and the JSON files from what exists; returns the markdown."""
        # Only the selected rows (--rows): a table of rows nobody asked for would say "not trained".
        rows = self.rows
        spec, name = {**self.spec, "rows": self.tabled}, self.spec["name"]
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
            "best_epoch": run_files.epochs_done(evals["best"]) - 1 if evals.get("best") else None,
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


def _seeded(name: str, seed: Optional[int]) -> str:
    return name if seed is None else f"{name}-seed{seed}"


def _measured_epoch_seconds(out: Path) -> Optional[float]:
    """Mean seconds of one epoch (training and monitor) over every run logged under ``out``."""
    seconds = [
        r["seconds"] + r.get("seconds_monitor", 0.0)
        for log in sorted(out.glob("*/*/log.jsonl"))
        for r in run_files.read_log(log)
        if "seconds" in r
    ]
    return sum(seconds) / len(seconds) if seconds else None


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
    parser.add_argument(
        "--out", type=arguments.output_folder("--out"), help="output folder (default: runs/<table>)"
    )
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--rows", help="comma-separated row labels (default: all)")
    parser.add_argument("--stage", choices=STAGES + ("all",), default="all")
    parser.add_argument(
        "--max-minutes",
        type=arguments.numeric(arguments.NON_NEGATIVE, example="9"),
        help="stop starting work after this many minutes",
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
    parser.add_argument(
        "--seeds",
        type=_seeds,
        help="comma-separated seeds of seeded rows (default: each row's own)",
    )
    parser.add_argument(
        "--jobs",
        type=arguments.numeric(arguments.AT_LEAST_ONE, integer=True),
        default=1,
        help="units (row × seed) at a time, each a single-threaded subprocess (default 1: in this "
        "process)",
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="print every unit's state and the compute left, and exit",
    )
    parser.add_argument(
        "--publish",
        type=arguments.output_folder("--publish"),
        metavar="DIR",
        help="copy the final weights to DIR/checkpoints/, the evaluations to DIR/records/ and a "
        "benchmark's report: its JSON to DIR.json, its tables and figures into DIR",
    )
    parser.add_argument("--unit", help=argparse.SUPPRESS)  # one unit, in this process (--jobs)
    parser.add_argument(
        "--threads",
        type=arguments.numeric(arguments.AT_LEAST_ONE, integer=True),
        help="torch threads of this process (default: torch's own)",
    )
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
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    spec = load_spec(args.table)
    out = arguments.check_writable_folder(args.out or Path("runs") / spec["name"], "--out")
    reproduction = Reproduction(
        spec,
        out,
        data_root=args.data_root,
        rows=args.rows.split(",") if args.rows else None,
        seeds=args.seeds,
        train_args=args.train_arg,
        eval_args=args.eval_arg,
        max_minutes=args.max_minutes,
        progress=not args.no_progress,
    )
    if args.status:
        text = reproduction.status(args.jobs)
        print(text)
        return {"status": text}
    if args.unit:
        return {"finished": reproduction.run_unit(args.unit, args.stage)}
    result: Dict[str, Any] = {}
    if args.jobs > 1 and args.stage != "report":
        unit_argv = [
            args.table,
            f"--out={out}",
            f"--data-root={args.data_root}",
            "--no-progress",
            *(f"--train-arg={a}" for a in args.train_arg),
            *(f"--eval-arg={a}" for a in args.eval_arg),
        ]
        reproduction.run_jobs(args.jobs, args.stage, unit_argv)
        units = reproduction.units()
        if args.stage in ("train", "all"):
            result["trained"] = all(reproduction.trained(u) for u in units)
        if args.stage in ("evaluate", "all"):
            result["evaluated"] = all(reproduction.finished(u) for u in units)
    else:
        if args.stage in ("train", "all"):
            result["trained"] = reproduction.train()
        if args.stage in ("evaluate", "all") and result.get("trained", True):
            result["evaluated"] = reproduction.evaluate()
    if args.stage in ("report", "all"):
        if "claims" in spec:
            result["report"] = reproduction.benchmark_report()
            print("report: " + ", ".join(map(str, result["report"])))
        else:
            result["report"] = reproduction.report(
                "python examples/reproduce.py " + shlex.join(argv)
            )
            print(f"table: {result['report']}")
    if args.publish is not None:
        report = result.get("report", []) if "claims" in spec else []
        result["published"] = reproduction.publish(args.publish, report)
        print(f"published {len(result['published'])} files under {args.publish}")
    finished = result.get("trained", True) and result.get("evaluated", True)
    print("done" if finished else "not finished: run the same command again to continue")
    return result


def _seeds(text: str) -> List[int]:
    seed = arguments.numeric(arguments.NON_NEGATIVE, integer=True)
    try:
        return [int(seed(k)) for k in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"Expected --seeds as comma-separated integers >= 0 (e.g. 0,1), got {text!r}"
        ) from None


if __name__ == "__main__":
    arguments.run(main, "reproduce.py")
