"""The causal video stream over pipeline stages: each chunk moves on the moment its input exists.

:class:`VideoPipeline` runs a step as rounds of DiT forwards and waits for
each. Over pipeline stages (:mod:`streamgen.parallel`) that would leave all
but one rank idle most of the time: a forward goes rank 0 → … → S−1 and
the next cannot start before it returns. :class:`StagedVideoPipeline`
instead hands every (chunk, step) to the stages as a row of its own:

- a step encodes the chunks its frames complete (on rank 0, as before) and
  submits each chunk's first denoising step at once, then returns the
  frames that have come back since the last call; it does not wait for
  the stages;
- when a chunk's flow prediction comes back, rank 0 computes the chunk's
  next step (the same ``x0`` / re-noise arithmetic as
  :mod:`~streamgen.pipeline.video_batch`) and submits it on the spot;
- a chunk's last step is decoded on the last rank, which holds the VAE
  decoder and every stream's decode state; its frames come back to rank 0
  and wait, in chunk order, for the next :meth:`step` or :meth:`collect`.

So with a steady input, chunk c+1's first step runs on rank 0 while chunk
c is on rank 1, and all S ranks work at once. Each row attends to its own
stream's cache row, in the order its steps were submitted, so the frames
equal the one-process pipeline's in either mode (the DiT's embedding is
row-invariant, :meth:`~streamgen.models.video.causal_wan.CausalWanTransformer.embed`;
decoding several streams' chunks in one VAE call may round differently in
the last bit, as in one process). The two denoising modes are one dataflow
here; ``use_denoising_batch`` does not change what runs.

Each stream has at most ``depth`` chunks on the stages (default: one per
stage and one more, which keeps every stage busy with a single stream); a
step that would hand over more waits until one of the stream's chunks
finishes, so a source faster than the stages is slowed to their pace
instead of queueing without bound. Streams do not wait for each other:
their rows share micro-batches, which is where a GPU's throughput comes
from.

What a step costs: it returns long before its chunks are done, so its
wall time says nothing about the model's load. :attr:`last_step_service`
is what the worker's latency model learns instead (the stages' service
time of the rows the step handed over: the slowest stage's seconds per
row, times the rows, plus rank 0's encoding), so admission control counts
the stages' throughput.

Undo: a step changes the stream on rank 0 (buffers, encoder cache, noise,
generator) before it hands chunks over, and a checkpoint restores exactly
that. What is on the ring is never undone. A rank's forward or decode that
raises ends the streams whose rows were in that micro-batch
(:class:`~streamgen.parallel.errors.StreamFault` at their next step); a
rank that dies or hangs ends every stream
(:class:`~streamgen.parallel.errors.StageFailure`).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from ..models.video.video_model import VideoModel
from ..parallel.errors import StreamFault
from ..parallel.rows import DecodeRequest, RowTicket, StageRow
from ..models.video.flow import flow_x0
from .contract import StepShape, StreamShape
from .noise import model_timesteps
from .output import PADDING, StepOutput
from .video import VideoPipeline, concat_outputs
from .video_batch import advance_chunk
from .video_checkpoint import VideoCheckpoint, restore_checkpoint, settle_checkpoint, take_checkpoint
from .video_state import ChunkInFlight, VideoState

WAIT_SECONDS = 0.25


@dataclass(eq=False)
class _ChunkOnStages:
    """A chunk handed to the stages, with what its rows need (captured when it entered)."""

    state: VideoState
    chunk: ChunkInFlight
    cache: Any  # the stream's ShardedKVCache when the chunk entered
    decoder: Any  # the stream's ShardedDecoder
    ticket: RowTicket = field(default_factory=RowTicket)
    clean: torch.Tensor | None = None  # its clean latents, from its last flow prediction (kept for a re-cache)


@dataclass(eq=False)
class StreamRing:
    """One stream's chunks on the stages (in entry order) and the frames that came back."""

    chunks: list[_ChunkOnStages] = field(default_factory=list)
    outputs: deque[StepOutput] = field(default_factory=deque)
    failure: str | None = None  # the stages failed on its rows: the stream cannot go on


class StagedVideoPipeline(VideoPipeline):
    """The video pipeline over pipeline stages (see module docstring)."""

    def __init__(self, model: VideoModel, depth: int | None = None) -> None:
        stages = model.stages
        if stages is None:
            raise ConfigError("StagedVideoPipeline runs a model loaded with devices=[...] (pipeline stages)")
        super().__init__(model)
        self.driver = stages.driver
        self.depth = depth or self.driver.stages + 1
        self._flow = threading.Condition()
        self._listeners: list[Callable[[], None]] = []
        self.last_step_service: float | None = None  # see module docstring; None until the stages answered once

    # ---------------------------------------------------------------- contract
    def step_work(self, state: VideoState, new_frames: int) -> StepShape:
        """A step that completes a chunk (every txt2vid step does) hands all of its denoising steps to the stages at once."""
        shape = self.stream_shape(state)
        unit = shape.unit()
        if not state.generates and len(state.pending_frames) + new_frames < state.frames_needed:
            return StepShape(unit.bucket, 0, 1)
        return StepShape(unit.bucket, shape.steps, 1)

    def latency_floor(self, shape: StreamShape) -> float:
        """What filling the ring adds to a frame's latency beyond the step's own service time.

        A chunk's every denoising step travels the whole ring (all stages),
        and the service time the worker learns counts one stage's share: the
        other ``stages − 1`` stage times of each step come on top.
        """
        row_seconds = self.driver.row_seconds
        if row_seconds is None:
            return 0.0
        return (self.driver.stages - 1) * shape.steps * row_seconds

    def describe_stages(self) -> dict[str, Any]:
        return self.model.stages.describe()

    def close_stages(self) -> None:
        self.model.stages.close()

    # ------------------------------------------------------------------ states
    def create_state(self, config=None, params=None) -> VideoState:
        state = super().create_state(config, params)
        state.decoder = self.driver.new_decoder()
        state.ring = StreamRing()
        return state

    def checkpoint(self, state: VideoState) -> VideoCheckpoint:
        with self._flow:  # the result thread counts finished chunks under this lock
            return take_checkpoint(state, track_cache=False)

    def restore(self, state: VideoState, checkpoint: VideoCheckpoint) -> None:
        """As the one-process pipeline, except for what the stages finished meanwhile.

        Nothing on the ring is undone: a chunk whose frames came back between
        the checkpoint and this restore stays counted (the result thread
        counted it, under the flow lock, which this holds too).
        """
        with self._flow:
            processed, kept, done = state.counters.frames_processed, state.kept, state.frames_done
            restore_checkpoint(state, checkpoint)
            # finished chunks stay finished: their counts and kept clean latents (what a re-cache replays) too
            state.counters.frames_processed, state.kept, state.frames_done = processed, kept, done

    def reset(self, state: VideoState) -> None:
        """Forget the stream's history; its chunks on the stages are dropped (their rows and results are discarded)."""
        ring = state.ring
        if ring is not None:
            with self._flow:
                for entry in ring.chunks:
                    entry.ticket.cancelled = True
                ring.chunks.clear()
                ring.outputs.clear()
                self._flow.notify_all()
        super().reset(state)

    # ------------------------------------------------------------------- flow
    def add_output_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` is called (on the stages' result thread) whenever a chunk's frames come back."""
        self._listeners.append(listener)

    def collect(self, states: Sequence[VideoState]) -> list[StepOutput]:
        """The frames that came back for each stream since its last step or collect (no model work)."""
        return [self._take_outputs(state) for state in states]

    def step(self, states, frames, tags=None) -> list[StepOutput]:
        for state in states:
            self._check_stream(state)
        return super().step(states, frames, tags)

    def _check_stream(self, state: VideoState) -> None:
        """Raise :class:`StreamFault` for a stream whose rows the stages failed on (before anything changes)."""
        failure = state.ring.failure if state.ring is not None else None
        if failure is not None:
            raise StreamFault(f"this stream cannot go on: {failure}")

    @torch.inference_mode()
    def flush(self, state: VideoState) -> StepOutput:
        """End of a finite stream: complete a partial chunk, hand it over and wait for every chunk of the stream."""
        self._check_stream(state)
        self._pad_last_chunk(state)
        first = self._run_ready_chunks([state])[0]
        with self._flow:
            while state.ring.chunks:
                self._flow.wait(WAIT_SECONDS)
                self.driver.check()
        self._check_stream(state)
        settle_checkpoint(state)
        return concat_outputs([first, self._take_outputs(state)], self._empty_frames(state)).real()

    def _run_ready_chunks(self, states: Sequence[VideoState]) -> list[StepOutput]:
        """Encode every chunk the buffered frames complete (a checkpoint undoes this), then hand them all over (nothing undoes that)."""
        self.driver.check()
        entered: list[tuple[VideoState, ChunkInFlight]] = []
        encoding = 0.0
        while ready := [s for s in states if len(s.pending_frames) >= s.frames_needed]:
            with _timed(self.device) as work:
                entered += zip(ready, self._enter_chunks(ready))
            self.driver.note_rank0_work(work.result)
            encoding += work.seconds
        row_seconds = self.driver.row_seconds
        rows = sum(chunk.num_steps for _, chunk in entered)
        self.last_step_service = None if row_seconds is None else rows * row_seconds + encoding
        for state, chunk in entered:
            self._hand_over(state, chunk)
        return [self._take_outputs(state) for state in states]

    def _recache(self, state: VideoState, context: Any) -> None:
        """A prompt switch by re-cache over the stages: first the stream's chunks on the ring finish (their frames
        join the window, as in one process's sequential mode), then the window is replayed through every stage
        into a scratch cache and its K/V replace the frames' slots on every rank (a message on the ring)."""
        with self._flow:
            while state.ring.chunks:
                self._flow.wait(WAIT_SECONDS)
                self.driver.check()
        self._check_stream(state)
        super()._recache(state, context)

    def _hand_over(self, state: VideoState, chunk: ChunkInFlight) -> None:
        entry = _ChunkOnStages(state, chunk, state.cache, state.decoder)
        with self._flow:
            while len(state.ring.chunks) >= self.depth:
                self._flow.wait(WAIT_SECONDS)
                self.driver.check()
            state.ring.chunks.append(entry)
        self.driver.submit([self._row(entry)])

    def _row(self, entry: _ChunkOnStages) -> StageRow:
        """The chunk's next step as a stage row (its timestep, its cache row, its context; decoding after the last)."""
        chunk = entry.chunk
        step = chunk.step
        sigma = chunk.sigmas[step : step + 1]
        timesteps = model_timesteps(sigma)[:, None].expand(1, chunk.latents.shape[2])
        last = step == chunk.num_steps - 1
        return StageRow(
            chunk.latents, timesteps, entry.cache.row_view(step, step + 1), chunk.context,
            functools.partial(self._on_result, entry),
            decode=DecodeRequest(entry.decoder.decoder_id, sigma) if last else None,
            on_error=functools.partial(self._on_error, entry),
            on_prediction=functools.partial(self._on_last_prediction, entry) if last else None,
            ticket=entry.ticket,
        )

    def _on_error(self, entry: _ChunkOnStages, reason: str) -> None:
        """On the result thread: the stages failed on one of the stream's rows; its other chunks are dropped."""
        ring = entry.state.ring
        with self._flow:
            if ring.failure is None:
                ring.failure = reason
            for other in ring.chunks:
                other.ticket.cancelled = True
            ring.chunks.clear()
            self._flow.notify_all()
        for listener in self._listeners:
            listener()

    def _on_last_prediction(self, entry: _ChunkOnStages, prediction: torch.Tensor) -> None:
        """On the result thread: a chunk's last flow prediction gives its clean latents (the last rank decodes the same)."""
        chunk = entry.chunk
        entry.clean = flow_x0(chunk.latents, prediction, chunk.sigmas[chunk.step])

    def _on_result(self, entry: _ChunkOnStages, result: torch.Tensor) -> None:
        """On the result thread: a flow prediction moves the chunk to its next step; decoded frames finish it."""
        chunk = entry.chunk
        if chunk.step < chunk.num_steps - 1:
            advance_chunk(chunk, flow_x0(chunk.latents, result, chunk.sigmas[chunk.step]))
            self.driver.submit([self._row(entry)])
            return
        chunk.step = chunk.num_steps
        if result.shape[0] != len(chunk.tags):
            raise RuntimeError(f"decoded {result.shape[0]} frames for a chunk of {len(chunk.tags)} inputs")
        state = entry.state
        with self._flow:
            if entry in state.ring.chunks:
                state.ring.chunks.remove(entry)
                if entry.clean is not None:  # the window a re-cache replays, as the one-process pipeline keeps it
                    chunk.latents = entry.clean
                    self._keep_frames(state, chunk)
                state.counters.frames_processed += sum(t is not PADDING for t in chunk.tags)
                state.ring.outputs.append(StepOutput(result, tags=chunk.tags))
            self._flow.notify_all()
        for listener in self._listeners:
            listener()

    def _take_outputs(self, state: VideoState) -> StepOutput:
        with self._flow:
            parts = list(state.ring.outputs)
            state.ring.outputs.clear()
        return concat_outputs(parts, self._empty_frames(state))


class _timed:
    """Wall seconds of a block on the CPU; CUDA events around it on a GPU (read later, without a sync now)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result: Any = 0.0

    def __enter__(self) -> _timed:
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._began = time.perf_counter()
        return self

    def __exit__(self, *_: Any) -> None:
        if self.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.result = (self._start, end)
        else:
            self.result = time.perf_counter() - self._began

    @property
    def seconds(self) -> float:
        """The time, if known without waiting (a GPU's events may still be pending: 0 then)."""
        if isinstance(self.result, tuple):
            start, end = self.result
            return start.elapsed_time(end) / 1e3 if end.query() else 0.0
        return self.result
