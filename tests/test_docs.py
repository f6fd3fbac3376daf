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


def test_the_api_pages_render_the_docstrings_markup_as_markdown():
    pytest.importorskip("griffe")  # the docs extra
    import sys

    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from griffe_sphinx_markup import to_markdown
    finally:
        sys.path.remove(str(ROOT / "docs"))
    import instance_reweight.methods as methods

    text = to_markdown(methods.__doc__)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert (
        table[0]
        == "| name | attack | forwards f(·) | training loss, the batch mean of each term | weight |"
    )
    assert "| `at` | uniform, CE | x_adv | CE(x_adv) | — |" in table
    assert "====" not in text and "``at``" not in text.split("|---")[1].split("\n\n")[0]
    block = "    .. math::\n        a = b \\\\\n        c\n\n    after :math:`x` :class:`~instance_reweight.Sampler`"
    assert to_markdown(block) == (
        "    $$\n    a = b \\\\\n    c\n    $$\n\n    after $x$ [`Sampler`][instance_reweight.Sampler]"
    )
