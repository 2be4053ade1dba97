"""What one stage rank holds and does: its blocks, their KV-cache layers per stream, their prompt contexts.

Every rank (the driver included, for its own blocks) keeps a
:class:`StageShard`. The driver names caches and contexts by integer ids;
each operation below is applied by every rank to its own layers, in the
same order (the ring preserves it), so the shards stay exactly what the
corresponding layers of a single-process cache and context would be:

- a cache is a :class:`~streamgen.models.video.kv_cache.RollingKVCache`
  over the rank's blocks only; its frame counters evolve identically on
  every rank because every rank plans and commits the same chunks;
- a context is a :class:`~streamgen.models.video.wan_context.CrossAttentionContext`
  over the rank's blocks, computed from the projected text the driver
  sends, or blended from two others (a prompt transition): a blend of the
  layers is the layers of the blend;
- a forward runs the rank's blocks over hidden states the previous rank
  sent, for rows that attend to (row views of) its caches, then commits
  the chunk into them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models.video.causal_wan import CacheSegment, CausalWanTransformer, commit_segments, plan_segments
from ..frames import model_to_uint8
from ..models.video.kv_cache import RollingKVCache
from ..models.video.stream_vae import DecodeState, StreamingWanVAE
from ..models.video.wan_context import CrossAttentionContext


@dataclass(frozen=True)
class SegmentSpec:
    """Rows ``start:stop`` of cache ``cache_id`` attend together; ``write`` (per row, None = all) commits the chunk."""

    cache_id: int
    start: int
    stop: int
    write: tuple[bool, ...] | None = None

    def to_json(self) -> list[Any]:
        return [self.cache_id, self.start, self.stop, None if self.write is None else list(self.write)]

    @classmethod
    def from_json(cls, value: Sequence[Any]) -> SegmentSpec:
        cache_id, start, stop, write = value
        return cls(int(cache_id), int(start), int(stop), None if write is None else tuple(bool(w) for w in write))


@dataclass(frozen=True)
class RowContexts:
    """Which context each batch row uses: ``(context_id, row of that context)`` per row."""

    rows: tuple[tuple[int, int], ...]

    def to_json(self) -> list[list[int]]:
        return [list(r) for r in self.rows]

    @classmethod
    def from_json(cls, value: Sequence[Sequence[int]]) -> RowContexts:
        return cls(tuple((int(c), int(r)) for c, r in value))


class StageShard:
    """One rank's blocks ``blocks`` of ``model`` (a pruned transformer) and the per-stream data of those blocks."""

    def __init__(self, model: CausalWanTransformer, blocks: range, vae: StreamingWanVAE | None = None) -> None:
        self.model = model
        self._blocks = blocks
        self.acceleration = "none"
        self._core: Any = None
        self.caches: dict[int, RollingKVCache] = {}
        self.contexts: dict[int, CrossAttentionContext] = {}
        self.vae = vae
        self.decoders: dict[int, DecodeState] = {}

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def blocks(self) -> range:
        return self._blocks

    @blocks.setter
    def blocks(self, blocks: range) -> None:
        """A rebalance gave the rank other blocks: a compiled core is made again for them (on first use)."""
        self._blocks = blocks
        self._core = None

    def accelerate(self, acceleration: str) -> None:
        """``"compile"``: the rank's blocks run as one torch.compile graph (planning and committing stay eager)."""
        if acceleration not in ("none", "compile"):
            raise ValueError(f"pipeline stages run eager or compiled blocks, not {acceleration!r}")
        self.acceleration = acceleration
        self._core = None

    def _blocks_core(self) -> Any:
        """The rank's layers over plain tensors (what one graph captures), compiled once per block range."""
        if self._core is None:
            from ..runtime.compile_backend import compiled_call  # noqa: PLC0415

            model, blocks = self.model, self._blocks

            def layers(x, modulation, context, planned, grid_h, grid_w):
                return model.run_blocks(x, modulation, context, model.planned_attention(planned, grid_h, grid_w), blocks)

            self._core = compiled_call(f"stage blocks {blocks.start}-{blocks.stop - 1}", layers)
        return self._core

    # ---------------------------------------------------------------- caches
    def new_cache(self, cache_id: int, rows: int, latent_h: int, latent_w: int, options: dict[str, Any]) -> RollingKVCache:
        cache = self.model.new_cache(rows, latent_h, latent_w, num_layers=len(self.blocks), **options)
        self.caches[cache_id] = cache
        return cache

    def drop_cache(self, cache_id: int) -> None:
        self.caches.pop(cache_id, None)

    # -------------------------------------------------------------- decoders
    def new_decoder(self, decoder_id: int) -> None:
        if self.vae is not None:
            self.decoders[decoder_id] = self.vae.new_decode_state()

    def reset_decoder(self, decoder_id: int) -> None:
        if self.vae is not None:
            self.decoders[decoder_id].reset()

    def drop_decoder(self, decoder_id: int) -> None:
        self.decoders.pop(decoder_id, None)

    def decode(self, latents: torch.Tensor, decoder_ids: Sequence[int]) -> list[torch.Tensor]:
        """Clean latents ``(k, C, T', h, w)`` of k streams' chunks → each chunk's frames ``(t, H, W, 3)`` uint8.

        One VAE call per group of streams whose decode caches stack, as the
        one-process pipeline decodes.
        """
        videos = self.vae.decode_batch(list(latents.split(1)), [self.decoders[i] for i in decoder_ids])
        return [model_to_uint8(video[0].transpose(0, 1)) for video in videos]

    # -------------------------------------------------------------- contexts
    def define_context(self, context_id: int, text: torch.Tensor) -> CrossAttentionContext:
        context = self.model.context_of_blocks(text.to(self.device, self.model.dtype), self.blocks)
        self.contexts[context_id] = context
        return context

    def blend_context(self, context_id: int, start: int, target: int, weight: float) -> CrossAttentionContext:
        context = self.contexts[start].lerp(self.contexts[target], weight)
        self.contexts[context_id] = context
        return context

    def drop_context(self, context_id: int) -> None:
        self.contexts.pop(context_id, None)

    def row_context(self, rows: RowContexts) -> CrossAttentionContext:
        """The context of a forward's rows, built as the single-process pipeline builds it (shared, or rows concatenated)."""
        first = rows.rows[0][0]
        if all(c == first for c, _ in rows.rows) and self.contexts[first].rows == 1:
            return self.contexts[first].expand(len(rows.rows))
        return CrossAttentionContext.concat([self.contexts[c].select(slice(r, r + 1)) for c, r in rows.rows])

    # --------------------------------------------------------------- forward
    def run(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor,
        frames: int,
        grid: tuple[int, int],
        segments: Sequence[SegmentSpec],
        rows: RowContexts,
    ) -> torch.Tensor:
        """This rank's blocks over hidden states ``x`` (B, T, tokens, dim); commits the chunk into the caches."""
        cache_segments = [self._segment(spec) for spec in segments]
        layouts, planned = plan_segments(cache_segments, frames)
        context = self.row_context(rows)
        if self.acceleration == "compile":
            out = self._blocks_core()(x, modulation, context, planned, *grid)
        else:
            out = self.model.run_blocks(x, modulation, context, self.model.planned_attention(planned, *grid), self.blocks)
        commit_segments(cache_segments, layouts)
        return out

    def _segment(self, spec: SegmentSpec) -> CacheSegment:
        cache = self.caches[spec.cache_id].row_view(spec.start, spec.stop)
        write = None if spec.write is None else torch.tensor(spec.write, dtype=torch.bool, device=cache.device)
        return CacheSegment(cache, write)

    # ------------------------------------------------------------- inventory
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def cache_bytes(self) -> int:
        return sum(cache.nbytes for cache in self.caches.values())



def shard_inventory(shard: StageShard, rank: int, vae: torch.nn.Module | None = None) -> dict[str, Any]:
    """One rank's line of :meth:`~streamgen.parallel.driver.StageDriver.inventory` (``vae``: what it holds of the VAE)."""
    vae = vae if vae is not None else (shard.vae.vae if shard.vae is not None else None)
    memory = torch.cuda.memory_allocated(shard.device) if shard.device.type == "cuda" else None
    return {
        "rank": rank,
        "device": str(shard.device),
        "blocks": [shard.blocks.start, shard.blocks.stop],
        "parameters": shard.parameter_count(),
        "parameter_bytes": sum(p.numel() * p.element_size() for p in shard.model.parameters()),
        "vae_parameters": sum(p.numel() for p in vae.parameters()) if vae is not None else 0,
        "decoders": len(shard.decoders),
        "kv_cache_bytes": shard.cache_bytes(),
        "contexts": len(shard.contexts),
        "acceleration": shard.acceleration,
        "compiled": shard._core is not None,
        "device_allocated_bytes": memory,
    }
