"""A ``reproduce.py`` table spec, checked as a whole before anything runs: its JSON schema
(:data:`SCHEMA`, checked with ``jsonschema``), then what a schema cannot say (labels unique, every
prefix, method, preset, protocol and claim row defined).

Every message names the spec (its file, or the built-in table) and the field, e.g.
``rows[2].label``. The built-in specs of ``tables.py`` pass the same check.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List

import jsonschema
from presets import PRESETS

import instance_reweight as ir
from instance_reweight import evaluation

PLAIN_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._-]*$"

_STRINGS = {"type": "array", "items": {"type": "string"}}
_NAMES = {"type": "object", "additionalProperties": {"type": "string"}}

SCHEMA: Dict[str, Any] = {
    "type": "object",
    "required": ["name", "rows", "protocol", "columns"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": PLAIN_NAME},
        "title": {"type": "string"},
        "source": {"type": ["string", "null"]},
        "preset": {"type": ["string", "null"]},
        "protocol": {"type": ["string", "null"]},
        "checkpoints": {
            "type": "array",
            "items": {"enum": ["last", "best"]},
            "minItems": 1,
            "uniqueItems": True,
        },
        "columns": {**_STRINGS, "minItems": 1, "uniqueItems": True},
        "column_of_attack": _NAMES,
        "column_titles": _NAMES,
        "notes": _STRINGS,
        "train_args": _STRINGS,
        "eval_args": _STRINGS,
        "prefixes": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["method", "epochs"],
                "additionalProperties": False,
                "properties": {
                    "method": {"type": "string"},
                    "epochs": {"type": "integer", "minimum": 1},
                    "args": _STRINGS,
                },
            },
        },
        "rows": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["label", "method"],
                "additionalProperties": False,
                "properties": {
                    "label": {"type": "string", "minLength": 1},
                    "method": {"type": ["string", "null"]},
                    "prefix": {"type": "string"},
                    "args": _STRINGS,
                    "seeds": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0},
                        "minItems": 1,
                        "uniqueItems": True,
                    },
                },
            },
        },
        "evaluations": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "args"],
                "additionalProperties": False,
                "properties": {"name": {"type": "string", "pattern": PLAIN_NAME}, "args": _STRINGS},
            },
        },
        "claims": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "method", "baseline", "directions"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string"},
                    "method": {"type": "string"},
                    "baseline": {"type": "string"},
                    "directions": {
                        "type": "object",
                        "minProperties": 1,
                        "additionalProperties": {"enum": [1, -1]},
                    },
                },
            },
        },
        "paper": {"type": "object", "additionalProperties": {"type": "object"}},
    },
}

_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def folder_name(label: str) -> str:
    """A row label or prefix name as a folder name: characters other than ASCII letters, digits,
    ``.``, ``_`` and ``-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", label)


def validate(spec: Any, source: str) -> Dict[str, Any]:
    """``spec`` if it is a valid table spec, else a ``ValueError`` naming ``source`` (the file, or
    ``built-in <name>``) and the first wrong field."""
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(spec))
    if error is not None:
        _refuse(source, _field(error.absolute_path), error.message, "Fix that field.")
    _check_references(spec, source)
    return spec


def _field(path: Any) -> str:
    """``["rows", 2, "label"]`` -> ``rows[2].label`` (``(top level)`` for the spec itself)."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return text or "(top level)"


def _refuse(source: str, field: str, problem: str, fix: str) -> None:
    raise ValueError(f"Expected a valid table spec in {source}, got {field}: {problem}. {fix}")


def _check_references(spec: Dict[str, Any], source: str) -> None:
    rows: List[Dict[str, Any]] = spec["rows"]
    labels = [row["label"] for row in rows]
    # Labels name folders under --out: two labels with one folder would share a run.
    seen: Dict[str, int] = {}
    for i, label in enumerate(labels):
        folder = folder_name(label)
        if folder in seen:
            _refuse(
                source,
                f"rows[{i}].label",
                f"{label!r}, the folder runs/{folder} of rows[{seen[folder]}] too",
                "Give every row a label of its own.",
            )
        seen[folder] = i
        if not re.fullmatch(PLAIN_NAME, folder):
            _refuse(source, f"rows[{i}].label", f"{label!r} (folder {folder!r})", _PLAIN_FIX)
    prefixes = spec.get("prefixes", {})
    for name, prefix in prefixes.items():
        if not re.fullmatch(PLAIN_NAME, name):
            _refuse(source, f"prefixes.{name}", "not a plain file name", _PLAIN_FIX)
        _check_method(prefix["method"], f"prefixes.{name}.method", source)
    for i, row in enumerate(rows):
        if row["method"] is not None:
            _check_method(row["method"], f"rows[{i}].method", source)
        if "prefix" in row and row["prefix"] not in prefixes:
            _refuse(
                source,
                f"rows[{i}].prefix",
                f"{row['prefix']!r}, not among the prefixes {sorted(prefixes)}",
                'Define it under "prefixes" or drop the row\'s "prefix".',
            )
    _check_choice(spec.get("preset"), list(PRESETS), "preset", source)
    _check_choice(spec["protocol"], sorted(evaluation.PROTOCOLS), "protocol", source)
    for label in spec.get("paper", {}):
        if label not in labels:
            _refuse(source, f"paper.{label}", f"{label!r}, not a row label", "Use a row's label.")
    passes = [p["name"] for p in spec.get("evaluations", [])]
    for i, name in enumerate(passes):
        if passes.count(name) > 1:
            _refuse(source, f"evaluations[{i}].name", f"{name!r} twice", "Name each pass once.")
    if any("seeds" in row for row in rows) and "claims" not in spec:
        _refuse(
            source,
            "claims",
            'none, with per-row "seeds" (a seeded table is reported by benchmark_report)',
            "Add the claims, or drop the seeds.",
        )
    for i, claim in enumerate(spec.get("claims", [])):
        for key in ("method", "baseline"):
            if claim[key] not in labels:
                _refuse(
                    source,
                    f"claims[{i}].{key}",
                    f"{claim[key]!r}, not a row label",
                    "Use a row's label.",
                )
    kinds = spec.get("checkpoints", ["last"])
    for i, column in enumerate(spec["columns"]):
        if len(kinds) > 1 and not column.startswith(("best_", "last_")):
            _refuse(
                source,
                f"columns[{i}]",
                f"{column!r} without best_ or last_ while checkpoints are {kinds}",
                "Name the columns best_<column> and last_<column>.",
            )


_PLAIN_FIX = "Use letters, digits, '.', '_' and '-', not starting with '.' or '-'."


def _check_method(method: str, field: str, source: str) -> None:
    _check_choice(method, list(ir.methods.names()), field, source)


def _check_choice(value: Any, choices: List[str], field: str, source: str) -> None:
    if value is not None and value not in choices:
        _refuse(source, field, f"{value!r}, not among {', '.join(choices)}", "Pick one of those.")
