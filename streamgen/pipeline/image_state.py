"""Everything that belongs to ONE image stream, and nothing shared.

The pipeline object owns weights; an :class:`ImageStreamState` owns a
stream's latent buffer, fixed noise, stock noise for residual CFG, prompt
conditioning, similarity-filter state and last output. Two states never share
tensors, so one batched model call can carry rows from many streams while
each stream's result stays exactly what it would be alone.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from .pending import PendingUpdate
from ..config import StreamConfig, StreamParams
from ..models.image.image_model import PromptEmbedding
from .output import StreamCounters
from .prompts import PromptTransition
from .schedule import SlotSchedule
from .similarity import SimilarityFilter

_state_ids = itertools.count(1)


@dataclass(eq=False)
class ImageStreamState:
    """Per-stream state of an image pipeline (see module docstring)."""

    config: StreamConfig
    params: StreamParams
    latent_shape: tuple[int, int, int]
    schedule: SlotSchedule
    init_noise: torch.Tensor  # (n·f, C, h, w): the fixed noise of each slot
    stock_noise: torch.Tensor  # (n·f, C, h, w): residual-noise estimates for self/initialize CFG
    prompt: PromptTransition
    negative: PromptEmbedding
    time_ids: torch.Tensor | None
    noise_generator: torch.Generator
    similarity: SimilarityFilter
    buffer: torch.Tensor | None = None  # ((n-1)·f, C, h, w): slots 1..n-1; None until filled
    uncond_measured: bool = False
    last_output: torch.Tensor | None = None
    last_input: torch.Tensor | None = None  # the last call's frames, (f, H, W, 3) uint8: what flush repeats as padding
    buffer_tags: deque = field(default_factory=deque)  # per-call tag tuples of the buffered slots
    buffer_controls: deque = field(default_factory=deque)  # per-call control images of the buffered slots (beside the tags)
    last_controls: dict = field(default_factory=dict)  # the newest call's control images (the page's preview)
    force_process: bool = True
    counters: StreamCounters = field(default_factory=StreamCounters)
    state_id: int = field(default_factory=lambda: next(_state_ids))
    pending: PendingUpdate[StreamParams] = field(default_factory=PendingUpdate)

    @property
    def frames_per_call(self) -> int:
        return self.config.frame_buffer_size

    @property
    def num_slots(self) -> int:
        return self.schedule.num_slots

    @property
    def latest_params(self) -> StreamParams:
        """The parameters in force after any queued update is applied."""
        return self.pending.latest(self.params)

    # ------------------------------------------------------------- rollback
    def checkpoint(self) -> "ImageCheckpoint":
        """What a step may change, copied cheaply: restore it to undo a step that raised.

        Tensors a step replaces are kept by reference; the one it writes in
        place (``stock_noise``) is cloned; small mutable objects (prompt
        transition, counters, filter, tag deque, RNG) are copied.
        """
        return ImageCheckpoint(
            fields={name: getattr(self, name) for name in _REPLACED_FIELDS},
            stock_noise=self.stock_noise.clone(),
            prompt=dataclasses.replace(self.prompt),
            counters=dataclasses.replace(self.counters),
            similarity=(self.similarity.last_processed, self.similarity.consecutive_skips, self.similarity.rng.getstate()),
            buffer_tags=copy.copy(self.buffer_tags),
            buffer_controls=copy.copy(self.buffer_controls),
            noise_generator=self.noise_generator.get_state(),
            pending=self.pending.peek(),
        )

    def restore(self, saved: "ImageCheckpoint") -> None:
        """Put the state back as it was at ``saved`` (see :meth:`checkpoint`).

        The newest accepted update is queued again (:mod:`streamgen.pipeline.pending`):
        one queued after the step took its own, else the one the failed step
        applied, else the one queued at the checkpoint.
        """
        applied = self.params if self.params is not saved.fields["params"] else None
        for name, value in saved.fields.items():
            setattr(self, name, value)
        self.stock_noise = saved.stock_noise
        self.prompt = saved.prompt
        self.counters = saved.counters
        last, skips, rng = saved.similarity
        self.similarity.last_processed, self.similarity.consecutive_skips = last, skips
        self.similarity.rng.setstate(rng)
        self.buffer_tags = saved.buffer_tags
        self.buffer_controls = saved.buffer_controls
        self.noise_generator.set_state(saved.noise_generator)
        self.pending.restore(at_checkpoint=saved.pending, applied=applied)


_REPLACED_FIELDS = (
    "params",
    "schedule",
    "init_noise",
    "negative",
    "buffer",
    "uncond_measured",
    "last_output",
    "force_process",
)


@dataclass(frozen=True)
class ImageCheckpoint:
    """A copy of what one step may change in an :class:`ImageStreamState`."""

    fields: dict[str, Any]
    stock_noise: torch.Tensor
    prompt: PromptTransition
    counters: StreamCounters
    similarity: tuple[Any, int, Any]
    buffer_tags: deque
    buffer_controls: deque
    noise_generator: torch.Tensor
    pending: StreamParams | None
