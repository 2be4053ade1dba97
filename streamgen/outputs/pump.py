"""``SinkPump``: a local session's output, feeding the sinks on a thread of their own.

The session hands over each step's frames on the event loop
(:meth:`SinkPump.push_batch`, the place where a peer's output track would
take them); encoding a file or writing to a device can block, so that
happens on the pump's thread. The hand-off holds at most
``max_waiting`` frames: if the sinks fall that far behind, the oldest frames
are dropped and counted, so memory and latency stay bounded.

A video model returns a chunk of frames at once. When a sink shows frames
as they come (a virtual camera, a window), the pump spaces a chunk's frames
by their timestamps (a little faster than real time, never more than
``MAX_SPACING`` apart), as the WebRTC output track does, instead of
flashing them.

The first sink failure stops the pump: ``on_stop`` is called (from the
pump's thread) with the error, or with :class:`~streamgen.outputs.sink.SinkClosed`
when the user closed a window. :meth:`stop` lets the queued frames out, then
closes every sink (a file is finished even after a failure elsewhere).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np
from av import VideoFrame

from .sink import FrameSink, OutputError, Picture, SinkClosed

logger = logging.getLogger(__name__)

MAX_WAITING = 32
MAX_SPACING = 0.1
SPACING_FACTOR = 0.9


class SinkPump:
    """Frames from the event loop to the sinks (see module docstring)."""

    def __init__(self, sinks: Sequence[FrameSink], on_stop: Callable[[BaseException], None], *, max_waiting: int = MAX_WAITING) -> None:
        self.sinks = list(sinks)
        self.frames_dropped = 0
        self.error: BaseException | None = None
        self._on_stop = on_stop
        self._max_waiting = max_waiting
        self._cond = threading.Condition()
        self._waiting: deque[tuple[VideoFrame, int]] = deque()
        self._batch = 0
        self._stopping = False
        self._realtime = any(sink.realtime for sink in self.sinks)
        self._thread = threading.Thread(target=self._run, name="streamgen-sinks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # ------------------------------------------------------------ event loop
    def push_batch(self, frames: Sequence[VideoFrame]) -> None:
        """One step's frames (event loop; never blocks)."""
        if not frames:
            return
        with self._cond:
            if self._stopping:
                return
            self._batch += 1
            self._waiting.extend((frame, self._batch) for frame in frames)
            while len(self._waiting) > self._max_waiting:
                self._waiting.popleft()
                self.frames_dropped += 1
            self._cond.notify()

    def stop(self) -> None:
        """Write what is queued, then close the sinks (returns at once; :meth:`join` waits)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the sinks to be closed; True when they are."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---------------------------------------------------------------- thread
    def _run(self) -> None:
        try:
            self._write_until_stopped()
        except (OutputError, SinkClosed) as error:
            self._fail(error)
        except Exception as error:  # noqa: BLE001 - a sink's bug: logged, and the run ends with it
            logger.exception("a local output failed")
            self._fail(OutputError(f"a local output failed: {error}"))
        finally:
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as error:  # noqa: BLE001 - closing the others matters more
                    logger.warning("closing the %s output failed: %s", sink.name, error)
                    self.error = self.error or OutputError(f"closing the {sink.name} output failed: {error}")

    def _write_until_stopped(self) -> None:
        last_batch, last_time, last_sent = None, None, None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or bool(self._waiting))
                if not self._waiting:
                    return
                frame, batch = self._waiting.popleft()
            picture = to_picture(frame)
            if self._realtime and batch == last_batch:
                _space(picture.seconds, last_time, last_sent)
            for sink in self.sinks:
                sink.write(picture)
            last_batch, last_time, last_sent = batch, picture.seconds, time.monotonic()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            self._stopping = True
            self._waiting.clear()
        self.error = error
        self._on_stop(error)


def to_picture(frame: VideoFrame) -> Picture:
    image = frame.to_ndarray(format="rgb24")
    time_base = Fraction(frame.time_base) if frame.time_base is not None else Fraction(1, 90000)
    return Picture(np.ascontiguousarray(image), int(frame.pts or 0), time_base)


def _space(seconds: float, last_time: float | None, last_sent: float | None) -> None:
    """Hold a chunk's next frame back by (most of) its distance in time from the previous one."""
    if last_time is None or last_sent is None:
        return
    delay = last_sent + min(max(seconds - last_time, 0.0) * SPACING_FACTOR, MAX_SPACING) - time.monotonic()
    if delay > 0:
        time.sleep(delay)
