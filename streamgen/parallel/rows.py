"""The unit of work of the pipeline stages: one chunk at one denoising step, and how rows form micro-batches.

A :class:`StageRow` is submitted when its input exists: a new chunk's first
step as soon as the chunk is encoded, a later step as soon as the previous
step's flow prediction is back. Rank 0 embeds whatever rows are waiting into
one micro-batch, runs its blocks and sends the micro-batch round the ring,
then takes the next, so several micro-batches (of one stream or many) are on
the ring at once and every stage works.

Order that must hold: two rows that write the same cache row of the same
stream (step i of chunk c and of chunk c+1) reach every rank in submission
order, and never share a micro-batch (the later one must attend to the
earlier one's commit). :func:`take_micro_batch` keeps both; everything else
may go in any order, since rows of other streams or other steps touch other
cache rows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .handles import ShardedContext, ShardedKVCache


@dataclass(eq=False)
class RowTicket:
    """Shared by every row of one chunk; a reset of its stream cancels it, and rank 0 then drops its rows and results."""

    cancelled: bool = False


@dataclass(frozen=True)
class DecodeRequest:
    """A chunk's last step: the last rank turns the prediction into clean latents (at ``sigma``) and decodes them."""

    decoder_id: int
    sigma: torch.Tensor  # (1,) float32: the step's noise level


@dataclass(eq=False)
class StageRow:
    """One chunk at one step (see module docstring).

    ``on_result`` is called on rank 0's result thread with the flow
    prediction ``(1, C, T', h, w)`` float32, or, for a row with ``decode``,
    the chunk's decoded frames ``(t, H, W, 3)`` uint8 (``on_prediction``,
    when given, gets such a row's flow prediction just before: the clean
    latents a re-cache replays are computed from it on rank 0). ``on_error`` gets the
    reason instead when a rank's forward (or the decode) raised on the
    row's micro-batch; without one, such an error fails every stream.
    """

    latents: torch.Tensor  # (1, C, T', h, w) at this step's noise level
    timesteps: torch.Tensor  # (1, T')
    cache: ShardedKVCache  # the one cache row this step attends to
    context: ShardedContext  # one row
    on_result: Callable[[torch.Tensor], None]
    decode: DecodeRequest | None = None
    on_error: Callable[[str], None] | None = None
    on_prediction: Callable[[torch.Tensor], None] | None = None
    write: bool | None = None  # None: commit the chunk (the pipeline always does)
    ticket: RowTicket = field(default_factory=RowTicket)
    ready: Any = None  # on a GPU: the CUDA event after which ``latents`` exist (set by the driver's submit)

    def __post_init__(self) -> None:
        if self.cache.rows != 1 or self.latents.shape[0] != 1 or self.context.rows != 1:
            raise ValueError("a stage row is one chunk at one step: one latent row, one cache row, one context row")

    @property
    def cache_row(self) -> tuple[int, int]:
        return self.cache.cache_id, self.cache.start

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])


def take_micro_batch(ready: deque[StageRow], max_rows: int | None = None) -> list[StageRow]:
    """Take the next micro-batch from ``ready`` (oldest first; see module docstring); the rest stays, in order.

    The batch holds rows of the oldest row's latent shape (one forward needs
    one shape), at most one per cache row, and never a row behind one that
    was left waiting on the same cache row.
    """
    if not ready:
        return []
    shape = ready[0].shape
    batch: list[StageRow] = []
    taken: set[tuple[int, int]] = set()
    waiting: set[tuple[int, int]] = set()
    kept: list[StageRow] = []
    while ready:
        row = ready.popleft()
        key = row.cache_row
        fits = row.shape == shape and key not in taken and key not in waiting and (max_rows is None or len(batch) < max_rows)
        if fits:
            batch.append(row)
            taken.add(key)
        else:
            waiting.add(key)
            kept.append(row)
    ready.extend(kept)
    return batch
