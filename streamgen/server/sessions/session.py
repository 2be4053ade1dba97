"""``Session``: one publishing peer, its pipeline state, its viewers and its counters.

A session owns everything of one stream and nothing shared: the pipeline
state (latents, noise, prompt embeddings, caches), the input slot, the
output tracks and the statistics. It lives on the event loop; the worker
thread reads its slot and state and hands results back through
:meth:`deliver` (scheduled on the loop) and :meth:`fail`.

The input pump reads decoded frames from the peer's video track as fast as
they come, so aiortc's unbounded track queue never grows: each frame is
checked against the resolution limit and the fps cap, then put in the
latest-frame slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ...errors import InputError
from ...pipeline.contract import StreamShape
from ...sched import Slo
from ..config import ServerConfig
from ..webrtc.control import ControlChannel, ControlHandlers
from ..webrtc.fps_cap import FpsCap
from ..http.http_errors import ForbiddenError
from ..webrtc.liveness import PacketWatch
from ..metrics import ServerMetrics, SessionSample
from ..worker.pipelines import parse_update
from .generation_clock import GenerationClock
from .slot import FrameTag, LatestFrames
from .stats import SessionStats
from ..worker.step_shape import ServerCaps
from ..webrtc.tracks import OutputTrack
from ..worker.model_worker import ModelWorker, OutputFrame

logger = logging.getLogger(__name__)

ERROR_REPEAT_SECONDS = 5.0


@dataclass
class Viewer:
    """A WHEP client watching a session's output on its own peer connection."""

    viewer_id: str
    pc: RTCPeerConnection
    track: OutputTrack

    def __post_init__(self) -> None:
        self.liveness = PacketWatch(self.pc)


class Session:
    """One stream (see module docstring)."""

    def __init__(
        self,
        session_id: str,
        kind: str,
        pc: RTCPeerConnection,
        worker: ModelWorker,
        state: Any,
        config: ServerConfig,
        metrics: ServerMetrics,
        on_closed: Callable[["Session"], None],
        slo: Slo | None = None,
        caps: ServerCaps | None = None,
        *,
        secret: str,
    ) -> None:
        self.id = session_id
        self.secret = secret  # only for its creator: never described, listed or logged
        self.kind = kind
        self.pc = pc
        self.worker = worker
        self.state = state
        self.slot = LatestFrames(worker.pipeline.frames_per_step(state))
        self.stats = SessionStats()
        self.output: OutputTrack | None = None
        self.viewers: dict[str, Viewer] = {}
        self.viewers_joining = 0  # WHEP viewers whose answer is being made: they count against the cap already
        self.control: ControlChannel | None = None
        self.closed = False
        self.connected = False
        self._connected = asyncio.Event()
        self.clock: GenerationClock | None = None  # a session that takes no input (txt2vid): what paces it
        self.client: str | None = None  # the address that opened it (unconnected sessions are limited per client)
        self.close_reason: str | None = None
        self.last_activity = self.stats.created_at
        self._config = config
        self._metrics = metrics
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._fps_cap = FpsCap(config.max_fps)
        self._frame_index = 0
        self._last_output_time: Any = None
        self._tasks: set[asyncio.Task] = set()
        self._last_error_sent: dict[str, float] = {}
        self.slo = slo or Slo()
        self._caps = caps
        self._update_lock = asyncio.Lock()
        self.liveness = PacketWatch(pc)
        pc.on("connectionstatechange", self._on_connection_state)
        pc.on("datachannel", self._on_datachannel)

    # ---------------------------------------------------------------- wiring
    def start_input(self, track: MediaStreamTrack | None) -> None:
        """Start reading the peer's video (WebRTC/WHIP sessions; viewers have none)."""
        if track is not None:
            self._spawn(self._pump(track))

    def start_generating(self, period_s: float) -> None:
        """Pace a session that takes no input (txt2vid): a tick per chunk period from the moment its peer connects."""
        self._spawn(self._generate(period_s))

    async def _generate(self, period_s: float) -> None:
        await self._connected.wait()
        clock = self.clock = GenerationClock(period_s, time.monotonic())
        while not self.closed:
            now = time.monotonic()
            if clock.due(now):
                self.last_activity = now  # never idle: a generated stream's viewer sends nothing by design
                tag = clock.tick(now, self.slot.waiting())
                if tag is not None:
                    self.slot.put(None, tag)
                    self.worker.notify()
            await asyncio.sleep(clock.sleep_for(time.monotonic()))

    def add_viewer(self, viewer: Viewer) -> None:
        """Attach a WHEP viewer; one that has not connected within the connect timeout is dropped (it holds a slot)."""
        self.viewers[viewer.viewer_id] = viewer

        async def on_state() -> None:
            if viewer.pc.connectionState in ("failed", "closed"):
                await self.remove_viewer(viewer.viewer_id)

        async def reap_if_never_connected() -> None:
            await asyncio.sleep(self._config.connect_timeout)
            if self.viewers.get(viewer.viewer_id) is viewer and viewer.pc.connectionState != "connected":
                logger.info("session %s: viewer %s did not connect within %g s; dropped", self.id, viewer.viewer_id, self._config.connect_timeout)
                await self.remove_viewer(viewer.viewer_id)

        viewer.pc.on("connectionstatechange", on_state)
        self._spawn(reap_if_never_connected())

    async def remove_viewer(self, viewer_id: str) -> bool:
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None:
            return False
        viewer.track.stop()
        await viewer.pc.close()
        return True

    # ------------------------------------------------------------- parameters
    async def update_params(self, changes: Mapping[str, Any], *, within_admission: bool = False) -> Any:
        """Validate now, encode new prompts beside the model step, then queue the change for the next step.

        Updates of one session are applied in the order they came (a lock),
        so a slow prompt encoding cannot let an older change overwrite a newer
        one. The answer (the parameters in force after the change) comes once
        the change is queued: nothing the client was told was accepted is lost.
        ``within_admission``: refuse a change that would make a step cost the
        model more than the session was admitted for (a stream key's follow
        secret steers a session it did not open).
        """
        self.last_activity = time.monotonic()
        async with self._update_lock:
            if self.state is None:
                raise InputError("the session has ended")
            pipeline = self.worker.pipeline
            # validation decodes and hashes reference images (base64, megabytes): off the event loop
            parsed = await asyncio.to_thread(parse_update, pipeline, self.state, changes, self._caps)
            if self.state is None:
                raise InputError("the session has ended")
            shape = pipeline.shape_with(self.state, parsed)
            if within_admission:
                self._check_within_admission(shape)
            self.worker.admit_change(self, shape)  # admitted like an offer: it may not break the others' deadlines
            await asyncio.wrap_future(self.worker.submit(pipeline.prepare_update, parsed))
            if self.state is None:
                raise InputError("the session has ended")
            return pipeline.update(self.state, changes)

    def _check_within_admission(self, shape: StreamShape) -> None:
        reservation = self.worker.admitted(self)
        if reservation is None:
            return
        asked, granted = shape.model_work, reservation.shape.model_work
        if asked > granted:
            raise ForbiddenError(
                f"this change would make each step of the stream cost the model {asked:g} rows (a ControlNet's rows count half), more than the {granted:g} its session "
                "was admitted for; the stream's follow secret may only steer within that (the publisher's session secret or the "
                "admin token may change it further)"
            )

    def _touch(self) -> None:
        self.last_activity = time.monotonic()

    async def reset(self) -> None:
        """Forget the stream's history before its next step (never races a step on this state)."""
        await asyncio.wrap_future(self.worker.request_reset(self))

    async def control_preview(self, index: int, size: int = 256) -> bytes | None:
        """JPEG of the control image ControlNet ``index`` read at the latest step (at most ``size`` pixels a side), or None before one."""
        worker = self.worker
        if not worker.capabilities.steerable or self.state is None:
            raise InputError("this session's model takes no ControlNets")
        image = worker.pipeline.control_preview(self.state, index)
        if image is None:
            return None
        return await asyncio.to_thread(preview_jpeg, image, size)

    @property
    def params(self) -> dict[str, Any]:
        return self.worker.pipeline.params_json(self.state) if self.state is not None else {}

    # ------------------------------------------------------------------ input
    async def _pump(self, track: MediaStreamTrack) -> None:
        while not self.closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self._accept(frame)

    def _accept(self, frame: Any) -> None:
        now = time.monotonic()
        self.last_activity = now
        self.stats.on_input(now)
        if frame.width > self._config.max_input_width or frame.height > self._config.max_input_height:
            self.stats.frames_rejected += 1
            self.notify_error(
                "input-size",
                f"input frames of {frame.width}x{frame.height} are over this server's limit of "
                f"{self._config.max_input_width}x{self._config.max_input_height}; they are dropped",
            )
            return
        frame_time = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base is not None else now
        if not self._fps_cap.admit(frame_time):
            self.stats.frames_dropped += 1
            return
        self._frame_index += 1
        if self.slot.put(frame, FrameTag(frame.pts, frame.time_base, now, self._frame_index)):
            self.stats.frames_dropped += 1
        self.worker.notify()

    # ----------------------------------------------------- worker → event loop
    def consumer_count(self) -> int:
        return (1 if self.output is not None else 0) + len(self.viewers)

    def fallback_pts(self) -> int:
        return int((time.monotonic() - self.stats.created_at) * 90000)

    def deliver(self, frames: list[OutputFrame], produced_at: float) -> None:
        """Hand processed frames to every consumer (event loop; scheduled by the worker)."""
        if self.closed:
            return
        frames = [output for output in frames if self._advances_time(output)]
        if not frames:
            return
        now = time.monotonic()
        consumers = ([self.output] if self.output is not None else []) + [v.track for v in self.viewers.values()]
        for output in frames:
            first = self.stats.first_output_at is None
            latency = now - output.tag.received_at if output.tag is not None else None
            self.stats.on_output(now, latency, output.tag.pts if output.tag is not None else None, output.skipped)
            if latency is not None:
                self._metrics.frame_latency.observe(latency)
                if latency > self.slo.deadline_s:
                    self.stats.deadline_misses += 1
                    self._metrics.count("deadline_misses")
            if first and self.stats.time_to_first_frame is not None:
                self._metrics.time_to_first_frame.observe(self.stats.time_to_first_frame)
        for i, track in enumerate(consumers):  # a viewer that joined mid-step has no copies yet: it gets the next step
            track.push_batch([output.copies[i] for output in frames if i < len(output.copies)])

    def _advances_time(self, output: OutputFrame) -> bool:
        """Output timestamps must strictly increase (encoders and receivers rely on it).

        A stream-batch image pipeline fills its buffer from the first frame, so
        its first outputs depict that same input frame again; such a repeat
        carries a timestamp already sent and is left out.
        """
        tag = output.tag
        if tag is None or tag.pts is None or tag.time_base is None:
            return True
        at = tag.pts * tag.time_base
        if self._last_output_time is not None and at <= self._last_output_time:
            self.stats.frames_repeated += 1
            return False
        self._last_output_time = at
        return True

    def fail(self, error: BaseException, is_user_error: bool) -> None:
        """A step failed for this session (worker thread)."""
        try:
            self._loop.call_soon_threadsafe(self._on_failure, error, is_user_error)
        except RuntimeError:
            pass

    def _on_failure(self, error: BaseException, is_user_error: bool) -> None:
        if getattr(error, "ends_stream", False):  # e.g. a pipeline stage died: the stream cannot go on, and says why
            logger.warning("session %s: %s", self.id, error)
            self.notify_error("stream", str(error))
            self._spawn(self.close(str(error)))
        elif is_user_error:
            logger.info("session %s: %s", self.id, error)
            self.notify_error("step", str(error))
        else:
            self.notify_error("internal", "the model failed on this stream (a server bug, logged); the session is closing")
            self._spawn(self.close("model error"))

    def notify_error(self, key: str, text: str) -> None:
        """Tell the client about a problem on the control channel, at most every few seconds per kind."""
        now = time.monotonic()
        if now - self._last_error_sent.get(key, -1e9) < ERROR_REPEAT_SECONDS:
            return
        self._last_error_sent[key] = now
        if self.control is not None:
            self.control.send_error(text)

    # ------------------------------------------------------------ peer events
    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            if not self.connected:
                self.last_activity = time.monotonic()  # the idle clock starts when the peer is there
            self.connected = True
            self._connected.set()
        elif state in ("failed", "closed") and not self.closed:
            await self.close("connection failed" if state == "failed" else "peer closed the connection")

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != "control" or self.control is not None:
            return
        handlers = ControlHandlers(update_params=self.update_params, reset=self.reset, stats=self.stats.snapshot, touch=self._touch)
        self.control = ControlChannel(channel, handlers, self._config.stats_interval)

    # ------------------------------------------------------------------ state
    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "connection": self.pc.connectionState,
            "params": self.params,
            "stats": self.stats.snapshot(),
            "viewers": sorted(self.viewers),
            "slo": {"deadline_ms": round(self.slo.deadline_s * 1000, 1), "fps": self.slo.target_fps, "min_fps": self.slo.min_fps},
            **({"generation": self._describe_generation()} if self.clock is not None else {}),
        }

    def _describe_generation(self) -> dict[str, Any]:
        """How a session without input is paced: its chunk period, chunks asked for, and ticks skipped while the model was behind."""
        clock = self.clock
        assert clock is not None
        return {"chunk_period_ms": round(clock.period_s * 1000, 1), "chunks_requested": clock.ticks, "chunks_skipped": clock.skipped}

    def sample(self) -> SessionSample:
        now = time.monotonic()
        return SessionSample(
            session_id=self.id,
            kind=self.kind,
            fps_in=round(self.stats.input_rate.per_second(now), 3),
            fps_out=round(self.stats.output_rate.per_second(now), 3),
            frames_in=self.stats.frames_received,
            frames_out=self.stats.frames_output,
            dropped=self.stats.frames_dropped,
            skipped=self.stats.frames_skipped,
            ttff=self.stats.time_to_first_frame,
            viewers=len(self.viewers),
            deadline_misses=self.stats.deadline_misses,
            deadline_ms=self.slo.deadline_s * 1000,
            target_fps=self.worker.admitted_fps(self),
        )

    async def close(self, reason: str) -> None:
        """End the session: stop stepping it, close its peers, free its state. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        logger.info("session %s closed: %s", self.id, reason)
        self.worker.detach(self)
        self.slot.clear()
        self._on_closed(self)
        if self.control is not None:
            self.control.send({"type": "closed", "reason": reason})
            self.control.stop()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if self.output is not None:
            self.output.stop()
        for viewer_id in list(self.viewers):
            await self.remove_viewer(viewer_id)
        await self.pc.close()
        self.state = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def preview_jpeg(image: Any, size: int) -> bytes:
    """(3, H, W) in [0, 1] → a JPEG at most ``size`` pixels a side (runs in a thread: never on the event loop)."""
    import io  # noqa: PLC0415

    import torch  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(pixels)
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()
