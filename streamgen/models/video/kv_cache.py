"""Rolling KV cache for causal video diffusion: sink frames + a ring, preallocated, no host syncs.

A block-causal video DiT generates a stream chunk by chunk; each chunk attends
to the keys/values of earlier chunks. For a stream of unbounded length the
history is cut to a fixed window (StreamDiffusionV2): the first
``sink_frames`` frames of the stream stay forever as *attention sinks*, and
the ``ring_frames`` most recent frames live in a ring that is overwritten in
place. Memory and per-chunk work are therefore constant for any stream length.

Layout
------
One tensor for K and one for V, ``(num_layers, rows, capacity_tokens, heads,
head_dim)``, allocated once. Along the token axis the buffer holds, frame slot
by frame slot::

    [ sink 0 .. sink S-1 | ring 0 .. ring W-1 | scratch 0 .. scratch C-1 ]

``capacity_tokens = (S + W + C) * tokens_per_frame`` with ``C = chunk_frames``
(the largest chunk). A chunk's own K/V go to the scratch slots, so every layer
runs ONE attention call over the whole buffer with a key mask (empty slots
and unused scratch slots masked out) instead of concatenating history and
chunk. :meth:`RollingKVCache.commit` then copies the scratch into its
destination slot (sink ``f`` while ``f < S``, else ring ``(f - S) mod W``) for
the rows whose ``write`` flag is set. Rows with ``write=False`` keep their
history exactly. Nothing is ever shifted or concatenated.

Rows
----
``rows`` = R rows (one per denoising step in stream-batch mode): row ``i``
holds the history of chunks as seen at step ``i``, with its own frame counter
``frames_written[i]`` (a device tensor). Sequential and stream-batch
denoising therefore see identical caches.

Positions (why this is not the reference's scheme)
--------------------------------------------------
The reference stores keys *after* RoPE at absolute frame positions and resets
its time offset after 50 frames, so cached keys keep phases that no longer
match the query's: attention to the history drifts in long streams.

Here keys are stored *before* rotation and rotated when read, with
window-relative time positions computed from the row's counter ``n`` (frames
before this chunk) on the device:

* sink ``s`` has position ``s``;
* every other frame ``f`` (ring entries and the chunk's own frames) has
  position ``f - shift`` with ``shift = max(0, n - S - W)``.

While the stream fits in the window (``n <= S + W``) the shift is 0 and every
position equals the absolute frame index, so a chunked forward equals a full
block-causal forward exactly. Once the window is full the ring frames get
positions ``S .. S+W-1`` by recency and the chunk ``S+W .. S+W+T-1``: the
current chunk's position stops growing, relative distances inside the ring
are the true ones, and the sinks sit right before the oldest ring frame (as
attention sinks do in StreamingLLM). Every position stays below
``S + W + C``, far inside the RoPE table, and the attention pattern of chunk
100 is the same as that of chunk 100000.

Adaptive sinks
--------------
With ``adaptive_sink_threshold`` set, :meth:`commit` compares, per layer and
row, the mean (pre-RoPE) key of each newly written ring frame with the mean
key of every sink (cosine similarity). If the similarity to every sink is
below the threshold (the scene changed), the least similar sink is replaced
by that frame (it also stays in the ring). The decision is made with
``torch.where`` on device tensors, never on the host.

Undoing commits (failure isolation)
-----------------------------------
A step that fails half-way must leave every stream as it was, but a stream
that runs several chunks in one step has to commit each chunk before the
next one can attend to it, so commits cannot wait for the end of the step.
Instead a :class:`CommitJournal` attached to a cache (``cache.journal``;
row views share it) saves, before each commit, exactly what that commit
overwrites: the K/V of the destination slots (one chunk's worth per row,
the same size as the scratch), the sink slots when adaptive sinks may
replace one, and ``frames_written``. :meth:`CommitJournal.undo` writes them
back newest first. The scratch slots are never saved: their content is
dead between chunks (every chunk stores its own K/V there before any layer
reads them). Without a journal (the default) a commit costs nothing extra.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...errors import ConfigError, InputError


@dataclass(frozen=True)
class CacheGeometry:
    """The fixed sizes of one cache."""

    num_layers: int
    rows: int
    tokens_per_frame: int
    heads: int
    head_dim: int
    sink_frames: int = 3
    ring_frames: int = 3
    chunk_frames: int = 1
    adaptive_sink_threshold: float | None = None

    def __post_init__(self) -> None:
        for name in ("num_layers", "rows", "tokens_per_frame", "heads", "head_dim", "ring_frames", "chunk_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"KV cache {name} must be >= 1, got {getattr(self, name)}")
        if self.sink_frames < 0:
            raise ConfigError(f"KV cache sink_frames must be >= 0, got {self.sink_frames}")
        if self.adaptive_sink_threshold is not None and self.sink_frames == 0:
            raise ConfigError("adaptive_sink_threshold needs sink_frames >= 1")

    @property
    def window_frames(self) -> int:
        """History frames a chunk can see (sinks + ring), not counting the chunk itself."""
        return self.sink_frames + self.ring_frames

    @property
    def slots(self) -> int:
        return self.sink_frames + self.ring_frames + self.chunk_frames

    @property
    def capacity_tokens(self) -> int:
        return self.slots * self.tokens_per_frame

    @property
    def scratch_start(self) -> int:
        """First token of the scratch slots (where a chunk's own K/V go)."""
        return self.window_frames * self.tokens_per_frame

    @property
    def max_position(self) -> int:
        """The largest time position any key or query can get."""
        return self.window_frames + self.chunk_frames - 1


@dataclass(frozen=True)
class ChunkLayout:
    """Where one chunk's keys sit and what positions they get; computed once per chunk, shared by all layers.

    All tensors live on the cache's device; ``frames`` is a Python int (a shape).
    """

    frames: int
    write: torch.Tensor  # (R,) bool
    key_positions: torch.Tensor  # (R, slots) int64, time position of each slot
    key_valid: torch.Tensor  # (R, slots) bool
    attention_mask: torch.Tensor  # (R, 1, 1, capacity_tokens) bool, True = attend
    query_positions: torch.Tensor  # (R, frames) int64
    query_frames: torch.Tensor  # (R, frames) int64, absolute frame index in the stream
    destination_tokens: torch.Tensor  # (R, frames * tokens_per_frame) int64, where commit puts the chunk


class RollingKVCache:
    """Preallocated K/V history of ONE stream for every transformer block, with R rows."""

    def __init__(
        self,
        geometry: CacheGeometry,
        k: torch.Tensor,
        v: torch.Tensor,
        frames_written: torch.Tensor,
        journal: CommitJournal | None = None,
    ) -> None:
        self.geometry = geometry
        self.k = k
        self.v = v
        self.frames_written = frames_written
        self.journal = journal  # when set, every commit first saves what it overwrites (see module docstring)

    @classmethod
    def allocate(
        cls,
        num_layers: int,
        rows: int,
        tokens_per_frame: int,
        heads: int,
        head_dim: int,
        sink_frames: int = 3,
        ring_frames: int = 3,
        chunk_frames: int = 1,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        adaptive_sink_threshold: float | None = None,
    ) -> RollingKVCache:
        geometry = CacheGeometry(
            num_layers, rows, tokens_per_frame, heads, head_dim, sink_frames, ring_frames, chunk_frames,
            adaptive_sink_threshold,
        )
        shape = (num_layers, rows, geometry.capacity_tokens, heads, head_dim)
        # Zeros, not empty: masked-out slots still enter softmax(QK)V as 0 * V, and 0 * NaN is NaN.
        k = torch.zeros(shape, device=device, dtype=dtype)
        v = torch.zeros(shape, device=device, dtype=dtype)
        frames_written = torch.zeros(rows, device=device, dtype=torch.int64)
        return cls(geometry, k, v, frames_written)

    # ----------------------------------------------------------------- sizes
    @property
    def rows(self) -> int:
        return self.geometry.rows

    @property
    def num_layers(self) -> int:
        return self.geometry.num_layers

    @property
    def tokens_per_frame(self) -> int:
        return self.geometry.tokens_per_frame

    @property
    def chunk_frames(self) -> int:
        return self.geometry.chunk_frames

    @property
    def capacity_tokens(self) -> int:
        return self.geometry.capacity_tokens

    @property
    def device(self) -> torch.device:
        return self.k.device

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.frames_written.nbytes

    def row_view(self, start: int, stop: int) -> RollingKVCache:
        """Rows ``start:stop`` as a cache of their own: views, so stores and commits land in this cache.

        The view shares this cache's journal, so its commits can be undone too.
        """
        if not 0 <= start < stop <= self.rows:
            raise InputError(f"row view {start}:{stop} is outside the cache's {self.rows} rows")
        if start == 0 and stop == self.rows:
            return self
        geometry = dataclasses.replace(self.geometry, rows=stop - start)
        return RollingKVCache(
            geometry, self.k[:, start:stop], self.v[:, start:stop], self.frames_written[start:stop], self.journal
        )

    # ----------------------------------------------------------------- state
    def reset(self, rows: torch.Tensor | Sequence[int] | None = None) -> None:
        """Forget the history of all rows, of a bool row mask ``(R,)``, or of a list of row indices."""
        if rows is None:
            self.frames_written.zero_()
        elif isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            if rows.shape != (self.rows,):
                raise InputError(f"reset mask must have shape ({self.rows},), got {tuple(rows.shape)}")
            self.frames_written.masked_fill_(rows.to(self.device), 0)
        else:
            self.frames_written[torch.as_tensor(rows, device=self.device, dtype=torch.long)] = 0

    def keys(self, layer: int) -> torch.Tensor:
        """Pre-RoPE keys of one layer, ``(R, capacity_tokens, heads, head_dim)`` (a view)."""
        return self.k[layer]

    def values(self, layer: int) -> torch.Tensor:
        return self.v[layer]

    # ------------------------------------------------------------- per chunk
    def plan(self, frames: int, write: torch.Tensor | None = None) -> ChunkLayout:
        """Positions, key mask and destinations of the next chunk of ``frames`` frames (device ops only)."""
        g = self.geometry
        if not 1 <= frames <= g.chunk_frames:
            raise InputError(f"a chunk has 1..{g.chunk_frames} frames for this cache (chunk_frames), got {frames}")
        device = self.device
        if write is None:
            write = torch.ones(self.rows, device=device, dtype=torch.bool)
        elif write.shape != (self.rows,):
            raise InputError(f"write must be a bool tensor of shape ({self.rows},), got {tuple(write.shape)}")
        write = write.to(device=device, dtype=torch.bool)

        S, W, C = g.sink_frames, g.ring_frames, g.chunk_frames
        n = self.frames_written[:, None]  # (R, 1)
        shift = (n - S - W).clamp(min=0)

        sink = torch.arange(S, device=device)[None, :]
        sink_valid = sink < n
        sink_pos = sink.expand(self.rows, S)

        ring = torch.arange(W, device=device)[None, :]
        ring_count = n - S  # ring frames ever written (may be <= 0)
        age = torch.remainder(ring_count - 1 - ring, W)  # 0 = newest
        ring_valid = ring < ring_count
        ring_pos = torch.where(ring_valid, n - 1 - age - shift, 0)

        scratch = torch.arange(C, device=device)[None, :]
        scratch_valid = (scratch < frames).expand(self.rows, C)
        scratch_pos = torch.where(scratch_valid, n + scratch - shift, 0)

        key_positions = torch.cat([sink_pos, ring_pos, scratch_pos], dim=1)
        key_valid = torch.cat([sink_valid, ring_valid, scratch_valid], dim=1)
        tpf = g.tokens_per_frame
        mask = key_valid[:, :, None].expand(self.rows, g.slots, tpf).reshape(self.rows, 1, 1, g.capacity_tokens)

        query_frames = n + torch.arange(frames, device=device)[None, :]
        destination = torch.where(query_frames < S, query_frames, S + torch.remainder(query_frames - S, W))
        tokens = destination[:, :, None] * tpf + torch.arange(tpf, device=device)
        return ChunkLayout(
            frames=frames,
            write=write,
            key_positions=key_positions,
            key_valid=key_valid,
            attention_mask=mask,
            query_positions=query_frames - shift,
            query_frames=query_frames,
            destination_tokens=tokens.reshape(self.rows, frames * tpf),
        )

    def store(self, layer: int, layout: ChunkLayout, k: torch.Tensor, v: torch.Tensor) -> None:
        """Put a chunk's pre-RoPE K/V ``(R, frames*tokens_per_frame, heads, head_dim)`` into the scratch slots."""
        start = self.geometry.scratch_start
        end = start + layout.frames * self.tokens_per_frame
        self.k[layer, :, start:end].copy_(k.detach())
        self.v[layer, :, start:end].copy_(v.detach())

    def commit(self, layout: ChunkLayout) -> None:
        """After all layers ran: move the chunk from scratch into the history of the rows that write."""
        g = self.geometry
        count = layout.frames * g.tokens_per_frame
        start = g.scratch_start
        destination = self._commit_destination(layout)
        rows = torch.arange(self.rows, device=self.device)[:, None]
        if self.journal is not None:
            self.journal.save_before_commit(self, rows, destination)
        for buffer in (self.k, self.v):
            buffer[:, rows, destination] = buffer[:, :, start : start + count].clone()
        if g.adaptive_sink_threshold is not None:
            for j in range(layout.frames):
                self._maybe_replace_sink(layout, j)
        self.frames_written.add_(layout.write.to(torch.int64) * layout.frames)

    def _commit_destination(self, layout: ChunkLayout) -> torch.Tensor:
        """``(R, frames * tokens_per_frame)`` token slots a commit writes, per row.

        Rows that do not write copy their scratch onto itself: same work for every row, no branch.
        """
        g = self.geometry
        start = g.scratch_start
        scratch_tokens = torch.arange(start, start + layout.frames * g.tokens_per_frame, device=self.device)[None, :]
        return torch.where(layout.write[:, None], layout.destination_tokens, scratch_tokens)

    def _maybe_replace_sink(self, layout: ChunkLayout, frame: int) -> None:
        """Replace, per layer and row, the least similar sink by frame ``frame`` of the chunk if no sink is similar."""
        g = self.geometry
        S, tpf = g.sink_frames, g.tokens_per_frame
        start = g.scratch_start + frame * tpf
        eligible = layout.write & (layout.query_frames[:, frame] >= S)  # (R,)
        new_k = self.k[:, :, start : start + tpf]  # (L, R, tpf, H, D)
        new_v = self.v[:, :, start : start + tpf]
        sink_k = self.k[:, :, : S * tpf].unflatten(2, (S, tpf))  # (L, R, S, tpf, H, D)
        sink_v = self.v[:, :, : S * tpf].unflatten(2, (S, tpf))
        new_mean = new_k.float().mean(dim=2).flatten(-2)  # (L, R, H*D)
        sink_mean = sink_k.float().mean(dim=3).flatten(-2)  # (L, R, S, H*D)
        similarity = torch.nn.functional.cosine_similarity(sink_mean, new_mean[:, :, None], dim=-1)  # (L, R, S)
        replace = eligible[None, :] & (similarity.amax(dim=-1) < g.adaptive_sink_threshold)  # (L, R)
        target = similarity.argmin(dim=-1)  # (L, R)
        chosen = replace[..., None] & (torch.arange(S, device=self.device) == target[..., None])  # (L, R, S)
        chosen = chosen[..., None, None, None]
        sink_k.copy_(torch.where(chosen, new_k[:, :, None], sink_k))
        sink_v.copy_(torch.where(chosen, new_v[:, :, None], sink_v))


@dataclass(frozen=True)
class _CommitUndo:
    """What one commit overwrote in one cache (or row view): enough to write it back."""

    cache: RollingKVCache
    rows: torch.Tensor  # (R, 1) row indices of the cache
    tokens: torch.Tensor  # (R, count) token slots the commit wrote
    keys: torch.Tensor  # (L, R, count, H, D) their previous content
    values: torch.Tensor
    sink_keys: torch.Tensor | None  # (L, R, S*tpf, H, D) when adaptive sinks may replace a sink
    sink_values: torch.Tensor | None
    frames_written: torch.Tensor  # (R,)

    def apply(self) -> None:
        cache = self.cache
        cache.k[:, self.rows, self.tokens] = self.keys
        cache.v[:, self.rows, self.tokens] = self.values
        if self.sink_keys is not None:
            sink_tokens = self.sink_keys.shape[2]
            cache.k[:, :, :sink_tokens] = self.sink_keys
            cache.v[:, :, :sink_tokens] = self.sink_values
        cache.frames_written.copy_(self.frames_written)


class CommitJournal:
    """Undo log of the commits made to one cache (and its row views) since the journal was attached.

    Cost per commit: one chunk's K/V per row (plus the sinks with adaptive
    sinks), gathered on the device; never a copy of the whole cache.
    A journal is *open* until :meth:`close`; a closed journal refuses to undo.
    """

    def __init__(self) -> None:
        self._records: list[_CommitUndo] = []
        self.closed = False

    def __len__(self) -> int:
        return len(self._records)

    def save_before_commit(self, cache: RollingKVCache, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """Called by :meth:`RollingKVCache.commit` before it writes ``tokens`` of ``rows``."""
        if self.closed:
            return
        adaptive = cache.geometry.adaptive_sink_threshold is not None
        sink_tokens = cache.geometry.sink_frames * cache.tokens_per_frame
        self._records.append(
            _CommitUndo(
                cache=cache,
                rows=rows,
                tokens=tokens,
                keys=cache.k[:, rows, tokens],  # advanced indexing: a copy
                values=cache.v[:, rows, tokens],
                sink_keys=cache.k[:, :, :sink_tokens].clone() if adaptive else None,
                sink_values=cache.v[:, :, :sink_tokens].clone() if adaptive else None,
                frames_written=cache.frames_written.clone(),
            )
        )

    def undo(self) -> None:
        """Write back everything the recorded commits overwrote, newest first; the journal stays open and empty."""
        if self.closed:
            raise RuntimeError("this commit journal is closed; its commits can no longer be undone")
        for record in reversed(self._records):
            record.apply()
        self._records.clear()

    def close(self) -> None:
        """Stop recording and drop the records (the commits are final)."""
        self.closed = True
        self._records.clear()
