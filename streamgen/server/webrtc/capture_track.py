"""``CaptureTrack``: frames captured in this process, read by a session exactly like a peer's video track.

A local session (``streamgen camera``) must not grow a second input path: its
frames go through the same pump, resolution check, fps cap and latest-frame
slot as a WebRTC or WHIP publisher's. So the local capture is presented as a
``MediaStreamTrack``: a capture thread (camera, screen, file, URL) calls
:meth:`CaptureTrack.offer` for every frame it reads, and the session's pump
awaits :meth:`recv` on the event loop.

Between the two sits a one-frame box: when the loop is late, a newer frame
replaces the one waiting (counted in ``frames_replaced``), so nothing queues
up behind a busy loop. :meth:`end` says the source has no more frames; the
pump then sees ``MediaStreamError``, as it does when a peer's track ends.
"""

from __future__ import annotations

import asyncio
import threading
from fractions import Fraction

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

CLOCK_RATE = 90000
CAPTURE_TIME_BASE = Fraction(1, CLOCK_RATE)  # the time base of captured frames, as an RTP video clock


class CaptureTrack(MediaStreamTrack):
    """Latest-frame hand-off from a capture thread to the event loop (see module docstring)."""

    kind = "video"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._lock = threading.Lock()
        self._waiting: VideoFrame | None = None
        self._ended = False
        self._wakeup = asyncio.Event()
        self.frames_offered = 0
        self.frames_replaced = 0
        self.last_frame: VideoFrame | None = None  # the newest frame handed to the pump

    # ---------------------------------------------------------- capture thread
    def offer(self, frame: VideoFrame) -> None:
        """Hand over one captured frame (any thread); a frame still waiting is replaced."""
        with self._lock:
            if self._ended:
                return
            if self._waiting is not None:
                self.frames_replaced += 1
            self._waiting = frame
            self.frames_offered += 1
        self._wake()

    def end(self) -> None:
        """The source has no more frames (any thread); the frame still waiting is delivered first."""
        with self._lock:
            self._ended = True
        self._wake()

    @property
    def ended(self) -> bool:
        with self._lock:
            return self._ended

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wakeup.set)
        except RuntimeError:  # the loop has closed: nobody is reading any more
            pass

    # -------------------------------------------------------------- event loop
    async def recv(self) -> VideoFrame:
        while True:
            with self._lock:
                frame, self._waiting = self._waiting, None
                ended = self._ended
            if frame is not None:
                self.last_frame = frame
                return frame
            if ended or self.readyState != "live":
                raise MediaStreamError
            # The wake-up is scheduled on this loop, so it runs after this clear: none is lost.
            self._wakeup.clear()
            await self._wakeup.wait()

    def stop(self) -> None:
        super().stop()
        with self._lock:
            self._ended = True
            self._waiting = None
        self._wakeup.set()
