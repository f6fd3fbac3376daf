"""Every Python code block of README.md and docs/ (not docs/results/) runs under pytest, with Sybil.

- A ```` ```python ```` block runs **as written**: in a namespace of its own (no name carries over from
  an earlier block on the page), after ``torch.manual_seed(0)``, on one CPU thread (the blocks' tiny
  models run slower on more threads when the machine is busy). A reader who copies one block gets
  something that runs.
- ``<!-- invisible-code-block: python ... -->`` right after a block runs in that block's namespace:
  checks of what the block computed that a reader does not need to see (e.g. that the README's loop
  trained through the burn-in).
- ``<!-- skip: next "fragment of …" -->`` marks the next block as a fragment; the reason names the
  complete example it belongs to and shows in pytest's summary. The page says the same in a line a
  reader sees (``tests/test_docs.py`` checks that it does).
"""

from __future__ import annotations

import pytest
import torch
from sybil import Example, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown import CodeBlockParser, SkipParser

_run = PythonEvaluator()


def _run_as_written(example: Example) -> None:
    if "directive" not in example.region.lexemes:  # a visible block, not an invisible check
        example.namespace.clear()
        torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(example)
    finally:
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items: list) -> None:
    """The evaluation page's blocks run AutoAttack: part of the full suite, not the quick subset."""
    for item in items:
        if item.nodeid.startswith("docs/evaluation.md"):
            item.add_marker(pytest.mark.slow)


pytest_collect_file = Sybil(
    parsers=[CodeBlockParser("python", _run_as_written), SkipParser()],
    patterns=["README.md", "docs/*.md"],
).pytest()
