"""What every stream pipeline (image or video) hands back (the contract itself: :mod:`streamgen.pipeline.contract`).

The server's worker and the Python API drive image and video pipelines the
same way:

- ``create_state(config, params)`` makes a per-stream state (call it off the
  event loop: it may encode prompts);
- ``update(state, changes)`` validates a live parameter change at once
  (raising :class:`~streamgen.errors.ConfigError`) and queues it for the next
  step, so it is safe to call from another thread;
- ``step(states, frames, tags)`` advances several streams in one batched
  call. ``frames[i]`` is a (k, H, W, 3) uint8 tensor (or None for txt2img)
  and ``tags[i]`` a tuple of k opaque per-frame tags (or None);
- ``reset(state)`` forgets the stream's history.

Each :class:`StepOutput` carries the output frames and, for each, the tag of
the input frame it depicts, so the caller can give it that frame's timing.
An image stream returns exactly f frames per call; a video stream buffers
input frames into chunks and may return none or several.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


class _Padding:
    """The tag of a frame a drain added to complete a call or a chunk (it depicts no input)."""

    _instance: "_Padding | None" = None

    def __new__(cls) -> "_Padding":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "PADDING"


PADDING = _Padding()


@dataclass(frozen=True)
class StepOutput:
    """One stream's result of a step.

    ``frames``: (k, H, W, 3) uint8 on the model device (k may be 0 for video).
    ``tags``: k tags, the tag of the input frame each output frame depicts.
    ``skipped``: the similarity filter reused the previous output.
    """

    frames: torch.Tensor
    tags: tuple[Any, ...] = ()
    skipped: bool = False

    def real(self) -> StepOutput:
        """The frames that depict inputs: those tagged :data:`PADDING` (added by a drain) left out."""
        if all(tag is not PADDING for tag in self.tags):
            return self
        keep = [i for i, tag in enumerate(self.tags) if tag is not PADDING]
        return StepOutput(self.frames[keep], tuple(self.tags[i] for i in keep), self.skipped)


@dataclass
class StreamCounters:
    """Per-stream frame counts, for stats and metrics."""

    frames_in: int = 0
    frames_processed: int = 0
    frames_skipped: int = 0
