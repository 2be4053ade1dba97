"""``LocalSession``: a session whose input is captured and whose output is shown by this process.

``streamgen camera`` runs one stream with no browser: a camera, the screen, a
file or a URL goes in, a virtual camera, a file or a window comes out. It is
still a server session, so it gets everything a WebRTC session gets: the
same worker and scheduler, the same parameter validation (``PATCH
/api/sessions/{id}/params`` works on it), the same stats, WHEP viewers.
What differs is only at the edges:

- the input is a :class:`~streamgen.server.webrtc.capture_track.CaptureTrack`,
  read by the same pump as a peer's track;
- the output is a :class:`LocalOutput` (the local sinks), in the place of
  the peer's output track; WHEP viewers are added beside it as usual;
- the "peer" is this process (:class:`LocalPeer`): connected until the
  session closes, never silent, never reaped by the sweeper;
- the control channel is the terminal (:class:`NoticeChannel`): problems a
  browser would be told about on the data channel are shown to the user.

A file ends, and a pipeline still holds frames when it does (stream batch
returns the frame of n − 1 steps ago; a video model buffers chunks). When
the input ends, a call left incomplete is filled with copies of the last
frame (timestamps after it; never delivered), and the worker runs the
pipeline's own end-of-stream drain (``flush``, the one ``streamgen run``
uses) once the stream's last frames have been stepped: every real frame is
out then. :attr:`LocalSession.finished` is set then (or when the session
closes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from av import VideoFrame

from ...sched import Slo
from ..webrtc.capture_track import CaptureTrack
from ..config import ServerConfig
from ..metrics import ServerMetrics
from .session import Session
from .slot import FrameTag
from ..worker.step_shape import ServerCaps
from ..worker.model_worker import ModelWorker, OutputFrame

DRAIN_SECONDS = 120.0  # how long the pipeline's end-of-stream drain may take (a video model may hold several chunks)


class LocalOutput(Protocol):
    """Where a local session's processed frames go (the local sinks); called on the event loop, never blocks."""

    def push_batch(self, frames: Sequence[VideoFrame]) -> None: ...

    def stop(self) -> None: ...


class LocalPeer:
    """The peer of a local session: this process. Connected until the session closes.

    It answers the few things a session asks of its peer connection: its
    state, event registration (a local peer sends no events), its
    transceivers (none: the sweeper's packet watch reads "no news", so a
    local session is never taken for a vanished peer) and closing.
    """

    def __init__(self) -> None:
        self.connectionState = "connected"

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Callable[..., Any] | None:
        return handler

    def getTransceivers(self) -> list[Any]:  # noqa: N802 - the RTCPeerConnection name the session reads
        return []

    async def close(self) -> None:
        self.connectionState = "closed"


class NoticeChannel:
    """The terminal as a local session's control channel: errors the client would be sent are shown instead."""

    def __init__(self, show: Callable[[str], None]) -> None:
        self._show = show

    def send_error(self, text: str) -> None:
        self._show(text)

    def send(self, message: Mapping[str, Any]) -> None:
        """Other messages (stats, the close reason) are the command's own to report."""

    def stop(self) -> None:
        """Nothing to close: the terminal outlives the session."""


class LocalSession(Session):
    """One stream captured and shown by this process (see module docstring)."""

    def __init__(
        self,
        session_id: str,
        worker: ModelWorker,
        state: Any,
        config: ServerConfig,
        metrics: ServerMetrics,
        on_closed: Callable[[Session], None],
        slo: Slo | None = None,
        caps: ServerCaps | None = None,
        *,
        secret: str,
        output: LocalOutput | None,
        notice: Callable[[str], None],
    ) -> None:
        super().__init__(session_id, "local", LocalPeer(), worker, state, config, metrics, on_closed, slo, caps, secret=secret)  # type: ignore[arg-type]
        self.connected = True
        self._connected.set()
        self.output = output  # type: ignore[assignment]  # a LocalOutput stands where a peer's OutputTrack would
        self.control = NoticeChannel(notice)  # type: ignore[assignment]
        self.finished = asyncio.Event()
        self.drained: bool | None = None  # None while the input runs; then whether every real frame came out
        self._last_real_pts: int | None = None

    # ------------------------------------------------------------------ input
    def start_input(self, track: CaptureTrack | None) -> None:  # type: ignore[override]
        if track is None:
            raise ValueError("a local session needs a capture track")
        self._spawn(self._run_input(track))

    async def _run_input(self, track: CaptureTrack) -> None:
        await self._pump(track)  # the same pump as a peer's track, until the capture ends
        last = track.last_frame
        if not self.closed and last is not None and last.pts is not None:
            self.drained = await self._drain(last)
        self.finished.set()

    async def _drain(self, last: VideoFrame) -> bool:
        """Complete the last call with copies of the last frame, then the pipeline's flush; True when it ran to the end."""
        self._last_real_pts = last.pts
        period = self._frame_period(last)
        pts = last.pts
        while 0 < self.slot.waiting() < self.slot.capacity and not self.closed:
            pts += period
            self._frame_index += 1
            self.slot.put(last, FrameTag(pts, last.time_base, time.monotonic(), self._frame_index))
        self.worker.notify()
        try:
            return bool(await asyncio.wait_for(asyncio.wrap_future(self.worker.flush(self)), DRAIN_SECONDS))
        except (asyncio.TimeoutError, RuntimeError):
            return False

    def _frame_period(self, last: VideoFrame) -> int:
        """One frame interval in the input's time base, from the fps cap (padding needs only distinct, later times)."""
        if last.time_base is None or last.time_base <= 0:
            return 1
        return max(1, round(1 / (self._config.max_fps * last.time_base)))

    # ----------------------------------------------------------------- output
    def deliver(self, frames: list[OutputFrame], produced_at: float) -> None:
        """Like every session's, less the frames that depict padding."""
        if self._last_real_pts is not None:
            frames = [output for output in frames if not self._is_padding(output)]
        super().deliver(frames, produced_at)

    def _is_padding(self, output: OutputFrame) -> bool:
        tag = output.tag
        return tag is not None and tag.pts is not None and self._last_real_pts is not None and tag.pts > self._last_real_pts

    async def close(self, reason: str) -> None:
        await super().close(reason)
        self.finished.set()
