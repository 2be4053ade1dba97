"""How much model work a session's step is, and the per-server caps on it.

The scheduler reasons in *rows* within a *shape bucket* (see
:mod:`streamgen.sched.latency`). This module is the one place that knows
how a session's settings turn into those numbers:

- image streams: a stream-batch step carries ``slots × frames per call``
  UNet rows (twice that with ``cfg_type="full"``), in one pass; sequential
  denoising carries ``frames per call`` rows in each of ``slots`` passes;
- video streams: a step that completes a chunk carries ``steps`` DiT rows in
  one pass (stream batch) or one row in each of ``steps`` passes
  (sequential); a step that only buffers a frame carries none;
- identity: one row.

Caps bound what one session may ask for at all (resolution, frames per call,
denoising steps), derived from the model's own size so no request can ask
for a step that takes the server down; ``/health`` reports them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..runtime.engine_limits import engine_limits_of
from .pipelines import frames_per_step, parse_image_settings

CAP_SIZE_FACTOR = 2  # at most twice the model's native width and height
MAX_IMAGE_FRAMES_PER_CALL = 4
MAX_IMAGE_STEPS = 8
MAX_VIDEO_STEPS = 4


@dataclass(frozen=True)
class StepShape:
    """A step's work for the scheduler: ``rows`` rows in each of ``passes`` passes of bucket ``bucket``."""

    bucket: Hashable
    rows: int
    passes: int = 1


@dataclass(frozen=True)
class ServerCaps:
    """The most one session may ask for on this server."""

    max_width: int
    max_height: int
    max_frames_per_call: int
    max_steps: int

    @classmethod
    def for_model(cls, native_size: tuple[int, int], kind: str, max_width: int | None = None, max_height: int | None = None) -> ServerCaps:
        width, height = native_size
        return cls(
            max_width=max_width or width * CAP_SIZE_FACTOR,
            max_height=max_height or height * CAP_SIZE_FACTOR,
            max_frames_per_call=MAX_IMAGE_FRAMES_PER_CALL if kind == "image" else 1,
            max_steps=MAX_IMAGE_STEPS if kind == "image" else MAX_VIDEO_STEPS,
        )

    @classmethod
    def for_pipeline(cls, pipeline: Any, kind: str, max_width: int | None = None, max_height: int | None = None) -> ServerCaps:
        """Caps for a loaded pipeline; the identity model (no model work) takes any size up to 4K."""
        if getattr(pipeline, "name", None) == "identity":
            return cls(max_width or 3840, max_height or 2160, MAX_IMAGE_FRAMES_PER_CALL, MAX_IMAGE_STEPS)
        return cls.for_model(native_size(pipeline), kind, max_width, max_height)

    def check(self, width: int, height: int, frames_per_call: int, steps: int) -> None:
        """ConfigError naming the first setting over a cap."""
        if width > self.max_width or height > self.max_height:
            raise ConfigError(f"{width}x{height} is over this server's limit of {self.max_width}x{self.max_height}")
        if frames_per_call > self.max_frames_per_call:
            raise ConfigError(f"frame_buffer_size {frames_per_call} is over this server's limit of {self.max_frames_per_call}")
        if steps > self.max_steps:
            raise ConfigError(f"{steps} denoising steps are over this server's limit of {self.max_steps}")

    def to_json(self) -> dict[str, int]:
        return {
            "max_width": self.max_width,
            "max_height": self.max_height,
            "max_frames_per_call": self.max_frames_per_call,
            "max_steps": self.max_steps,
        }


def bucket_work(bucket: Hashable) -> float:
    """Work per row of a bucket, in pixels (× frames per chunk for video): scales unmeasured buckets."""
    if isinstance(bucket, tuple) and len(bucket) >= 3:
        frames = bucket[3] if len(bucket) > 3 else 1
        return float(bucket[1] * bucket[2] * frames)
    return 1.0


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class StreamShape:
    """What a session's settings ask of the model, known before its state is built."""

    kind: str
    width: int
    height: int
    frames_per_call: int
    steps: int
    stream_batch: bool
    cfg_rows: int = 1  # rows per frame per step: 2 with full CFG
    chunk_frames: int = 1

    @property
    def bucket(self) -> Hashable:
        if self.kind == "video":
            return ("video", self.width, self.height, self.chunk_frames)
        return (self.kind, self.width, self.height)

    def unit(self) -> StepShape:
        """The work of one step that runs the model for this session."""
        if self.kind == "identity":
            return StepShape(self.bucket, 1)
        per_step = self.frames_per_call * self.cfg_rows
        if self.stream_batch:
            return StepShape(self.bucket, per_step * self.steps, 1)
        return StepShape(self.bucket, per_step, self.steps)


def shape_of_settings(pipeline: Any, settings: Mapping[str, Any], kind: str) -> StreamShape:
    """The shape of a session with (already validated) ``settings`` on ``pipeline``."""
    if kind == "video":
        config, params = pipeline.validate_settings(settings)
        return StreamShape(
            "video", config.width, config.height, 1, params.num_inference_steps, config.use_denoising_batch, 1, config.chunk_frames
        )
    config, params = parse_image_settings(pipeline, settings)
    config = config.resolved(native_size(pipeline))
    full_cfg = params.cfg_type == "full" and params.guidance_scale != 1.0
    model_kind = "identity" if getattr(pipeline, "name", None) == "identity" else "image"
    return StreamShape(
        model_kind,
        config.width,
        config.height,
        config.frame_buffer_size,
        len(params.resolved_t_index_list()),
        config.use_denoising_batch,
        2 if full_cfg else 1,
    )


def check_engine_limits(pipeline: Any, stream: StreamShape) -> None:
    """ConfigError when the pipeline's compiled engines cannot run a stream of this shape (size or rows), with their range."""
    limits = engine_limits_of(getattr(pipeline, "model", None))
    if limits is not None and stream.kind == "image":
        limits.check_stream(stream.width, stream.height, stream.unit().rows)


def engine_row_limit(pipeline: Any) -> int | None:
    """The most rows one step may carry on the pipeline's engines (None: no limit): the scheduler's row limit."""
    limits = engine_limits_of(getattr(pipeline, "model", None))
    return None if limits is None else limits.max_rows


def native_size(pipeline: Any) -> tuple[int, int]:
    model = getattr(pipeline, "model", None)
    size = getattr(model, "default_size", None)
    if isinstance(size, tuple) and len(size) == 2:
        return size
    return (256, 256)


# --------------------------------------------------------------------- states
def shape_of_state(state: Any, settings_shape: StreamShape) -> StreamShape:
    """A live state's shape: its steps and CFG rows may have changed since creation (live updates)."""
    if settings_shape.kind == "image" and hasattr(state, "schedule"):
        params = state.params
        full_cfg = params.cfg_type == "full" and params.guidance_scale != 1.0
        return StreamShape(
            "image", state.config.width, state.config.height, state.frames_per_call, state.num_slots,
            state.config.use_denoising_batch, 2 if full_cfg else 1,
        )
    if settings_shape.kind == "video" and hasattr(state, "num_steps"):
        config = state.config
        return StreamShape("video", config.width, config.height, 1, state.num_steps, config.use_denoising_batch, 1, config.chunk_frames)
    return settings_shape


def shape_with_params(state: Any, params: Any, settings_shape: StreamShape) -> StreamShape:
    """The shape a live state would have with ``params`` in force (a live update's effect on the model's work)."""
    config = getattr(state, "config", None)
    if settings_shape.kind == "image" and config is not None and hasattr(params, "resolved_t_index_list"):
        full_cfg = params.cfg_type == "full" and params.guidance_scale != 1.0
        return StreamShape(
            "image", config.width, config.height, frames_per_step(state), len(params.resolved_t_index_list()),
            config.use_denoising_batch, 2 if full_cfg else 1,
        )
    if settings_shape.kind == "video" and config is not None and hasattr(params, "num_inference_steps"):
        return StreamShape("video", config.width, config.height, 1, params.num_inference_steps, config.use_denoising_batch, 1, config.chunk_frames)
    return settings_shape


def work_of(step: StepShape) -> int:
    """Rows over all passes: what a step costs the model, in the scheduler's unit."""
    return step.rows * step.passes


def step_shape_of_state(state: Any, new_frames: int, settings_shape: StreamShape) -> StepShape:
    """The work of the next step of a live state fed ``new_frames`` frames.

    Video: only a step that completes a chunk runs the model; in stream batch
    its rows are the chunks in flight plus the new one. Image: a stream
    whose buffer is still empty prefills it slot by slot (one pass per slot).
    """
    shape = shape_of_state(state, settings_shape)
    unit = shape.unit()
    if shape.kind == "video":
        pending = len(getattr(state, "pending_frames", ()))
        needed = getattr(state, "frames_needed", 1)
        if pending + new_frames < needed:
            return StepShape(unit.bucket, 0, 1)
        if getattr(state, "ring", None) is not None:  # pipeline stages: the chunk's every step is handed over now
            return StepShape(unit.bucket, shape.steps, 1)
        if shape.stream_batch:
            in_flight = len(getattr(state, "in_flight", ()))
            return StepShape(unit.bucket, min(in_flight + 1, shape.steps), 1)
        return unit
    if shape.kind == "image" and shape.stream_batch and getattr(state, "buffer", True) is None:
        return StepShape(unit.bucket, shape.frames_per_call * shape.cfg_rows, shape.steps)
    return unit
