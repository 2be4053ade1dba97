"""Everything that belongs to ONE image stream, and nothing shared.

The pipeline object owns weights; an :class:`ImageStreamState` owns a
stream's latent buffer, fixed noise, stock noise for residual CFG, prompt
conditioning, similarity-filter state and last output. Two states never share
tensors, so one batched model call can carry rows from many streams while
each stream's result stays exactly what it would be alone.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
import torch

from ..config import StreamConfig, StreamParams
from ..models.image_model import PromptEmbedding
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
    buffer_tags: deque = field(default_factory=deque)  # per-call tag tuples of the buffered slots
    force_process: bool = True
    counters: StreamCounters = field(default_factory=StreamCounters)
    state_id: int = field(default_factory=lambda: next(_state_ids))
    _pending: StreamParams | None = None
    _pending_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def frames_per_call(self) -> int:
        return self.config.frame_buffer_size

    @property
    def num_slots(self) -> int:
        return self.schedule.num_slots

    def set_pending(self, params: StreamParams) -> None:
        """Queue validated parameters; the worker applies them before its next step."""
        with self._pending_lock:
            self._pending = params

    def take_pending(self) -> StreamParams | None:
        with self._pending_lock:
            params, self._pending = self._pending, None
            return params

    @property
    def latest_params(self) -> StreamParams:
        """The parameters in force after any queued update is applied."""
        with self._pending_lock:
            return self._pending or self.params
