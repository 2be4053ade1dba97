"""reST docstrings → plain text for ``--help``.

Each command uses its module docstring as its ``--help`` description; the
docstrings are written for Sphinx, so this drops the markup a terminal would
show verbatim: ``:class:`~a.b.C``` → ``C``, ``:mod:`a.b``` → ``a.b``,
``:role:`title <target>``` → ``title``, double backquotes → nothing, and a
paragraph's closing ``::`` (a literal block follows) → ``:``.
"""

from __future__ import annotations

import re

# :role:`text` or :domain:role:`text`
_ROLE = re.compile(r":(?:[a-zA-Z][\w-]*:)?[a-zA-Z][\w-]*:`([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_TITLED_TARGET = re.compile(r"^(.*\S)\s*<[^<>]+>$", re.DOTALL)
_LITERAL_BLOCK_MARKER = re.compile(r"(\S)::$", re.MULTILINE)
_LONE_MARKER = re.compile(r"^[ \t]*::[ \t]*\n", re.MULTILINE)


def _role_text(match: re.Match[str]) -> str:
    text = match.group(1).strip()
    titled = _TITLED_TARGET.match(text)
    if titled:
        return titled.group(1)
    if text.startswith("~"):  # ~a.b.C shows only the last component
        return text[1:].rsplit(".", 1)[-1]
    return text.lstrip("!")


def rest_to_text(text: str | None) -> str | None:
    """The text with reST roles, inline literals and ``::`` markers turned into plain text."""
    if not text:
        return text
    text = _ROLE.sub(_role_text, text)
    text = _LITERAL.sub(r"\1", text)
    text = _LONE_MARKER.sub("", text)
    return _LITERAL_BLOCK_MARKER.sub(r"\1:", text)
