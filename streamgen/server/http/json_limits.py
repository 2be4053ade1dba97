"""How deep a client's JSON may nest: checked without recursion, right after parsing.

Python's JSON parser accepts nesting up to the interpreter's recursion
limit, so a body or control message about 900 levels deep parses, and then
breaks whatever walks it recursively later: a ``repr`` in an error message,
a validation, a log line. That surfaced as a 500 on HTTP and as a missing
ack ("Task exception was never retrieved") on the data channel. No setting
nests more than a few levels (a weighted prompt list is three), so anything
deeper than :data:`MAX_JSON_DEPTH` is refused where it is parsed, with the
depth in the message.
"""

from __future__ import annotations

from typing import Any

MAX_JSON_DEPTH = 32


def json_depth(value: Any, stop_at: int = MAX_JSON_DEPTH + 1) -> int:
    """How deeply lists and objects nest in ``value`` (a scalar: 0), counting no further than ``stop_at``; iterative."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest >= stop_at:
            return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def too_deep(value: Any) -> str | None:
    """The reason ``value`` is refused, or None."""
    depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        return f"nested too deeply: more than {MAX_JSON_DEPTH} levels of lists and objects"
    return None
