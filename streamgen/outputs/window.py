"""``window``: a local preview of the stream, in a window of its own process.

The window is :mod:`streamgen.outputs.preview` running as a child process
(Tk, from Python's standard library, on that process's main thread); this
sink pipes raw RGB frames to it. Closing the window ends the stream
(:class:`~streamgen.outputs.sink.SinkClosed`), as closing a player would.
:func:`check_window` runs the child once in probe mode before the model
loads, so a machine without a display or without Tk gets one clear message.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np

from ..errors import ConfigError
from .preview import encode_frame
from .sink import Picture, SinkClosed

PREVIEW_MODULE = "streamgen.outputs.preview"
PROBE_SECONDS = 20.0
CLOSE_SECONDS = 5.0
TK_INSTALL = {
    "Linux": "install Tk for this Python (Debian/Ubuntu: sudo apt install python3-tk; Fedora: sudo dnf install python3-tkinter)",
    "Darwin": "install Tk for this Python (Homebrew: brew install python-tk; the python.org installer includes it)",
    "Windows": "reinstall Python with the 'tcl/tk and IDLE' option",
}


def preview_command(*args: str) -> list[str]:
    return [sys.executable, "-m", PREVIEW_MODULE, *args]


def check_window() -> None:
    """ConfigError, before any work, when no window can open here (no display, no Tk)."""
    system = platform.system()
    if system == "Linux" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError("--output window needs a display, and $DISPLAY is not set (no desktop session here?); use --output file:out.mp4 or --output whep instead")
    try:
        probe = subprocess.run(preview_command("--probe"), capture_output=True, text=True, timeout=PROBE_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ConfigError(f"--output window: cannot start the preview process ({error})") from None
    reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit status {probe.returncode}"
    if probe.returncode == 3:
        raise ConfigError(f"--output window needs Tk ({reason}): {TK_INSTALL.get(system, 'install Tk for this Python')}")
    if probe.returncode != 0:
        raise ConfigError(f"--output window: cannot open a window here ({reason})")


class WindowSink:
    """Pipe pictures to the preview process, started on the first picture."""

    name = "window"
    realtime = True

    def __init__(self, title: str = "streamgen") -> None:
        self.title = title
        self.frames_written = 0
        self._process: subprocess.Popen | None = None

    def write(self, picture: Picture) -> None:
        if self._process is None:
            self._process = subprocess.Popen(preview_command("--title", self.title), stdin=subprocess.PIPE)
        height, width = picture.image.shape[:2]
        try:
            self._process.stdin.write(encode_frame(width, height, np.ascontiguousarray(picture.image).tobytes()))
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise SinkClosed("the preview window was closed") from None
        self.frames_written += 1

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(CLOSE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def describe(self) -> str:
        return f"window ({self.frames_written} frames shown)"
