"""``MarkerVideoTrack``: a synthetic camera for tests and benchmarks.

It produces ``fps`` frames per second of a gradient with a moving bar in the
bottom half and (``marked=True``) a frame counter in the top half (see
:mod:`streamgen.server.webrtc.markers`). It remembers when each marked frame was
handed to the WebRTC sender (the "glass" moment), keyed by marker, and its
pts, so a receiver can compute glass-to-glass latency. ``hold_after`` makes
it stop after that many frames until :meth:`resume` is called, which tests
use to check that the last frame before a pause is delivered during the
pause. ``moving=False`` leaves out the bar: with ``marked=False`` the picture
then never changes.
"""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from ..server.webrtc.markers import stamp_marker

CLOCK_RATE = 90000


class MarkerVideoTrack(MediaStreamTrack):
    """A paced synthetic video source with per-frame markers (see module docstring)."""

    kind = "video"

    def __init__(self, width: int = 256, height: int = 256, fps: float = 30.0, *, first_marker: int = 0, marked: bool = True, moving: bool = True, hold_after: int | None = None) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.first_marker = first_marker
        self.marked = marked
        self.moving = moving
        self.hold_after = hold_after
        self.sent_at: dict[int, float] = {}
        self.sent_pts: dict[int, int] = {}
        self.frames_sent = 0
        self._start: float | None = None
        self._released = asyncio.Event()
        self._background = _gradient(height, width)

    def resume(self) -> None:
        """Continue after ``hold_after`` frames, pacing from now on (no catch-up burst)."""
        self.hold_after = None
        self._start = time.monotonic() - self.frames_sent / self.fps
        self._released.set()

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.hold_after is not None and self.frames_sent >= self.hold_after:
            await self._released.wait()
        index = self.frames_sent
        if self._start is None:
            self._start = time.monotonic()
        else:
            delay = self._start + index / self.fps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        image = self._draw(index)
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(round(index * CLOCK_RATE / self.fps))
        frame.time_base = Fraction(1, CLOCK_RATE)
        marker = self.first_marker + index
        self.sent_at[marker] = time.monotonic()
        self.sent_pts[marker] = frame.pts
        self.frames_sent += 1
        return frame

    def _draw(self, index: int) -> np.ndarray:
        image = self._background.copy()
        if self.moving:
            bar = (index * 4) % self.width
            image[self.height // 2 :, bar : bar + max(2, self.width // 16)] = 255
        if self.marked:
            stamp_marker(image, self.first_marker + index)
        return image


def _gradient(height: int, width: int) -> np.ndarray:
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = x.astype(np.uint8).repeat(height, 0)
    image[..., 1] = y.astype(np.uint8).repeat(width, 1)
    image[..., 2] = ((x + y) / 2).astype(np.uint8)
    return image
