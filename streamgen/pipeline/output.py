"""What every stream pipeline (image or video) hands back, and the contract it keeps.

The server's worker and the Python API drive image and video pipelines the
same way, through :class:`StreamPipeline`:

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch


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


@dataclass
class StreamCounters:
    """Per-stream frame counts, for stats and metrics."""

    frames_in: int = 0
    frames_processed: int = 0
    frames_skipped: int = 0


class StreamPipeline(Protocol):
    """The interface the server worker and the stream API use (see module docstring)."""

    def create_state(self, config: Any = None, params: Any = None) -> Any: ...

    def update(self, state: Any, changes: Mapping[str, Any] | None = None, **kwargs: Any) -> Any: ...

    def step(self, states: Sequence[Any], frames: Sequence[torch.Tensor | None], tags: Sequence[Any] | None = None) -> list[StepOutput]: ...

    def reset(self, state: Any) -> None: ...
