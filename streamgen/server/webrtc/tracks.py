"""``OutputTrack``: processed frames on their way to one peer's encoder.

Each consumer of a session's output (the session's own peer, every WHEP
viewer) has its own track and its own frame objects: aiortc's encoders run in
executor threads and may touch a frame's timing while encoding, so frames are
never shared between encoders.

Frames arrive in batches, one per model step: one frame for an image model,
a chunk of several (or none) for a video model. A new batch replaces
whatever of the previous one has not been sent yet, so a slow encoder or a
late-starting sender can never build up latency. Inside a batch, frames are
spaced by their timestamps (a little faster than real time, so a chunk is
out before the next one is due), so a video chunk plays at its own rate
instead of in a burst; the first frame of a batch goes out at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

MAX_SPACING = 0.1  # never hold a frame of a chunk back more than this (seconds)
SPACING_FACTOR = 0.9  # play chunks slightly faster than real time


class OutputTrack(MediaStreamTrack):
    """A video track fed from the worker through the event loop (see module docstring)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._frames: deque[tuple[VideoFrame, int]] = deque()
        self._wakeup = asyncio.Event()
        self._batch = 0
        self._last_batch: int | None = None
        self._last_sent_at: float | None = None
        self._last_time: float | None = None
        self.frames_sent = 0
        self.frames_replaced = 0

    def push_batch(self, frames: Sequence[VideoFrame]) -> None:
        """Queue one step's frames, replacing unsent frames of earlier steps (event-loop thread)."""
        if self.readyState != "live" or not frames:
            return
        self.frames_replaced += len(self._frames)
        self._frames.clear()
        self._batch += 1
        self._frames.extend((frame, self._batch) for frame in frames)
        self._wakeup.set()

    async def recv(self) -> VideoFrame:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._wakeup.clear()
            await self._wakeup.wait()
        frame, batch = self._frames.popleft()
        if batch == self._last_batch:
            await self._space_after_previous(frame)
        if self.readyState != "live":
            raise MediaStreamError
        self._last_batch, self._last_sent_at, self._last_time = batch, time.monotonic(), _seconds(frame)
        self.frames_sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._frames.clear()
        self._wakeup.set()

    async def _space_after_previous(self, frame: VideoFrame) -> None:
        current, previous = _seconds(frame), self._last_time
        if current is None or previous is None or self._last_sent_at is None:
            return
        due = self._last_sent_at + min(max(current - previous, 0.0) * SPACING_FACTOR, MAX_SPACING)
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def _seconds(frame: VideoFrame) -> float | None:
    if frame.pts is None or frame.time_base is None:
        return None
    return float(frame.pts * frame.time_base)
