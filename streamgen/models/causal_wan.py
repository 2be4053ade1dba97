"""Block-causal Wan DiT for streaming video: chunked forward over a rolling KV cache.

A causal student of Wan2.1 (CausVid, Self-Forcing, StreamDiffusionV2) has
exactly the weights of the bidirectional model; only the attention pattern
changes: a chunk of latent frames attends to earlier chunks and to itself,
never to later ones. So this class does not copy anything: it wraps a
diffusers ``WanTransformer3DModel`` and calls its modules (patch embedding,
condition embedder, each block's norms / projections / FFN /
``scale_shift_table``, the output head) in a forward of its own that
differs only in self-attention:

- :meth:`CausalWanTransformer.forward_chunk` runs one chunk of ``T'``
  frames against a :class:`~streamgen.pipeline.kv_cache.RollingKVCache`
  (sinks + ring + the chunk's own keys, one SDPA call per block), then
  commits the chunk to the cache;
- :meth:`CausalWanTransformer.forward_block_causal` runs all ``T`` frames
  at once with a block-causal mask: the reference the chunked path must
  equal while the stream fits in the cache window.

Timesteps are per frame: the time embedding and the adaLN modulation are
computed once per frame and broadcast over its tokens (diffusers' per-token
path would run the time MLP once per token). Cross-attention K/V come from
:meth:`encode_context`, once per prompt.

The per-chunk path has no ``.item()``, no ``.tolist()`` and no Python
branch on tensor values: masks and positions are built on the device, so
the call can be captured in a CUDA graph. It is an inference path: cached
keys are stored detached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from ..pipeline.kv_cache import RollingKVCache
from .wan_context import CrossAttentionContext
from .wan_rope import WanRope, apply_rope

# (q, k, v) of one block, each (B, N, heads, head_dim) before RoPE -> attention output (B, heads, N, head_dim)
SelfAttention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CausalWanTransformer(torch.nn.Module):
    """Block-causal wrapper around diffusers' ``WanTransformer3DModel`` (shares its modules and weights)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        config = transformer.config
        if tuple(config.patch_size)[0] != 1:
            raise ConfigError(f"causal Wan needs a temporal patch size of 1, got patch_size={tuple(config.patch_size)}")
        if config.image_dim is not None or config.added_kv_proj_dim is not None:
            raise ConfigError("causal Wan supports text-to-video transformers only (no image conditioning)")
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
        return self.transformer.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.patch_embedding.weight.dtype

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
    ) -> RollingKVCache:
        """An empty cache for one stream of ``rows`` rows at this latent size."""
        if sink_frames + ring_frames + chunk_frames > self.rope.max_positions:
            raise ConfigError(
                f"cache window of {sink_frames + ring_frames + chunk_frames} frames exceeds the RoPE table "
                f"({self.rope.max_positions} positions)"
            )
        return RollingKVCache.allocate(
            self.num_layers,
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
        )

    def fuse_projections(self) -> None:
        """Fuse Q/K/V (self-attention) and K/V (cross-attention) projections into single matmuls (diffusers')."""
        self.transformer.fuse_qkv_projections()

    # ---------------------------------------------------------------- context
    def encode_context(self, text_embeds: torch.Tensor) -> CrossAttentionContext:
        """Per-block cross-attention K/V for text embeddings ``(B, L, text_dim)``; compute once per prompt."""
        if text_embeds.ndim != 3 or text_embeds.shape[-1] != self.text_dim:
            raise InputError(f"text embeddings must be (B, L, {self.text_dim}), got {tuple(text_embeds.shape)}")
        text = self.transformer.condition_embedder.text_embedder(text_embeds.to(self.device, self.dtype))
        keys, values = [], []
        for block in self.transformer.blocks:
            attn = block.attn2
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
        rows, _, frames, height, width = self._check_latents(latents, timesteps)
        if cache.rows != rows:
            raise InputError(f"latents have {rows} rows but the KV cache has {cache.rows}")
        if cache.tokens_per_frame != self.tokens_per_frame(height, width):
            raise InputError(
                f"latent size {height}x{width} gives {self.tokens_per_frame(height, width)} tokens per frame; "
                f"the KV cache was made for {cache.tokens_per_frame}"
            )
        context = self._context_rows(context, rows)
        layout = cache.plan(frames, write)
        grid_h, grid_w = height // self.patch_size[1], width // self.patch_size[2]
        query_cos, query_sin = self.rope.tables(layout.query_positions, grid_h, grid_w)
        key_cos, key_sin = self.rope.tables(layout.key_positions, grid_h, grid_w)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            cache.store(layer, layout, k, v)
            q = apply_rope(q, query_cos, query_sin).transpose(1, 2)
            keys = apply_rope(cache.keys(layer), key_cos, key_sin).to(q.dtype).transpose(1, 2)
            values = cache.values(layer).to(q.dtype).transpose(1, 2)
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=layout.attention_mask)

        out = self._forward(latents, timesteps, context, attend)
        cache.commit(layout)
        return out

    def forward_block_causal(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        context: CrossAttentionContext,
        chunk_frames: int | Sequence[int] = 1,
    ) -> torch.Tensor:
        """All ``T`` frames in one forward with a block-causal mask (chunks of ``chunk_frames``, or the listed sizes)."""
        batch, _, frames, height, width = self._check_latents(latents, timesteps)
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
    def _check_latents(self, latents: torch.Tensor, timesteps: torch.Tensor) -> tuple[int, int, int, int, int]:
        if latents.ndim != 5 or latents.shape[1] != self.in_channels:
            raise InputError(f"latents must be (B, {self.in_channels}, T, h, w), got {tuple(latents.shape)}")
        batch, channels, frames, height, width = latents.shape
        if timesteps.shape != (batch, frames):
            raise InputError(f"timesteps must be (B, T) = ({batch}, {frames}), got {tuple(timesteps.shape)}")
        self.tokens_per_frame(height, width)
        return batch, channels, frames, height, width

    def _context_rows(self, context: CrossAttentionContext, rows: int) -> CrossAttentionContext:
        if context.num_layers != self.num_layers:
            raise InputError(f"context has {context.num_layers} layers, the model {self.num_layers}")
        if context.rows not in (1, rows):
            raise InputError(f"context has {context.rows} rows, expected 1 or {rows}")
        return context.expand(rows)

    def _forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, context: CrossAttentionContext, attend: SelfAttention
    ) -> torch.Tensor:
        tr = self.transformer
        x = tr.patch_embedding(latents.to(self.dtype))  # (B, dim, T, gh, gw)
        _, _, frames, grid_h, grid_w = x.shape
        x = x.flatten(3).permute(0, 2, 3, 1).contiguous()  # (B, T, tokens, dim): frame-major like diffusers
        temb, modulation = self._time_embedding(timesteps, x.dtype)
        for layer, block in enumerate(tr.blocks):
            x = self._block(layer, block, x, modulation, context, attend)
        return self._head(x, temb, frames, grid_h, grid_w)

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
