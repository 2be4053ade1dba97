"""``ModelWorker``: the one thread that runs a model replica, never the event loop.

The worker sleeps until some session's input slot holds a step's worth of
frames (or a job arrives), then steps ALL such sessions in one batched
``pipeline.step`` call. Around the step it converts frames in its own thread:
decoded ``av.VideoFrame`` → scaled/cropped RGB array → uint8 tensor, and the
output tensor → one ``av.VideoFrame`` per consumer, carrying the input frame's
pts and time base. Results go back to the event loop with
``call_soon_threadsafe``.

Jobs (``submit``) run between steps on the same thread: creating and
resetting per-session states touches the model (prompt encoding, compiled
engines), which must not race a step.

When a batched step raises, the sessions are stepped one by one to find the
culprit; only that session is told (a user error) or closed (a bug), and the
others keep streaming.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
import torch
from av import VideoFrame

from ..errors import InputError, StreamgenError
from .metrics import ServerMetrics
from .pipelines import stream_size, takes_no_frames
from .slot import FrameTag, LatestFrames

logger = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)


@dataclass(frozen=True)
class OutputFrame:
    """One processed frame, as one ``VideoFrame`` per consumer, with the tag of its input."""

    copies: list[VideoFrame]
    tag: FrameTag | None
    skipped: bool


class WorkerClient(Protocol):
    """What the worker needs from a session."""

    slot: LatestFrames
    state: Any
    closed: bool

    def consumer_count(self) -> int: ...

    def fallback_pts(self) -> int: ...

    def deliver(self, frames: list[OutputFrame], produced_at: float) -> None: ...

    def fail(self, error: BaseException, is_user_error: bool) -> None: ...


class ModelWorker:
    """Runs one pipeline replica in a dedicated thread (see module docstring)."""

    def __init__(self, pipeline: Any, name: str, metrics: ServerMetrics) -> None:
        self.pipeline = pipeline
        self.name = name
        self._metrics = metrics
        self._cond = threading.Condition()
        self._clients: list[WorkerClient] = []
        self._jobs: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._stopping = False
        self._loop = None
        self._thread = threading.Thread(target=self._run, name=f"streamgen-worker-{name}", daemon=True)

    # ------------------------------------------------------------ event loop side
    def start(self, loop) -> None:
        self._loop = loop
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish (it completes the step in progress); blocks until it has."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def load(self) -> int:
        with self._cond:
            return len(self._clients)

    def attach(self, client: WorkerClient) -> None:
        with self._cond:
            self._clients.append(client)

    def detach(self, client: WorkerClient) -> None:
        with self._cond:
            if client in self._clients:
                self._clients.remove(client)

    def notify(self) -> None:
        """A slot has new frames."""
        with self._cond:
            self._cond.notify()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` on the worker thread between steps."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                future.set_exception(RuntimeError("the model worker has stopped"))
                return future
            self._jobs.append((lambda: fn(*args), future))
            self._cond.notify()
        return future

    # --------------------------------------------------------------- worker thread
    def _run(self) -> None:
        while True:
            try:
                if not self._cycle():
                    return
            except Exception:  # noqa: BLE001 - a bug must not stop every session's stream
                logger.exception("model worker %s: a cycle failed; carrying on", self.name)

    def _cycle(self) -> bool:
        """Wait for work, do it; False once stopping. (A method, so nothing outlives a cycle in locals.)"""
        with self._cond:
            self._cond.wait_for(self._has_work, timeout=1.0)
            jobs = list(self._jobs)
            self._jobs.clear()
            if self._stopping:
                for _, future in jobs:
                    future.set_exception(RuntimeError("the model worker has stopped"))
                return False
            ready = [c for c in self._clients if not c.closed and c.slot.ready()]
        for job, future in jobs:
            self._run_job(job, future)
        if ready:
            self._step_sessions(ready)
        return True

    def _has_work(self) -> bool:
        return self._stopping or bool(self._jobs) or any(not c.closed and c.slot.ready() for c in self._clients)

    @staticmethod
    def _run_job(job: Callable[[], Any], future: concurrent.futures.Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(job())
        except BaseException as error:  # handed to the awaiting coroutine, which decides how to report it
            future.set_exception(error)

    def _step_sessions(self, ready: list[WorkerClient]) -> None:
        batch: list[tuple[WorkerClient, Any, torch.Tensor | None, tuple[FrameTag, ...]]] = []
        for client in ready:
            items, state = client.slot.take(), client.state
            if not items or client.closed or state is None:
                continue
            try:
                frames = None if takes_no_frames(state) else _frames_to_tensor([f for f, _ in items], stream_size(state))
            except StreamgenError as error:
                client.fail(error, True)
                continue
            except Exception as error:  # noqa: BLE001 - a frame PyAV cannot convert came from the client
                client.fail(InputError(f"an input frame could not be converted ({error}); it was dropped"), True)
                continue
            batch.append((client, state, frames, tuple(tag for _, tag in items)))
        if not batch:
            return
        started = time.perf_counter()
        results = self._step_isolating_failures(batch)
        self._metrics.observe_step(self.name, time.perf_counter() - started, len(batch))
        for (client, _, _, _), output in zip(batch, results):
            if output is None or client.closed:
                continue
            try:
                frames = self._to_video_frames(client, output)
            except Exception as error:  # noqa: BLE001 - the pipeline returned something unusable: a bug
                self._fail(client, error)
                continue
            if frames:
                self._deliver(client, frames)

    def _step_isolating_failures(self, batch: list) -> list[Any]:
        try:
            return list(self.pipeline.step([s for _, s, _, _ in batch], [f for _, _, f, _ in batch], [t for _, _, _, t in batch]))
        except Exception as error:  # noqa: BLE001 - find which session it belongs to
            if len(batch) == 1:
                self._fail(batch[0][0], error)
                return [None]
        results: list[Any] = []
        for client, state, frames, tags in batch:
            try:
                results.append(self.pipeline.step([state], [frames], [tags])[0])
            except Exception as error:  # noqa: BLE001
                self._fail(client, error)
                results.append(None)
        return results

    @staticmethod
    def _fail(client: WorkerClient, error: Exception) -> None:
        user_error = isinstance(error, StreamgenError)
        if not user_error:
            logger.exception("model step failed for a session; closing it", exc_info=error)
        client.fail(error, user_error)

    def _to_video_frames(self, client: WorkerClient, output: Any) -> list[OutputFrame]:
        tensor = output.frames
        if tensor is None or tensor.shape[0] == 0:
            return []
        copies = client.consumer_count()  # 0 for a WHIP session nobody watches: count, convert nothing
        array = tensor.detach().to("cpu").numpy() if copies else None
        tags = tuple(output.tags) if output.tags else ()
        frames = []
        for j in range(tensor.shape[0]):
            tag = tags[j] if j < len(tags) and isinstance(tags[j], FrameTag) else None
            pts, time_base = (tag.pts, tag.time_base) if tag is not None and tag.pts is not None else (client.fallback_pts(), VIDEO_TIME_BASE)
            made = []
            for _ in range(copies):
                frame = VideoFrame.from_ndarray(np.ascontiguousarray(array[j]), format="rgb24")
                frame.pts, frame.time_base = pts, time_base
                made.append(frame)
            frames.append(OutputFrame(made, tag, bool(output.skipped)))
        return frames

    def _deliver(self, client: WorkerClient, frames: list[OutputFrame]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(client.deliver, frames, time.monotonic())
        except RuntimeError:  # the loop shut down between the check and the call
            pass


def _frames_to_tensor(frames: list[VideoFrame], size: tuple[int, int] | None) -> torch.Tensor:
    """Decoded frames → (k, H, W, 3) uint8, scaled to cover ``size`` and centre-cropped."""
    arrays = [_frame_to_rgb(frame, size) for frame in frames]
    if len({a.shape for a in arrays}) != 1:
        raise InputError("the frames of one step changed size; dropping them")
    return torch.from_numpy(np.stack(arrays))


def _frame_to_rgb(frame: VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    width, height = size
    scale = max(width / frame.width, height / frame.height)
    cover_w = max(width, math.ceil(frame.width * scale - 1e-6))
    cover_h = max(height, math.ceil(frame.height * scale - 1e-6))
    shrinking = cover_w < frame.width or cover_h < frame.height
    rgb = frame.reformat(width=cover_w, height=cover_h, format="rgb24", interpolation="AREA" if shrinking else "BILINEAR").to_ndarray()
    top, left = (cover_h - height) // 2, (cover_w - width) // 2
    return np.ascontiguousarray(rgb[top : top + height, left : left + width])
