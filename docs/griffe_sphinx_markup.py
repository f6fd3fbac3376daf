"""Griffe extension: the library's docstrings are Google style with Sphinx markup (``:math:``,
``:class:``, ``.. math::``, ``Example:``), which ``help()`` shows as written; this renders that markup
as the Markdown that mkdocstrings expects, so the API reference shows maths, links and doctests.

- ``.. math::`` and its indented block become a ``$$ … $$`` display (pymdownx.arithmatex);
- ``:math:`x``` becomes ``$x$``; ``:sub:`x``` becomes ``<sub>x</sub>``;
- ``:class:`~instance_reweight.X``` (a full path into the package) becomes a link ``[X][instance_reweight.X]``;
  any other role (``:meth:`step```, ``:func:`evaluate```) becomes code, ``X`` or ``step()``;
- an ``Example:`` section header becomes ``Examples:``, the section Griffe parses as doctests;
- a reStructuredText simple table (``====  ====`` borders, one header row, one line per row) becomes a
  Markdown table, double backquotes in its cells single ones.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_MATH_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)\.\. math::[ \t]*\n(?P<body>(?:(?P=indent)[ \t]+\S.*\n|[ \t]*\n)+)", re.M
)
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_SUB_ROLE = re.compile(r":sub:`([^`]+)`")
_REF_ROLE = re.compile(r":(class|meth|func|attr|data|mod|exc):`(~?)([\w.]+)`")
_EXAMPLE = re.compile(r"^([ \t]*)Example:[ \t]*$", re.M)
_BORDER = r"[ \t]*=+(?: +=+)+[ \t]*\n"
_SIMPLE_TABLE = re.compile(
    rf"^(?P<top>{_BORDER})(?P<head>.*\n)(?:{_BORDER})(?P<body>(?:(?!{_BORDER}).*\S.*\n)+)(?:{_BORDER})",
    re.M,
)


def _math_block(match: re.Match[str]) -> str:
    indent = match.group("indent")
    body = f"\n{indent}".join(line.strip() for line in match.group("body").strip("\n").splitlines())
    return f"{indent}$$\n{indent}{body}\n{indent}$$\n\n"


def _reference(match: re.Match[str]) -> str:
    role, short, path = match.groups()
    name = path.rsplit(".", 1)[-1] if short else path
    if role in ("meth", "func"):
        name += "()"
    if role != "mod" and path.startswith("instance_reweight."):
        return f"[`{name}`][{path}]"
    return f"`{name}`"


def _simple_table(match: re.Match[str]) -> str:
    border = match.group("top").rstrip("\n")
    columns = [(m.start(), m.end()) for m in re.finditer("=+", border)]
    starts = [a for a, _ in columns] + [None]

    def row(line: str) -> str:
        cells = [line[a:b].strip().replace("``", "`") for a, b in zip(starts, starts[1:])]
        return "| " + " | ".join(cells) + " |\n"

    lines = [match.group("head"), *match.group("body").splitlines(keepends=True)]
    rule = "|" + "|".join("---" for _ in columns) + "|\n"
    return row(lines[0]) + rule + "".join(row(line) for line in lines[1:])


def to_markdown(text: str) -> str:
    """The docstring ``text`` with its Sphinx markup written as Markdown."""
    text = _SIMPLE_TABLE.sub(_simple_table, text)
    text = _MATH_BLOCK.sub(_math_block, text)
    text = _MATH_ROLE.sub(r"$\1$", text)
    text = _SUB_ROLE.sub(r"<sub>\1</sub>", text)
    text = _REF_ROLE.sub(_reference, text)
    return _EXAMPLE.sub(r"\1Examples:", text)


class SphinxMarkup(griffe.Extension):
    """Rewrites every docstring with :func:`to_markdown` before Griffe parses it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
