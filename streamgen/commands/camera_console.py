"""The terminal side of ``streamgen camera``: a status line, messages, and prompts typed on stdin.

- :class:`Console` prints the status line (fps in and out, latency, dropped
  frames). On a terminal it is rewritten in place, on the line just above
  the cursor (saved and restored around the rewrite), so what the user is
  typing on the cursor's line is never erased; a message replaces the lines
  from the status line down (the typed line included) and the status line
  is drawn again below it. Into a pipe or a file (or on Windows, whose
  console may not take these escape codes) it is a plain line now and then.
  Everything is called on the event loop's thread, so lines never interleave.
- :func:`parse_typed_line`: a typed line is a new prompt; a line that starts
  with ``{`` is a JSON object of parameters, the body ``PATCH
  /api/sessions/{id}/params`` takes. Either goes through the session's own
  validation; a refusal is one line on the terminal.
- :class:`StdinLines` reads stdin on a thread (``readline`` blocks) and
  hands each line to the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from ..errors import ConfigError

SAVE_CURSOR, RESTORE_CURSOR = "\x1b7", "\x1b8"
CLEAR_LINE = "\r\x1b[K"
CLEAR_TO_END = "\r\x1b[J"


def _up(lines: int) -> str:
    return f"\x1b[{lines}A"


class Console:
    """Status line and messages on one text stream (see module docstring)."""

    def __init__(self, stream: TextIO | None = None, *, in_place: bool | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.in_place = (self.stream.isatty() and os.name != "nt") if in_place is None else in_place
        self.quiet = quiet
        self._status: str | None = None  # the status line on screen (in place)
        self._below = 0  # lines from the status line down to the cursor's line

    def status(self, text: str) -> None:
        if self.quiet:
            return
        if not self.in_place:
            self._write(text + "\n")
        elif self._status is None:
            self._write(text + "\n")
            self._below = 1
        else:
            self._write(SAVE_CURSOR + _up(self._below) + CLEAR_LINE + text + RESTORE_CURSOR)
        self._status = text if self.in_place else None

    def line_typed(self) -> None:
        """The user pressed Enter: the terminal moved the cursor one line further from the status line."""
        if self._status is not None:
            self._below += 1

    def message(self, text: str) -> None:
        """A line of its own, above the status line (which is drawn again under it)."""
        if self._status is None:
            self._write(text + "\n")
            return
        self._write(_up(self._below) + CLEAR_TO_END + text + "\n" + self._status + "\n")
        self._below = 1

    def end(self) -> None:
        """Leave the last status line on the screen, and the cursor on a clean line below it."""
        if self._status is not None:
            self._write(CLEAR_LINE)  # whatever was typed, or the terminal's ^C
            self._status = None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def format_status(stats: Mapping[str, Any], dropped: int, outputs: Mapping[str, int]) -> str:
    """One status line from a session's stats snapshot, the frames dropped anywhere, and frames per output."""
    p50, p95 = stats.get("latency_ms_p50"), stats.get("latency_ms_p95")
    latency = "latency -" if p50 is None else f"latency {p50:.0f} ms (p95 {p95:.0f})"
    parts = [
        f"in {stats.get('fps_in', 0.0):.1f} fps",
        f"out {stats.get('fps_out', 0.0):.1f} fps",
        latency,
        f"dropped {dropped}",
        f"frames {stats.get('frames_in', 0)} in, {stats.get('frames_out', 0)} out",
    ]
    if outputs:
        parts.append(", ".join(f"{name} {count}" for name, count in outputs.items()))
    return " | ".join(parts)


def parse_typed_line(line: str) -> dict[str, Any] | None:
    """A typed line → the parameter changes it asks for (None for a blank line); ConfigError for bad JSON."""
    text = line.strip()
    if not text:
        return None
    if not text.startswith("{"):
        return {"prompt": text}
    try:
        return json.loads(text)  # text that parses and starts with "{" is an object
    except ValueError as error:
        raise ConfigError(f"a line starting with '{{' must be a JSON object of parameters: {error}") from None


class StdinLines:
    """Each line of ``stream`` handed to ``on_line`` on ``loop`` (a daemon thread: readline cannot be interrupted)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_line: Callable[[str], None], stream: TextIO | None = None) -> None:
        self._loop = loop
        self._on_line = on_line
        self._stream = stream or sys.stdin
        self._thread = threading.Thread(target=self._run, name="streamgen-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in self._stream:
                self._loop.call_soon_threadsafe(self._on_line, line)
        except (OSError, ValueError, RuntimeError):  # stdin closed, or the loop has ended
            return
