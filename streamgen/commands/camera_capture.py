"""The capture thread of ``streamgen camera``: read the source, stamp each frame, offer it to the session.

Decoding a camera, a file or a network stream blocks, so it has a thread of
its own; the session's capture track keeps only the newest frame it is
offered (:mod:`streamgen.server.webrtc.capture_track`), and the session's slot
only the newest frames of one step: a slow model never makes capture queue.

Timestamps: a live source (device, URL) is stamped with the capture clock,
the seconds since capture started; a file or synthetic clip with its own
media time, and it is paced to it (sleeping until each frame is due), so it
plays in real time like a camera. Looping adds the clip's length each time,
so the times keep increasing. Frames carry these times (in a 90 kHz time
base) through the model to the outputs: a file written from the stream plays
at the speed the stream ran.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ..errors import InputError
from ..server.webrtc.capture_track import CAPTURE_TIME_BASE, CLOCK_RATE, CaptureTrack
from .camera_sources import CaptureSource

logger = logging.getLogger(__name__)

JOIN_SECONDS = 2.0


@dataclass
class CaptureCounts:
    """What the capture thread has read (written by it, read by the status line)."""

    frames_read: int = 0
    loops: int = 0


class CaptureThread:
    """Reads ``source`` and offers every frame to ``track`` (see module docstring)."""

    def __init__(self, source: CaptureSource, track: CaptureTrack, *, loop: bool = False, max_frames: int | None = None) -> None:
        self.source = source
        self.track = track
        self.loop = loop
        self.max_frames = max_frames
        self.counts = CaptureCounts()
        self.error: InputError | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamgen-capture", daemon=True)
        self._last_pts = -1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop reading (returns at once; a blocked device read ends with its next frame)."""
        self._stopping.set()

    def join(self, timeout: float = JOIN_SECONDS) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---------------------------------------------------------------- thread
    def _run(self) -> None:
        try:
            self._read()
        except InputError as error:
            self.error = error
        except Exception as error:  # noqa: BLE001 - a decoder's surprise ends the input, with its message
            logger.exception("reading the input failed")
            self.error = InputError(f"reading the input failed: {error}")
        finally:
            self.source.close()
            self.track.end()

    def _read(self) -> None:
        if self.source.reopen_to_start:
            self.source.restart()
        started = time.monotonic()
        offset = 0.0
        while not self._stopping.is_set():
            read_before = self.counts.frames_read
            last = offset
            for frame, seconds in self.source.frames():
                if self._stopping.is_set():
                    return
                if self.source.live:
                    at = time.monotonic() - started
                else:
                    at = offset + (seconds if seconds is not None else (self.counts.frames_read - read_before) / float(self.source.rate))
                    if self._stopping.wait(max(0.0, started + at - time.monotonic())):
                        return
                last = at
                self._offer(frame, at)
                if self.max_frames is not None and self.counts.frames_read >= self.max_frames:
                    return
            if not self.loop or self.counts.frames_read == read_before:
                return  # the end (a loop of an empty file would spin)
            self.source.restart()
            self.counts.loops += 1
            offset = last + 1 / float(self.source.rate)

    def _offer(self, frame, seconds: float) -> None:
        pts = max(round(seconds * CLOCK_RATE), self._last_pts + 1)
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = CAPTURE_TIME_BASE
        self.track.offer(frame)
        self.counts.frames_read += 1
