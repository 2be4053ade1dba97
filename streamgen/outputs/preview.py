"""The preview window's own process: raw RGB frames on stdin, shown with Tk.

    python -m streamgen.outputs.preview --title "streamgen camera"   # frames on stdin
    python -m streamgen.outputs.preview --probe                      # exit 0 if a window can open here

Tk wants to own the main thread of its process (on macOS it must), and a
streaming process's main thread belongs to its event loop, so the window
lives here, in a child process, and needs nothing beyond the standard
library. Each frame on stdin is a header of two little-endian uint32
(width, height) and ``width × height × 3`` bytes of RGB. A reader thread
keeps only the newest frame; Tk shows it every few milliseconds. The process
ends when stdin closes (the stream ended) or when the window is closed (the
parent then sees a broken pipe). Ctrl+C is left to the parent, which ends
the stream and so closes stdin.
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys
import threading
from typing import BinaryIO

HEADER = struct.Struct("<II")
POLL_MS = 10
MAX_SIDE = 16384


def read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    """``size`` bytes, or None when the stream ends first."""
    chunks, missing = [], size
    while missing:
        chunk = stream.read(missing)
        if not chunk:
            return None
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def encode_frame(width: int, height: int, rgb: bytes) -> bytes:
    """One frame as the window process reads it."""
    return HEADER.pack(width, height) + rgb


class LatestFrame:
    """The newest frame read from stdin, and whether stdin has ended (reader thread → Tk thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: tuple[int, int, bytes] | None = None
        self.ended = False

    def put(self, frame: tuple[int, int, bytes]) -> None:
        with self._lock:
            self._frame = frame

    def take(self) -> tuple[int, int, bytes] | None:
        with self._lock:
            frame, self._frame = self._frame, None
            return frame


def read_frames(stream: BinaryIO, latest: LatestFrame) -> None:
    """Reader thread: frames from ``stream`` into ``latest`` until it ends or breaks the protocol."""
    try:
        while True:
            header = read_exactly(stream, HEADER.size)
            if header is None:
                return
            width, height = HEADER.unpack(header)
            if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
                return
            rgb = read_exactly(stream, width * height * 3)
            if rgb is None:
                return
            latest.put((width, height, rgb))
    finally:
        latest.ended = True


def show(title: str, stream: BinaryIO) -> int:
    import tkinter as tk  # noqa: PLC0415

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in the terminal reaches us too: the parent decides, then closes stdin
    root = tk.Tk()
    root.title(title)
    label = tk.Label(root, background="black")
    label.pack(fill="both", expand=True)
    latest = LatestFrame()
    threading.Thread(target=read_frames, args=(stream, latest), name="preview-reader", daemon=True).start()

    def refresh() -> None:
        frame = latest.take()
        if frame is not None:
            width, height, rgb = frame
            photo = tk.PhotoImage(data=b"P6 %d %d 255\n" % (width, height) + rgb, format="PPM")
            label.configure(image=photo)
            label.image = photo  # Tk keeps no reference of its own
        if latest.ended and frame is None:
            root.destroy()
            return
        root.after(POLL_MS, refresh)

    root.after(POLL_MS, refresh)
    root.mainloop()
    return 0


def probe() -> int:
    """Open and close a Tk root; the error (no display, no Tk) goes to stderr."""
    try:
        import tkinter as tk  # noqa: PLC0415

        tk.Tk().destroy()
    except ImportError as error:
        print(f"tkinter is not installed ({error})", file=sys.stderr)
        return 3
    except Exception as error:  # noqa: BLE001 - tkinter.TclError: no display, bad $DISPLAY
        print(str(error), file=sys.stderr)
        return 4
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamgen.outputs.preview", description="show raw RGB frames from stdin in a window")
    parser.add_argument("--title", default="streamgen")
    parser.add_argument("--probe", action="store_true", help="only check that a window can open here")
    args = parser.parse_args(argv)
    if args.probe:
        return probe()
    return show(args.title, sys.stdin.buffer)


if __name__ == "__main__":  # pragma: no cover - runs as the child process
    sys.exit(main())
