"""Wan's 3-D rotary position embedding at arbitrary time positions.

diffusers' ``WanRotaryPosEmbed`` returns the tables for frames ``0..T-1`` of
one clip. A causal stream needs them for *chosen* time positions (a chunk in
the middle of a stream, cached frames given window-relative positions), per
row. This module reads the same frequency buffers (so the angles are exactly
diffusers') and builds per-token ``cos``/``sin`` tables for a tensor of time
positions with pure indexing: no host sync, so it can sit inside a CUDA graph.

The tables are built once per chunk and shared by every transformer block.
"""

from __future__ import annotations

import torch


class WanRope:
    """Per-token RoPE tables from a diffusers ``WanRotaryPosEmbed`` (shares its buffers)."""

    def __init__(self, rope: torch.nn.Module) -> None:
        self._rope = rope
        self.split = (rope.t_dim, rope.h_dim, rope.w_dim)
        self.max_positions = int(rope.max_seq_len)

    def _parts(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        cos = self._rope.freqs_cos.split(self.split, dim=1)
        sin = self._rope.freqs_sin.split(self.split, dim=1)
        return cos, sin

    def tables(
        self, frame_positions: torch.Tensor, grid_h: int, grid_w: int, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos``, ``signed_sin`` of shape ``(B, F*grid_h*grid_w, 1, head_dim)`` (float32) for time positions ``(B, F)``.

        Tokens are ordered frame-major, then row, then column, like Wan's
        patch embedding flattens them. ``signed_sin`` carries the sign of the
        rotation (``-sin`` on even channels, ``+sin`` on odd ones) so that
        :func:`apply_rope` is one multiply and one fused multiply-add.
        """
        cos_parts, sin_parts = self._parts()
        device = frame_positions.device if device is None else device
        cos = _assemble(cos_parts, frame_positions, grid_h, grid_w, device)
        sin = _assemble(sin_parts, frame_positions, grid_h, grid_w, device)
        sign = (torch.arange(sin.shape[-1], device=device) % 2) * 2 - 1  # -1, +1, -1, ...
        return cos, sin * sign


def _assemble(
    parts: tuple[torch.Tensor, ...], frame_positions: torch.Tensor, grid_h: int, grid_w: int, device: torch.device
) -> torch.Tensor:
    time_part, h_part, w_part = (p.to(device=device, dtype=torch.float32) for p in parts)
    batch, frames = frame_positions.shape
    tokens = grid_h * grid_w
    t = time_part[frame_positions.to(device)]  # (B, F, t_dim)
    t = t[:, :, None, :].expand(batch, frames, tokens, t.shape[-1])
    h = h_part[:grid_h][:, None, :].expand(grid_h, grid_w, h_part.shape[-1])
    w = w_part[:grid_w][None, :, :].expand(grid_h, grid_w, w_part.shape[-1])
    hw = torch.cat([h, w], dim=-1).reshape(1, 1, tokens, -1).expand(batch, frames, tokens, -1)
    return torch.cat([t, hw], dim=-1).reshape(batch, frames * tokens, 1, -1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, N, H, D)`` by interleaved pairs, as diffusers' Wan processor does (math in float32).

    For a pair ``(x1, x2)``: ``(x1*cos - x2*sin, x2*cos + x1*sin)`` = ``x*cos + swap(x)*signed_sin``.
    """
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return torch.addcmul(x * cos, swapped, signed_sin).to(x.dtype)
