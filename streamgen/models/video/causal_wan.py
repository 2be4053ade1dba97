"""Block-causal Wan DiT for streaming video: chunked forward over a rolling KV cache.

A causal student of Wan2.1 (CausVid, Self-Forcing, StreamDiffusionV2) has
exactly the weights of the bidirectional model; only the attention pattern
changes: a chunk of latent frames attends to earlier chunks and to itself,
never to later ones. So this class does not copy anything: it wraps a
diffusers ``WanTransformer3DModel`` and calls its modules (patch embedding,
condition embedder, each block's norms / projections / FFN /
``scale_shift_table``, the output head) in a forward of its own that
differs only in self-attention:

- :meth:`CausalWanTransformer.forward_chunks` runs one chunk of ``T'``
  frames for rows that belong to several caches (several streams): every
  projection, the FFN, cross-attention, modulation and the head run once
  over all rows; only self-attention is split into *segments*, each
  attending to its own :class:`~streamgen.models.video.kv_cache.RollingKVCache`
  (sinks + ring + the chunk's own keys). The caches are committed after the
  whole forward ran;
- :meth:`CausalWanTransformer.forward_chunk` is the one-cache case;
- :meth:`CausalWanTransformer.forward_block_causal` runs all ``T`` frames
  at once with a block-causal mask: the reference the chunked path must
  equal while the stream fits in the cache window.

Timesteps are per frame: the time embedding and the adaLN modulation are
computed once per frame and broadcast over its tokens (diffusers' per-token
path would run the time MLP once per token). Cross-attention K/V come from
:meth:`encode_context`, once per prompt.

A chunk forward is three parts, so that a runtime can compile the middle one
(:mod:`streamgen.runtime.compile_backend`):

1. *plan* (host + a few small device ops): check shapes, ask every cache for
   its :class:`~streamgen.models.video.kv_cache.ChunkLayout` and gather what
   the layers need into a :class:`PlannedChunk` of plain tensors and ints;
2. :meth:`CausalWanTransformer.chunk_core`: every layer, from those tensors
   only (no cache object, no Python state that changes between chunks). It
   has no ``.item()``, no ``.tolist()`` and no Python branch on tensor
   values, so torch.compile traces it as ONE graph and a CUDA graph can
   capture it;
3. *commit* each cache (after the whole forward ran).

RoPE: queries and the chunk's keys are rotated at their absolute frame index
and stored rotated; the cache keeps its sinks advanced to the window-relative
positions (see :mod:`streamgen.models.video.kv_cache`, "How the keys are
stored"), so attention reads each layer's K buffer as it is. Once a cache's
window is full, attention runs without a mask. It is an inference path:
cached keys are stored detached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import ConfigError, InputError
from .kv_cache import ChunkLayout, RollingKVCache
from .wan_context import CrossAttentionContext
from .wan_rope import WanRope, apply_rope

# (q, k, v) of one block, each (B, N, heads, head_dim) before RoPE -> attention output (B, heads, N, head_dim)
SelfAttention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# chunk_core(latents, timesteps, context, planned) -> flow prediction: the part a runtime may compile
ChunkCore = Callable[[torch.Tensor, torch.Tensor, CrossAttentionContext, "PlannedChunk"], torch.Tensor]


@dataclass(frozen=True)
class CacheSegment:
    """Consecutive rows of a batched forward that attend to one cache (a stream's cache or a row view of it).

    The segment has ``cache.rows`` rows; row ``r`` of the segment attends to
    row ``r`` of the cache. ``write`` (``(rows,)`` bool, default all) says
    which rows commit the chunk. Two segments of one forward must not share
    cache rows: each row's scratch slots hold that row's chunk.
    """

    cache: RollingKVCache
    write: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return self.cache.rows


@dataclass(frozen=True)
class SegmentBuffers:
    """One segment's part of a planned chunk: the K/V buffers its rows attend to, where the chunk goes, its mask.

    ``keys``/``values`` are the cache's ``(L, rows, capacity_tokens, H, D)``
    buffers (views for a row view); the segment's row count is their dim 1.
    """

    keys: torch.Tensor
    values: torch.Tensor
    scratch_start: int
    mask: torch.Tensor | None  # (rows, 1, 1, capacity_tokens) bool while the window fills; None once it is full

    @property
    def rows(self) -> int:
        return self.keys.shape[1]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q`` (rows, heads, N, D) and ``k`` (rows, N, heads, D) rotated, ``v`` (rows, N, heads, D) → (rows, heads, N, D)."""
        end = self.scratch_start + k.shape[1]
        self.keys[layer, :, self.scratch_start : end].copy_(k.detach())
        self.values[layer, :, self.scratch_start : end].copy_(v.detach())
        keys = self.keys[layer].to(q.dtype).transpose(1, 2)
        values = self.values[layer].to(q.dtype).transpose(1, 2)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=self.mask)


@dataclass(frozen=True)
class PlannedChunk:
    """Everything :meth:`CausalWanTransformer.chunk_core` needs besides latents, timesteps and context: tensors and ints.

    ``query_frames`` ``(B, T')`` is the absolute frame index of every row's
    chunk frames (what queries and the chunk's keys are rotated at);
    ``segments`` cover the batch rows in order.
    """

    query_frames: torch.Tensor
    segments: tuple[SegmentBuffers, ...]


@dataclass(frozen=True)
class EmbeddedChunk:
    """A chunk after patch and time embedding: hidden states, per-frame ``temb`` and block modulation, token grid."""

    x: torch.Tensor  # (B, T, tokens, dim)
    temb: torch.Tensor  # (B, T, dim)
    modulation: torch.Tensor  # (B, T, 6, dim)
    grid_h: int
    grid_w: int


class CausalWanTransformer(torch.nn.Module):
    """Block-causal wrapper around diffusers' ``WanTransformer3DModel`` (shares its modules and weights)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        config = transformer.config
        if tuple(config.patch_size)[0] != 1:
            raise ConfigError(f"causal Wan needs a temporal patch size of 1, got patch_size={tuple(config.patch_size)}")
        if config.image_dim is not None or config.added_kv_proj_dim is not None:
            raise ConfigError("causal Wan supports text-to-video transformers only (no image conditioning)")
        from ..loading.components import keep_fp32_modules  # noqa: PLC0415  (models.loading imports this module)

        keep_fp32_modules(transformer)  # diffusers keeps Wan's time embedder, modulation tables and norms in float32
        self.transformer = transformer
        self.rope = WanRope(transformer.rope)

    # ------------------------------------------------------------------ sizes
    @property
    def config(self):
        return self.transformer.config

    @property
    def num_layers(self) -> int:
        return len(self.transformer.blocks)

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def head_dim(self) -> int:
        return int(self.config.attention_head_dim)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(p) for p in self.config.patch_size)

    @property
    def in_channels(self) -> int:
        return int(self.config.in_channels)

    @property
    def out_channels(self) -> int:
        return int(self.config.out_channels or self.config.in_channels)

    @property
    def text_dim(self) -> int:
        return int(self.config.text_dim)

    @property
    def device(self) -> torch.device:
        return self._weight_reference().device

    @property
    def dtype(self) -> torch.dtype:
        return self._weight_reference().dtype

    def _weight_reference(self) -> torch.Tensor:
        """The patch embedding's weight, or any weight when this is a pipeline stage that holds only some blocks."""
        embedding = getattr(self.transformer, "patch_embedding", None)
        if embedding is not None:
            return embedding.weight
        parameters = list(self.transformer.parameters())
        return next((p for p in parameters if p.dtype != torch.float32), parameters[0])  # not a module kept in float32

    def tokens_per_frame(self, latent_h: int, latent_w: int) -> int:
        _, ph, pw = self.patch_size
        if latent_h % ph or latent_w % pw:
            raise InputError(f"latent size {latent_h}x{latent_w} is not divisible by the patch size {ph}x{pw}")
        return (latent_h // ph) * (latent_w // pw)

    def new_cache(
        self,
        rows: int,
        latent_h: int,
        latent_w: int,
        *,
        sink_frames: int = 3,
        ring_frames: int = 3,
        chunk_frames: int = 1,
        adaptive_sink_threshold: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        num_layers: int | None = None,
    ) -> RollingKVCache:
        """An empty cache for one stream of ``rows`` rows at this latent size (storing keys rotated: see kv_cache).

        ``num_layers`` (default: every block) is for a pipeline stage that holds some of the blocks.
        """
        if sink_frames + ring_frames + chunk_frames > self.rope.max_positions:
            raise ConfigError(
                f"cache window of {sink_frames + ring_frames + chunk_frames} frames exceeds the RoPE table "
                f"({self.rope.max_positions} positions)"
            )
        return RollingKVCache.allocate(
            self.num_layers if num_layers is None else num_layers,
            rows,
            self.tokens_per_frame(latent_h, latent_w),
            self.num_heads,
            self.head_dim,
            sink_frames,
            ring_frames,
            chunk_frames,
            device=self.device if device is None else device,
            dtype=self.dtype if dtype is None else dtype,
            adaptive_sink_threshold=adaptive_sink_threshold,
            rotation=self.rope.key_rotation(latent_h // self.patch_size[1], latent_w // self.patch_size[2]),
        )

    def fuse_projections(self) -> None:
        """Fuse Q/K/V (self-attention) and K/V (cross-attention) projections into single matmuls (diffusers')."""
        self.transformer.fuse_qkv_projections()

    # ---------------------------------------------------------------- context
    def encode_context(self, text_embeds: torch.Tensor) -> CrossAttentionContext:
        """Per-block cross-attention K/V for text embeddings ``(B, L, text_dim)``; compute once per prompt."""
        return self.context_of_blocks(self.embed_text(text_embeds), range(self.num_layers))

    def embed_text(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """The text encoder's output projected to the model width ``(B, L, dim)``: the input of every block's context."""
        if text_embeds.ndim != 3 or text_embeds.shape[-1] != self.text_dim:
            raise InputError(f"text embeddings must be (B, L, {self.text_dim}), got {tuple(text_embeds.shape)}")
        return self.transformer.condition_embedder.text_embedder(text_embeds.to(self.device, self.dtype))

    def context_of_blocks(self, text: torch.Tensor, blocks: range) -> CrossAttentionContext:
        """Cross-attention K/V of ``blocks`` (consecutive) for projected text ``(B, L, dim)``, indexed from 0."""
        keys, values = [], []
        for index in blocks:
            attn = self.transformer.blocks[index].attn2
            if getattr(attn, "fused_projections", False):
                k, v = attn.to_kv(text).chunk(2, dim=-1)
            else:
                k, v = attn.to_k(text), attn.to_v(text)
            k = attn.norm_k(k)
            keys.append(k.unflatten(2, (attn.heads, -1)).transpose(1, 2))
            values.append(v.unflatten(2, (attn.heads, -1)).transpose(1, 2))
        return CrossAttentionContext(torch.stack(keys), torch.stack(values))

    # ---------------------------------------------------------------- forward
    def forward_chunk(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        cache: RollingKVCache,
        context: CrossAttentionContext,
        *,
        write: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow prediction ``(R, C, T', h, w)`` for a chunk; row ``r`` attends to cache row ``r`` plus the chunk.

        ``timesteps`` is ``(R, T')`` in 0..1000. Afterwards the chunk's K/V
        are committed to the rows where ``write`` (default: all) is set.
        """
        return self.run_chunk(self.chunk_core, latents, timesteps, cache, context, write=write)

    def forward_chunks(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        segments: Sequence[CacheSegment | RollingKVCache],
        context: CrossAttentionContext,
    ) -> torch.Tensor:
        """One chunk for rows of several caches: ``latents`` rows are the segments' rows, in order.

        Every row runs the same chunk length and latent size; each segment's
        rows attend to their own cache only (plus their own chunk), with that
        cache's positions and mask, so a row gets exactly what a forward over
        its cache alone would give. ``context`` has 1 row or one per row
        (prompts may differ per row). After the whole forward ran, each
        cache is committed (none is if any layer raised).

        Why one SDPA call per segment instead of one over gathered caches:
        segments may differ in capacity (sink/ring sizes) and mask, and
        gathering the caches into one batch would copy every stream's whole
        K/V cache in every layer. The per-segment calls still carry all rows
        of their stream and all heads, and read the cache buffers in place;
        the extra cost is one kernel launch per segment and layer, while
        every matmul outside attention (the bulk of the FLOPs for short
        chunks) runs once over all rows.
        """
        return self.run_chunks(self.chunk_core, latents, timesteps, segments, context)

    def run_chunk(
        self,
        core: ChunkCore,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        cache: RollingKVCache,
        context: CrossAttentionContext,
        *,
        write: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`forward_chunk` with the layers run by ``core`` (:meth:`chunk_core` or a compiled version of it)."""
        rows = latents.shape[0] if latents.ndim == 5 else None
        if rows is not None and cache.rows != rows:
            raise InputError(f"latents have {rows} rows but the KV cache has {cache.rows}")
        return self.run_chunks(core, latents, timesteps, [CacheSegment(cache, write)], context)

    def run_chunks(
        self,
        core: ChunkCore,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        segments: Sequence[CacheSegment | RollingKVCache],
        context: CrossAttentionContext,
    ) -> torch.Tensor:
        """:meth:`forward_chunks` with the layers run by ``core``: plan, ``core``, commit (see module docstring)."""
        rows, _, frames, height, width = self.check_latents(latents, timesteps)
        segments = [s if isinstance(s, CacheSegment) else CacheSegment(s) for s in segments]
        self.check_segments(segments, rows, height, width)
        context = self._context_rows(context, rows)
        layouts, planned = plan_segments(segments, frames)
        out = core(latents, timesteps, context, planned)
        commit_segments(segments, layouts)
        return out

    def chunk_core(
        self, latents: torch.Tensor, timesteps: torch.Tensor, context: CrossAttentionContext, planned: PlannedChunk
    ) -> torch.Tensor:
        """Every layer of a planned chunk forward: stores the chunk's K/V into the caches' scratch slots; commits nothing.

        Only tensors and shapes: what torch.compile captures as one graph.
        """
        grid_h, grid_w = latents.shape[-2] // self.patch_size[1], latents.shape[-1] // self.patch_size[2]
        return self._forward(latents, timesteps, context, self.planned_attention(planned, grid_h, grid_w))

    def planned_attention(self, planned: PlannedChunk, grid_h: int, grid_w: int) -> SelfAttention:
        """Self-attention of a planned chunk: rotate at the rows' frame indices, attend per cache segment.

        ``layer`` is an index into the planned segments' K/V buffers (and the
        context): the block's own index for a whole model, its position in
        the stage for a stage that holds some of the blocks
        (:mod:`streamgen.parallel`).
        """
        cos, sin = self.rope.tables(planned.query_frames, grid_h, grid_w)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q = apply_rope(q, cos, sin).transpose(1, 2)
            k = apply_rope(k, cos, sin)
            outs, start = [], 0
            for segment in planned.segments:
                stop = start + segment.rows
                outs.append(segment.attend(layer, q[start:stop], k[start:stop], v[start:stop]))
                start = stop
            return outs[0] if len(outs) == 1 else torch.cat(outs)

        return attend

    def forward_block_causal(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        context: CrossAttentionContext,
        chunk_frames: int | Sequence[int] = 1,
    ) -> torch.Tensor:
        """All ``T`` frames in one forward with a block-causal mask (chunks of ``chunk_frames``, or the listed sizes)."""
        batch, _, frames, height, width = self.check_latents(latents, timesteps)
        sizes = _chunk_sizes(frames, chunk_frames)
        if frames > self.rope.max_positions:
            raise InputError(f"{frames} frames exceed the RoPE table ({self.rope.max_positions} positions)")
        context = self._context_rows(context, batch)
        device = latents.device
        tpf = self.tokens_per_frame(height, width)
        block_of_frame = torch.repeat_interleave(
            torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device)
        )
        block_of_token = block_of_frame.repeat_interleave(tpf)
        mask = (block_of_token[None, :] <= block_of_token[:, None])[None, None]
        positions = torch.arange(frames, device=device)[None, :].expand(batch, frames)
        grid_h, grid_w = height // self.patch_size[1], width // self.patch_size[2]
        cos, sin = self.rope.tables(positions, grid_h, grid_w)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q = apply_rope(q, cos, sin).transpose(1, 2)
            k = apply_rope(k, cos, sin).transpose(1, 2)
            return F.scaled_dot_product_attention(q, k, v.transpose(1, 2), attn_mask=mask)

        return self._forward(latents, timesteps, context, attend)

    # --------------------------------------------------------------- internals
    def check_latents(self, latents: torch.Tensor, timesteps: torch.Tensor) -> tuple[int, int, int, int, int]:
        if latents.ndim != 5 or latents.shape[1] != self.in_channels:
            raise InputError(f"latents must be (B, {self.in_channels}, T, h, w), got {tuple(latents.shape)}")
        batch, channels, frames, height, width = latents.shape
        if timesteps.shape != (batch, frames):
            raise InputError(f"timesteps must be (B, T) = ({batch}, {frames}), got {tuple(timesteps.shape)}")
        self.tokens_per_frame(height, width)
        return batch, channels, frames, height, width

    def check_segments(self, segments: list[CacheSegment], rows: int, height: int, width: int) -> None:
        if not segments:
            raise InputError("a chunk forward needs at least one cache segment")
        if sum(segment.rows for segment in segments) != rows:
            counts = [segment.rows for segment in segments]
            raise InputError(f"latents have {rows} rows but the cache segments have {counts} (sum {sum(counts)})")
        tokens = self.tokens_per_frame(height, width)
        for segment in segments:
            if segment.cache.tokens_per_frame != tokens:
                raise InputError(
                    f"latent size {height}x{width} gives {tokens} tokens per frame; "
                    f"the KV cache was made for {segment.cache.tokens_per_frame}"
                )

    def _context_rows(self, context: CrossAttentionContext, rows: int) -> CrossAttentionContext:
        if context.num_layers != self.num_layers:
            raise InputError(f"context has {context.num_layers} layers, the model {self.num_layers}")
        if context.rows not in (1, rows):
            raise InputError(f"context has {context.rows} rows, expected 1 or {rows}")
        return context.expand(rows)

    def _forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, context: CrossAttentionContext, attend: SelfAttention
    ) -> torch.Tensor:
        embedded = self.embed(latents, timesteps)
        x = self.run_blocks(embedded.x, embedded.modulation, context, attend, range(self.num_layers))
        return self.head(x, embedded)

    def embed(self, latents: torch.Tensor, timesteps: torch.Tensor) -> EmbeddedChunk:
        """Patch embedding and per-frame time embedding: what the blocks and the head take besides the context.

        Row by row: a convolution or a small matmul over 1 row may round
        differently from the same row inside a batch of 4 (another kernel),
        and the blocks and the head are row-invariant already (their matmuls
        run over every token), so embedding each row alone makes a row's
        flow prediction independent of which rows share its forward. The
        pipeline stages rely on it (their micro-batches form as work arrives);
        the cost is a few small kernel launches per forward.
        """
        if latents.shape[0] > 1:
            rows = [self._embed(latents[i : i + 1], timesteps[i : i + 1]) for i in range(latents.shape[0])]
            first = rows[0]
            return EmbeddedChunk(
                torch.cat([r.x for r in rows]), torch.cat([r.temb for r in rows]), torch.cat([r.modulation for r in rows]),
                first.grid_h, first.grid_w,
            )
        return self._embed(latents, timesteps)

    def _embed(self, latents: torch.Tensor, timesteps: torch.Tensor) -> EmbeddedChunk:
        tr = self.transformer
        x = tr.patch_embedding(latents.to(self.dtype))  # (B, dim, T, gh, gw)
        _, _, frames, grid_h, grid_w = x.shape
        x = x.flatten(3).permute(0, 2, 3, 1).contiguous()  # (B, T, tokens, dim): frame-major like diffusers
        temb, modulation = self._time_embedding(timesteps, x.dtype)
        return EmbeddedChunk(x, temb, modulation, grid_h, grid_w)

    def run_blocks(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor,
        context: CrossAttentionContext,
        attend: SelfAttention,
        blocks: range,
    ) -> torch.Tensor:
        """Blocks ``blocks`` (consecutive) over ``x``; ``context`` and ``attend`` index them from 0 (the first of ``blocks``)."""
        for layer, index in enumerate(blocks):
            x = self._block(layer, self.transformer.blocks[index], x, modulation, context, attend)
        return x

    def head(self, x: torch.Tensor, embedded: EmbeddedChunk) -> torch.Tensor:
        """Output norm, projection and unpatchify: hidden states → flow prediction ``(B, C, T, h, w)``."""
        return self._head(x, embedded.temb, x.shape[1], embedded.grid_h, embedded.grid_w)

    def _time_embedding(self, timesteps: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``temb (B, T, dim)`` and block modulation input ``(B, T, 6, dim)``, once per frame."""
        embedder = self.transformer.condition_embedder
        sinusoid = embedder.timesteps_proj(timesteps.flatten()).unflatten(0, timesteps.shape)
        mlp_dtype = embedder.time_embedder.linear_1.weight.dtype
        if sinusoid.dtype != mlp_dtype and mlp_dtype != torch.int8:
            sinusoid = sinusoid.to(mlp_dtype)
        temb = embedder.time_embedder(sinusoid).to(dtype)
        modulation = embedder.time_proj(embedder.act_fn(temb)).unflatten(-1, (6, -1))
        return temb, modulation

    def _block(
        self,
        layer: int,
        block: torch.nn.Module,
        x: torch.Tensor,
        modulation: torch.Tensor,
        context: CrossAttentionContext,
        attend: SelfAttention,
    ) -> torch.Tensor:
        """One ``WanTransformerBlock`` with per-frame modulation; ``x`` is ``(B, T, tokens, dim)``."""
        shift, scale, gate, c_shift, c_scale, c_gate = (block.scale_shift_table + modulation.float()).chunk(6, dim=2)
        h = (block.norm1(x.float()) * (1 + scale) + shift).type_as(x)
        x = (x.float() + self._self_attention(layer, block.attn1, h, attend) * gate).type_as(x)
        h = block.norm2(x.float()).type_as(x)
        x = x + self._cross_attention(block.attn2, h, *context.layer(layer))
        h = (block.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
        return (x.float() + block.ffn(h).float() * c_gate).type_as(x)

    def _self_attention(self, layer: int, attn: torch.nn.Module, h: torch.Tensor, attend: SelfAttention) -> torch.Tensor:
        tokens = h.flatten(1, 2)
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(tokens).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
        q, k = attn.norm_q(q), attn.norm_k(k)
        heads = (attn.heads, -1)
        out = attend(layer, q.unflatten(2, heads), k.unflatten(2, heads), v.unflatten(2, heads))
        out = out.transpose(1, 2).flatten(2).type_as(q)
        return attn.to_out[1](attn.to_out[0](out)).view_as(h)

    @staticmethod
    def _cross_attention(attn: torch.nn.Module, h: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        tokens = h.flatten(1, 2)
        q = attn.norm_q(attn.to_q(tokens)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, keys, values).transpose(1, 2).flatten(2).type_as(q)
        return attn.to_out[1](attn.to_out[0](out)).view_as(h)

    def _head(self, x: torch.Tensor, temb: torch.Tensor, frames: int, grid_h: int, grid_w: int) -> torch.Tensor:
        tr = self.transformer
        shift, scale = (tr.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)  # (B, T, 1, dim)
        x = (tr.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = tr.proj_out(x)  # (B, T, tokens, C * pt * ph * pw)
        pt, ph, pw = self.patch_size
        x = x.reshape(x.shape[0], frames, grid_h, grid_w, pt, ph, pw, -1)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def plan_segments(segments: Sequence[CacheSegment], frames: int) -> tuple[list[ChunkLayout], PlannedChunk]:
    """Each segment's cache layout for a chunk of ``frames`` frames, gathered into what the layers read.

    One mask decision per forward: every segment gets its mask while any
    needs one (an all-True mask costs nothing in correctness), so a compiled
    core sees 2 mask patterns, not one per subset of warming streams.
    """
    layouts = [segment.cache.plan(frames, segment.write) for segment in segments]
    masked = any(layout.needs_mask for layout in layouts)
    planned = PlannedChunk(
        query_frames=layouts[0].query_frames if len(layouts) == 1 else torch.cat([l.query_frames for l in layouts]),
        segments=tuple(
            SegmentBuffers(s.cache.k, s.cache.v, s.cache.geometry.scratch_start, layout.attention_mask if masked else None)
            for s, layout in zip(segments, layouts)
        ),
    )
    return layouts, planned


def commit_segments(segments: Sequence[CacheSegment], layouts: Sequence[ChunkLayout]) -> None:
    """Commit the chunk into every segment's cache (after every layer ran)."""
    for segment, layout in zip(segments, layouts):
        segment.cache.commit(layout)


def _chunk_sizes(frames: int, chunk_frames: int | Sequence[int]) -> list[int]:
    if isinstance(chunk_frames, int):
        if chunk_frames < 1:
            raise InputError(f"chunk_frames must be >= 1, got {chunk_frames}")
        sizes = [chunk_frames] * (frames // chunk_frames)
        if frames % chunk_frames:
            sizes.append(frames % chunk_frames)
        return sizes
    sizes = [int(s) for s in chunk_frames]
    if any(s < 1 for s in sizes) or sum(sizes) != frames:
        raise InputError(f"chunk sizes {sizes} must be positive and sum to the {frames} frames")
    return sizes
