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
runs ONE attention call over the whole buffer (with a key mask masking out
empty slots and unused scratch slots while the window fills, with none once
it is full) instead of concatenating history and chunk. :meth:`RollingKVCache.commit` then copies the scratch into its
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

Here every chunk sees *window-relative* time positions, computed from the
row's counter ``n`` (frames before this chunk) on the device:

* sink ``s`` has position ``s``;
* every other frame ``f`` (ring entries and the chunk's own frames) has
  position ``f - shift`` with ``shift = max(0, n - S - W)``.

While the stream fits in the window (``n <= S + W``) the shift is 0 and every
position equals the absolute frame index, so a chunked forward equals a full
block-causal forward exactly. Once the window is full the ring frames get
positions ``S .. S+W-1`` by recency and the chunk ``S+W .. S+W+T-1``: the
current chunk's position stops growing, relative distances inside the ring
are the true ones, and the sinks sit right before the oldest ring frame (as
attention sinks do in StreamingLLM). The attention pattern of chunk 100 is
the same as that of chunk 100000. :meth:`plan` reports these positions
(``key_positions``, ``query_positions``).

How the keys are stored (rotated, so attention reads the buffer as it is)
-------------------------------------------------------------------------
RoPE scores depend only on the *difference* of the query's and the key's
positions. Ring and chunk frames all carry the same ``- shift``, so rotating
them, and the queries, at their *absolute* frame index gives exactly the
scores of the window-relative positions. Only the sinks move relative to the
rest: in absolute terms sink ``s`` sits at ``s + shift``. So a cache made
with a ``rotation`` (what :class:`~streamgen.models.video.causal_wan.CausalWanTransformer`
makes) holds:

* ring and scratch slots: keys rotated at their absolute frame index, written
  once and never touched again until overwritten;
* ``sink_keys``: the sinks' history, rotated at their own position ``s``;
* the sink slots of ``k``: those sinks advanced by the row's current
  ``shift`` (:meth:`KeyRotation.shift_time`, time channels only),
  recomputed by every commit for the next chunk.

Each layer's attention therefore reads ``k`` directly, with no per-layer
rotation of the window: the per-chunk RoPE work is the chunk's own
queries/keys plus one time-rotation of the ``S`` sink frames, instead of
re-rotating all ``S + W + C`` frames in every layer. The price is the
``sink_keys`` copy (``S`` frames of K). Time angles are computed in float64
from the frame index (:mod:`streamgen.models.video.wan_rope`), so absolute
indices of any size are exact. Without a rotation (``rotation=None``) the
cache stores keys exactly as given and ``sink_keys`` is None.

Steady state: no mask
---------------------
Once every row has written at least ``S + W`` frames and a chunk fills the
whole scratch, every slot is valid and attention needs no mask
(:attr:`ChunkLayout.needs_mask` False), so a GPU can use its flash kernels.
Deciding that must not read device tensors, so the cache keeps, on the host,
a *lower bound* of each row's ``frames_written`` (:attr:`frames_at_least`),
shared by row views: a commit for all rows adds the chunk's frames, a
commit with a ``write`` mask adds nothing (the host cannot know which rows
wrote without a sync), a reset clears the rows it names (all the view's rows
for a device mask). A low bound only costs a mask; it never drops one that
is needed. The journal and :meth:`restore_counters` restore it with the
device counter.

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
the same size as the scratch), the sinks when the commit may change them
(adaptive sinks, or a row still filling its sinks), ``frames_written`` and
the host bound. :meth:`CommitJournal.undo` writes them back newest first and
recomputes the shifted sink slots. The scratch slots are never saved: their
content is dead between chunks (every chunk stores its own K/V there before
any layer reads them). Without a journal (the default) a commit costs
nothing extra.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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



class KeyRotation(Protocol):
    """How the keys a cache stores are rotated (implemented by :class:`~streamgen.models.video.wan_rope.KeyRotation`)."""

    time_dim: int  # keys[..., :time_dim] carry the time rotation; the other channels do not depend on the frame

    def shift_time(self, keys: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``keys (..., tokens, heads, head_dim)`` with their time rotation advanced by ``frames`` (broadcast over ``...``)."""
        ...

    def shifted_time_channels(self, keys: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Only the ``time_dim`` channels of :meth:`shift_time`."""
        ...

    def unrotate(self, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Raw keys of whole frames ``(B, F*tokens, heads, head_dim)`` that were rotated at frame ``positions (B, F)``."""
        ...


@dataclass(frozen=True)
class ChunkLayout:
    """Where one chunk's keys sit and what positions they get; computed once per chunk, shared by all layers.

    All tensors live on the cache's device; ``frames``, ``needs_mask`` and
    ``writes_all`` are Python values, decided on the host without a sync.
    """

    frames: int
    write: torch.Tensor  # (R,) bool
    key_positions: torch.Tensor  # (R, slots) int64, window-relative time position of each slot
    key_valid: torch.Tensor  # (R, slots) bool
    attention_mask: torch.Tensor  # (R, 1, 1, capacity_tokens) bool, True = attend
    query_positions: torch.Tensor  # (R, frames) int64, window-relative
    query_frames: torch.Tensor  # (R, frames) int64, absolute frame index in the stream (what keys are rotated at)
    destination_tokens: torch.Tensor  # (R, frames * tokens_per_frame) int64, where commit puts the chunk
    needs_mask: bool = True  # False: every slot is valid (window full, scratch = the chunk), attend without a mask
    writes_all: bool = False  # every row commits (no write mask): the host bound of frames_written grows

    @property
    def mask(self) -> torch.Tensor | None:
        """The attention mask to pass to SDPA: None in the steady state."""
        return self.attention_mask if self.needs_mask else None


class _HostFill:
    """Per-row lower bounds of ``frames_written``, on the host; one list shared by a cache and its row views."""

    def __init__(self, rows: int) -> None:
        self.values = [0] * rows


class RollingKVCache:
    """Preallocated K/V history of ONE stream for every transformer block, with R rows."""

    def __init__(
        self,
        geometry: CacheGeometry,
        k: torch.Tensor,
        v: torch.Tensor,
        frames_written: torch.Tensor,
        journal: CommitJournal | None = None,
        *,
        rotation: KeyRotation | None = None,
        sink_keys: torch.Tensor | None = None,
        host_fill: _HostFill | None = None,
        first_row: int = 0,
    ) -> None:
        self.geometry = geometry
        self.k = k
        self.v = v
        self.frames_written = frames_written
        self.journal = journal  # when set, every commit first saves what it overwrites (see module docstring)
        self.rotation = rotation  # None: keys are stored as given (see "How the keys are stored")
        self.sink_keys = sink_keys  # (L, R, S*tpf, H, D) the sinks' history when keys are rotated, else None
        self._host_fill = host_fill if host_fill is not None else _HostFill(geometry.rows)
        self._first_row = first_row  # this cache's rows in the shared host bound list

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
        rotation: KeyRotation | None = None,
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
        sink_keys = None
        if rotation is not None and sink_frames:
            sink_keys = torch.zeros((num_layers, rows, sink_frames * tokens_per_frame, heads, head_dim), device=device, dtype=dtype)
        return cls(geometry, k, v, frames_written, rotation=rotation, sink_keys=sink_keys)

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
        extra = self.sink_keys.nbytes if self.sink_keys is not None else 0
        return self.k.nbytes + self.v.nbytes + self.frames_written.nbytes + extra

    def row_view(self, start: int, stop: int) -> RollingKVCache:
        """Rows ``start:stop`` as a cache of their own: views, so stores and commits land in this cache.

        The view shares this cache's journal (so its commits can be undone
        too) and its host bounds of ``frames_written``.
        """
        if not 0 <= start < stop <= self.rows:
            raise InputError(f"row view {start}:{stop} is outside the cache's {self.rows} rows")
        if start == 0 and stop == self.rows:
            return self
        geometry = dataclasses.replace(self.geometry, rows=stop - start)
        return RollingKVCache(
            geometry,
            self.k[:, start:stop],
            self.v[:, start:stop],
            self.frames_written[start:stop],
            self.journal,
            rotation=self.rotation,
            sink_keys=None if self.sink_keys is None else self.sink_keys[:, start:stop],
            host_fill=self._host_fill,
            first_row=self._first_row + start,
        )

    # ------------------------------------------------------------ host bound
    @property
    def frames_at_least(self) -> tuple[int, ...]:
        """A lower bound of ``frames_written`` per row, known on the host (see "Steady state")."""
        first = self._first_row
        return tuple(self._host_fill.values[first : first + self.rows])

    def _set_frames_at_least(self, values: Sequence[int]) -> None:
        first = self._first_row
        self._host_fill.values[first : first + self.rows] = [int(v) for v in values]

    def restore_counters(self, frames_written: torch.Tensor, frames_at_least: Sequence[int]) -> None:
        """Put the frame counters back (device and host) and recompute what depends on them (a checkpoint restore)."""
        self.frames_written.copy_(frames_written)
        self._set_frames_at_least(frames_at_least)
        self._refresh_sinks(time_only=False)

    # ----------------------------------------------------------------- state
    def reset(self, rows: torch.Tensor | Sequence[int] | None = None) -> None:
        """Forget the history of all rows, of a bool row mask ``(R,)``, or of a list of row indices."""
        if rows is None:
            self.frames_written.zero_()
            self._set_frames_at_least([0] * self.rows)
        elif isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            if rows.shape != (self.rows,):
                raise InputError(f"reset mask must have shape ({self.rows},), got {tuple(rows.shape)}")
            self.frames_written.masked_fill_(rows.to(self.device), 0)
            self._set_frames_at_least([0] * self.rows)  # which rows is on the device: assume all
        else:
            index = torch.as_tensor(rows, device=self.device, dtype=torch.long)
            self.frames_written[index] = 0
            bound = list(self.frames_at_least)
            for row in torch.as_tensor(rows, dtype=torch.long).tolist():
                bound[row] = 0
            self._set_frames_at_least(bound)

    def keys(self, layer: int) -> torch.Tensor:
        """Keys of one layer as attention reads them, ``(R, capacity_tokens, heads, head_dim)`` (a view).

        Without a rotation these are the keys as stored (pre-RoPE); with one,
        rotated (see "How the keys are stored").
        """
        return self.k[layer]

    def values(self, layer: int) -> torch.Tensor:
        return self.v[layer]

    def _sink_history(self) -> torch.Tensor:
        """The sinks' keys as history ``(L, R, S*tpf, H, D)``: ``sink_keys`` when keys are rotated, else the sink slots."""
        if self.sink_keys is not None:
            return self.sink_keys
        return self.k[:, :, : self.geometry.sink_frames * self.tokens_per_frame]

    # ------------------------------------------------------------- per chunk
    def plan(self, frames: int, write: torch.Tensor | None = None) -> ChunkLayout:
        """Positions, key mask and destinations of the next chunk of ``frames`` frames (device ops only)."""
        g = self.geometry
        if not 1 <= frames <= g.chunk_frames:
            raise InputError(f"a chunk has 1..{g.chunk_frames} frames for this cache (chunk_frames), got {frames}")
        device = self.device
        writes_all = write is None
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
            needs_mask=not (frames == C and min(self.frames_at_least) >= S + W),
            writes_all=writes_all,
        )

    def store(self, layer: int, layout: ChunkLayout, k: torch.Tensor, v: torch.Tensor) -> None:
        """Put a chunk's K/V ``(R, frames*tokens_per_frame, heads, head_dim)`` into the scratch slots.

        With a rotation, ``k`` must already be rotated at ``layout.query_frames``.
        """
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
        if self.sink_keys is not None:
            self._keep_written_sinks(layout)
        adaptive = g.adaptive_sink_threshold is not None
        if adaptive:
            for j in range(layout.frames):
                self._maybe_replace_sink(layout, j)
        self.frames_written.add_(layout.write.to(torch.int64) * layout.frames)
        if layout.writes_all:
            self._set_frames_at_least([n + layout.frames for n in self.frames_at_least])
        self._refresh_sinks(time_only=not adaptive)

    def frame_slot(self, frame: int) -> int:
        """The slot (sink or ring) that holds absolute frame ``frame`` of a row once committed."""
        g = self.geometry
        return frame if frame < g.sink_frames else g.sink_frames + (frame - g.sink_frames) % g.ring_frames

    def replace_frames(self, rows: Sequence[int], source: RollingKVCache, frames: Sequence[int]) -> None:
        """Overwrite history frames of ``rows`` with those of ``source`` (a re-cache; rotated keys only).

        ``source`` has ``len(rows)`` rows and the same geometry; its frame
        ``j`` (written from an empty cache, so rotated at index ``j``) is
        this cache's absolute frame ``frames[j]``: sinks are copied, ring
        keys are advanced by ``frames[j] - j`` and land in their ring slot.
        Frame counters do not change. The caller saves the cache first if
        the change must be undoable (:meth:`CommitJournal.save_cache`).
        """
        if self.rotation is None:
            raise ConfigError("replace_frames needs a cache that stores rotated keys")
        tpf = self.tokens_per_frame
        index = torch.as_tensor(list(rows), device=self.device, dtype=torch.long)
        for j, frame in enumerate(frames):
            src = slice(source.frame_slot(j) * tpf, (source.frame_slot(j) + 1) * tpf)
            dst = slice(self.frame_slot(frame) * tpf, (self.frame_slot(frame) + 1) * tpf)
            if frame < self.geometry.sink_frames:
                self.sink_keys[:, index, dst] = source.sink_keys[:, :, src]
            else:
                keys = source.k[:, :, src]
                if frame != j:
                    keys = self.rotation.shift_time(keys, torch.full((1, 1), frame - j, device=self.device, dtype=torch.int64))
                self.k[:, index, dst] = keys
            self.v[:, index, dst] = source.v[:, :, src]
        self._refresh_sinks(time_only=False)

    def _commit_destination(self, layout: ChunkLayout) -> torch.Tensor:
        """``(R, frames * tokens_per_frame)`` token slots a commit writes, per row.

        Rows that do not write copy their scratch onto itself: same work for every row, no branch.
        """
        g = self.geometry
        start = g.scratch_start
        scratch_tokens = torch.arange(start, start + layout.frames * g.tokens_per_frame, device=self.device)[None, :]
        return torch.where(layout.write[:, None], layout.destination_tokens, scratch_tokens)

    def _keep_written_sinks(self, layout: ChunkLayout) -> None:
        """Copy the sink slots this commit wrote (a row's first ``S`` frames) into ``sink_keys``."""
        g = self.geometry
        S, tpf = g.sink_frames, g.tokens_per_frame
        sinks = torch.arange(S, device=self.device)
        written = layout.write[:, None] & (layout.query_frames[:, :, None] == sinks).any(dim=1)  # (R, S)
        slots = self.k[:, :, : S * tpf].unflatten(2, (S, tpf))
        history = self.sink_keys.unflatten(2, (S, tpf))
        history.copy_(torch.where(written[None, :, :, None, None, None], slots, history))

    def _refresh_sinks(self, time_only: bool) -> None:
        """Sink slots := the sinks' history advanced by each row's shift (rotated keys only; see module docstring).

        ``time_only``: rewrite only the time channels, valid when the other
        channels of the slots already equal the history's (every commit
        keeps them equal unless an adaptive sink replaced one).
        """
        if self.sink_keys is None:
            return
        g = self.geometry
        shift = (self.frames_written - g.sink_frames - g.ring_frames).clamp(min=0)[None, :]  # (1, R): per row
        slots = self.k[:, :, : g.sink_frames * g.tokens_per_frame]
        if time_only:
            slots[..., : self.rotation.time_dim] = self.rotation.shifted_time_channels(self.sink_keys, shift)
        else:
            slots.copy_(self.rotation.shift_time(self.sink_keys, shift))

    def _maybe_replace_sink(self, layout: ChunkLayout, frame: int) -> None:
        """Replace, per layer and row, the least similar sink by frame ``frame`` of the chunk if no sink is similar.

        Similarity is measured on raw (pre-RoPE) keys, so a frame's time
        position does not count; a replacing frame's keys are re-rotated to
        the sink's position.
        """
        g = self.geometry
        S, tpf = g.sink_frames, g.tokens_per_frame
        start = g.scratch_start + frame * tpf
        eligible = layout.write & (layout.query_frames[:, frame] >= S)  # (R,)
        new_k = self.k[:, :, start : start + tpf]  # (L, R, tpf, H, D)
        new_v = self.v[:, :, start : start + tpf]
        sink_k = self._sink_history().unflatten(2, (S, tpf))  # (L, R, S, tpf, H, D)
        sink_v = self.v[:, :, : S * tpf].unflatten(2, (S, tpf))
        raw_new = self._raw_keys(new_k, layout.query_frames[:, frame : frame + 1])
        sink_positions = torch.arange(S, device=self.device).expand(self.rows, S)
        raw_sink = self._raw_keys(sink_k.flatten(2, 3), sink_positions).unflatten(2, (S, tpf))
        new_mean = raw_new.float().mean(dim=2).flatten(-2)  # (L, R, H*D)
        sink_mean = raw_sink.float().mean(dim=3).flatten(-2)  # (L, R, S, H*D)
        similarity = torch.nn.functional.cosine_similarity(sink_mean, new_mean[:, :, None], dim=-1)  # (L, R, S)
        replace = eligible[None, :] & (similarity.amax(dim=-1) < g.adaptive_sink_threshold)  # (L, R)
        target = similarity.argmin(dim=-1)  # (L, R)
        chosen = replace[..., None] & (torch.arange(S, device=self.device) == target[..., None])  # (L, R, S)
        chosen = chosen[..., None, None, None]
        replacement = new_k
        if self.rotation is not None:  # rotated at the frame's index; a sink's keys are rotated at its slot
            replacement = self.rotation.shift_time(new_k, target - layout.query_frames[None, :, frame])
        sink_k.copy_(torch.where(chosen, replacement[:, :, None], sink_k))
        sink_v.copy_(torch.where(chosen, new_v[:, :, None], sink_v))

    def _raw_keys(self, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``keys (L, R, F*tpf, H, D)`` rotated at frame ``positions (R, F)`` → pre-RoPE keys (as given without a rotation)."""
        if self.rotation is None:
            return keys
        layers = keys.shape[0]
        flat = self.rotation.unrotate(keys.flatten(0, 1), positions.repeat(layers, 1))
        return flat.unflatten(0, (layers, self.rows))


@dataclass(frozen=True)
class _CommitUndo:
    """What one commit overwrote in one cache (or row view): enough to write it back."""

    cache: RollingKVCache
    rows: torch.Tensor  # (R, 1) row indices of the cache
    tokens: torch.Tensor  # (R, count) token slots the commit wrote
    keys: torch.Tensor  # (L, R, count, H, D) their previous content
    values: torch.Tensor
    sink_keys: torch.Tensor | None  # (L, R, S*tpf, H, D) the sinks' key history, when the commit may change it
    sink_values: torch.Tensor | None  # (L, R, S*tpf, H, D) with adaptive sinks
    frames_written: torch.Tensor  # (R,)
    frames_at_least: tuple[int, ...]

    def apply(self) -> None:
        cache = self.cache
        cache.k[:, self.rows, self.tokens] = self.keys
        cache.v[:, self.rows, self.tokens] = self.values
        if self.sink_keys is not None:
            cache._sink_history().copy_(self.sink_keys)
        if self.sink_values is not None:
            cache.v[:, :, : self.sink_values.shape[2]] = self.sink_values
        cache.restore_counters(self.frames_written, self.frames_at_least)


@dataclass(frozen=True)
class _CacheSnapshot:
    """A whole cache's content, saved before a change that is not a commit (a re-cache)."""

    cache: RollingKVCache
    keys: torch.Tensor
    values: torch.Tensor
    sink_keys: torch.Tensor | None
    frames_written: torch.Tensor
    frames_at_least: tuple[int, ...]

    def apply(self) -> None:
        self.cache.k.copy_(self.keys)
        self.cache.v.copy_(self.values)
        if self.sink_keys is not None:
            self.cache.sink_keys.copy_(self.sink_keys)
        self.cache.restore_counters(self.frames_written, self.frames_at_least)


class CommitJournal:
    """Undo log of the commits made to one cache (and its row views) since the journal was attached.

    Cost per commit: one chunk's K/V per row (plus the sinks with adaptive
    sinks or while a row fills its sinks), gathered on the device; never a
    copy of the whole cache. A journal is *open* until :meth:`close`; a
    closed journal refuses to undo.
    """

    def __init__(self) -> None:
        self._records: list[_CommitUndo | _CacheSnapshot] = []
        self.closed = False

    def __len__(self) -> int:
        return len(self._records)

    def save_before_commit(self, cache: RollingKVCache, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """Called by :meth:`RollingKVCache.commit` before it writes ``tokens`` of ``rows``."""
        if self.closed:
            return
        geometry = cache.geometry
        adaptive = geometry.adaptive_sink_threshold is not None
        filling_sinks = cache.sink_keys is not None and min(cache.frames_at_least) < geometry.sink_frames
        sink_tokens = geometry.sink_frames * cache.tokens_per_frame
        self._records.append(
            _CommitUndo(
                cache=cache,
                rows=rows,
                tokens=tokens,
                keys=cache.k[:, rows, tokens],  # advanced indexing: a copy
                values=cache.v[:, rows, tokens],
                sink_keys=cache._sink_history().clone() if adaptive or filling_sinks else None,
                sink_values=cache.v[:, :, :sink_tokens].clone() if adaptive else None,
                frames_written=cache.frames_written.clone(),
                frames_at_least=cache.frames_at_least,
            )
        )

    def save_cache(self, cache: RollingKVCache) -> None:
        """Save all of ``cache`` before a change that rewrites its history in place (a re-cache: rare, costs one cache copy)."""
        if self.closed:
            return
        self._records.append(
            _CacheSnapshot(
                cache=cache,
                keys=cache.k.clone(),
                values=cache.v.clone(),
                sink_keys=cache.sink_keys.clone() if cache.sink_keys is not None else None,
                frames_written=cache.frames_written.clone(),
                frames_at_least=cache.frames_at_least,
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
