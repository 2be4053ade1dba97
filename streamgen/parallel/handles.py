"""Driver-side stand-ins for a stream's KV cache, a prompt's context and a decode state that live on other ranks.

The video pipeline keeps a cache, contexts and a decode state in each
stream's state and calls a handful of methods on them (row views, reset,
reset; expand, blend, concat). :class:`ShardedKVCache`,
:class:`ShardedContext` and :class:`ShardedDecoder` answer those calls: the driver's own layers change
at once, and the same change goes to every other rank as a message
(:mod:`.driver`). They hold ids, not data, so when a block moves to
another rank (:mod:`.rebalance`) no handle goes stale; when the last handle
of a cache, context or decoder is garbage-collected, the ranks are told to
free it. A stage cache keeps no undo journal (its chunks commit on the
ring, which is never rolled back); the ``journal`` property says so.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..models.video.kv_cache import CommitJournal, RollingKVCache

if TYPE_CHECKING:
    from .driver import StageDriver


class ShardedKVCache:
    """Rows ``start:stop`` of cache ``cache_id``, whose layers are spread over the stage ranks."""

    def __init__(self, driver: StageDriver, cache_id: int, start: int, stop: int, root: ShardedKVCache | None = None) -> None:
        self.driver = driver
        self.cache_id = cache_id
        self.start = start
        self.stop = stop
        self._root = root  # views keep their root alive: the ranks free a cache when its root handle goes
        if root is None:
            weakref.finalize(self, driver.release, "cache.drop", cache_id)

    # ---------------------------------------------------------------- local
    @property
    def local(self) -> RollingKVCache:
        """The driver's own layers of these rows (a fresh row view: the driver's shard may re-layer in place)."""
        root = self.driver.shard.caches[self.cache_id]
        return root.row_view(self.start, self.stop)

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def tokens_per_frame(self) -> int:
        return self.local.tokens_per_frame

    # The stream's geometry and frame counters: rank 0's layers say them for every rank (each writes the same frames).
    @property
    def geometry(self) -> Any:
        return self.local.geometry

    @property
    def rotation(self) -> Any:
        return self.local.rotation

    @property
    def frames_written(self) -> torch.Tensor:
        return self.local.frames_written

    def replace_frames(self, rows: Sequence[int], source: ShardedKVCache, frames: Sequence[int]) -> None:
        """A re-cache on every rank (:meth:`RollingKVCache.replace_frames`), as a message on the ring."""
        if not isinstance(source, ShardedKVCache):
            raise InputError("a pipeline-stage cache takes frames from another stage cache (new_cache of the staged model)")
        self.driver.replace_frames(self, rows, source, frames)

    def row_view(self, start: int, stop: int) -> ShardedKVCache:
        if not 0 <= start < stop <= self.rows:
            raise InputError(f"row view {start}:{stop} is outside the cache's {self.rows} rows")
        if start == 0 and stop == self.rows:
            return self
        return ShardedKVCache(self.driver, self.cache_id, self.start + start, self.start + stop, self._root or self)

    def reset(self, rows: torch.Tensor | Sequence[int] | None = None) -> None:
        if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            rows = [i for i, flag in enumerate(rows.tolist()) if flag]
        elif rows is not None:
            rows = [int(r) for r in torch.as_tensor(rows).tolist()]
        self.driver.reset_cache(self, rows)

    # --------------------------------------------------------------- journal
    @property
    def journal(self) -> None:
        """Never one: a stage cache's chunks commit on the ring, after the step that could be undone."""
        return None

    @journal.setter
    def journal(self, journal: CommitJournal | None) -> None:
        if journal is not None:
            raise RuntimeError("pipeline-stage caches are not journalled (StagedVideoPipeline checkpoints without them)")


class ShardedContext:
    """A prompt's cross-attention context whose layers are spread over the stage ranks.

    A *base* context (``sources is None``) is one row the ranks store under
    ``context_id``; a concatenation lists, per row, which base context and
    row it takes.
    """

    def __init__(self, driver: StageDriver, context_id: int | None, num_layers: int, sources: tuple[tuple[ShardedContext, int], ...] | None = None) -> None:
        self.driver = driver
        self.context_id = context_id
        self.num_layers = num_layers
        self.sources = sources
        if sources is None:
            weakref.finalize(self, driver.release, "context.drop", context_id)

    @property
    def rows(self) -> int:
        return 1 if self.sources is None else len(self.sources)

    def row_sources(self, rows: int) -> tuple[tuple[int, int], ...]:
        """``(context_id, row)`` for each of ``rows`` batch rows (a one-row context serves every row)."""
        if self.sources is None:
            return ((self.context_id, 0),) * rows
        if len(self.sources) != rows:
            raise InputError(f"context has {len(self.sources)} rows, expected 1 or {rows}")
        return tuple((base.context_id, row) for base, row in self.sources)

    def row(self, index: int) -> ShardedContext:
        """The one-row context of batch row ``index``."""
        if self.sources is None:
            return self
        return ShardedContext(self.driver, None, self.num_layers, (self.sources[index],))

    def expand(self, rows: int) -> ShardedContext:
        if self.rows == rows:
            return self
        if self.rows != 1:
            raise InputError(f"cannot expand a context of {self.rows} rows to {rows} rows")
        return ShardedContext(self.driver, None, self.num_layers, ((self._base(0)),) * rows)

    def lerp(self, other: ShardedContext, weight: float | torch.Tensor) -> ShardedContext:
        if isinstance(weight, torch.Tensor):
            if weight.numel() != 1:
                raise InputError("pipeline stages blend prompts with one weight for all rows")
            weight = float(weight)
        if self.sources is not None or other.sources is not None:
            raise InputError("pipeline stages blend one-row prompt contexts only")
        return self.driver.blend_contexts(self, other, float(weight))

    def _base(self, row: int) -> tuple[ShardedContext, int]:
        return (self, 0) if self.sources is None else self.sources[row]

    @staticmethod
    def concat(contexts: Sequence[ShardedContext]) -> ShardedContext:
        if not contexts:
            raise InputError("concat needs at least one context")
        sources = tuple(c._base(row) for c in contexts for row in range(c.rows))
        return ShardedContext(contexts[0].driver, None, contexts[0].num_layers, sources)


class ShardedDecoder:
    """A stream's streaming-VAE decode state, which lives on the last rank (where its chunks are decoded).

    The pipeline resets it with the stream; a checkpoint keeps the handle
    (decoding happens on the ring, never inside a step that could be undone).
    """

    def __init__(self, driver: StageDriver, decoder_id: int) -> None:
        self.driver = driver
        self.decoder_id = decoder_id
        weakref.finalize(self, driver.release, "decoder.drop", decoder_id)

    def reset(self) -> None:
        self.driver.reset_decoder(self.decoder_id)

    def copy(self) -> ShardedDecoder:
        return self
