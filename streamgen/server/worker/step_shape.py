"""The per-server caps on what one session may ask of the model, and the server's view of the engines' limits.

What a session costs (its :class:`~streamgen.pipeline.contract.StreamShape`
and the :class:`~streamgen.pipeline.contract.StepShape` of its next step) is
the pipeline's to say, through the contract. This module adds what the
server decides: caps that bound what one session may ask for at all
(resolution, frames per call, denoising steps), derived from the model's own
size so no request can ask for a step that takes the server down (``/health``
reports them), and how unmeasured buckets are scaled.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ...pipeline.contract import StreamShape

CAP_SIZE_FACTOR = 2  # at most twice the model's native width and height
MAX_IMAGE_FRAMES_PER_CALL = 4
MAX_IMAGE_STEPS = 8
MAX_VIDEO_STEPS = 4
IDENTITY_MAX_SIZE = (3840, 2160)  # the identity model does no model work: any size up to 4K


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
        video = kind == "video"
        return cls(
            max_width=max_width or width * CAP_SIZE_FACTOR,
            max_height=max_height or height * CAP_SIZE_FACTOR,
            max_frames_per_call=1 if video else MAX_IMAGE_FRAMES_PER_CALL,
            max_steps=MAX_VIDEO_STEPS if video else MAX_IMAGE_STEPS,
        )

    @classmethod
    def for_pipeline(cls, pipeline: Any, max_width: int | None = None, max_height: int | None = None) -> ServerCaps:
        """Caps for a loaded pipeline (through its contract)."""
        if pipeline.kind == "identity":
            return cls(max_width or IDENTITY_MAX_SIZE[0], max_height or IDENTITY_MAX_SIZE[1], MAX_IMAGE_FRAMES_PER_CALL, MAX_IMAGE_STEPS)
        return cls.for_model(pipeline.native_size, pipeline.kind, max_width, max_height)

    def check(self, width: int, height: int, frames_per_call: int, steps: int) -> None:
        """ConfigError naming the first setting over a cap."""
        if width > self.max_width or height > self.max_height:
            raise ConfigError(f"{width}x{height} is over this server's limit of {self.max_width}x{self.max_height}")
        if frames_per_call > self.max_frames_per_call:
            raise ConfigError(f"frame_buffer_size {frames_per_call} is over this server's limit of {self.max_frames_per_call}")
        if steps > self.max_steps:
            raise ConfigError(f"{steps} denoising steps are over this server's limit of {self.max_steps}")

    def check_shape(self, shape: StreamShape) -> None:
        self.check(shape.width, shape.height, shape.frames_per_call, shape.steps)

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


def check_engine_limits(pipeline: Any, stream: StreamShape) -> None:
    """ConfigError when the pipeline's compiled engines cannot run a stream of this shape (size or rows), with their range."""
    limits = pipeline.engine_limits
    if limits is not None and stream.kind == "image":
        limits.check_stream(stream.width, stream.height, stream.unit().rows)


def engine_row_limit(pipeline: Any) -> int | None:
    """The most rows one step may carry on the pipeline's engines (None: no limit): the scheduler's row limit."""
    limits = pipeline.engine_limits
    return None if limits is None else limits.max_rows
