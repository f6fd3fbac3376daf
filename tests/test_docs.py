"""The code blocks of README.md and docs/ are run by Sybil (the root conftest.py); this checks what a
reader sees around the ones it does not run: every fragment says so on the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!-- skip: next (?P<reason>.*?) -->\n(?P<after>.*)")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_skipped_block_is_a_fragment_named_for_the_reader(page):
    for match in SKIP.finditer(page.read_text()):
        reason = match["reason"]
        if reason.startswith("if("):  # skipped only where an optional extra is missing
            continue
        assert reason.startswith('"fragment of '), f"{page.name}: skip reason {reason}"
        assert match["after"].startswith("**Fragment**"), (
            f"{page.name}: a fragment's first visible line must say **Fragment** and link the "
            f"complete example, got {match['after']!r}"
        )


def test_the_pages_have_python_blocks_to_run():
    blocks = sum(page.read_text().count("```python\n") for page in PAGES)
    fragments = sum(len(SKIP.findall(page.read_text())) for page in PAGES)
    assert blocks >= 20 and fragments < blocks
