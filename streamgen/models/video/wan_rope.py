"""Wan's 3-D rotary position embedding at arbitrary time positions.

diffusers' ``WanRotaryPosEmbed`` returns the tables for frames ``0..T-1`` of
one clip. A causal stream needs them for *chosen* time positions (a chunk in
the middle of a stream, at any absolute frame index), per row. This module
reads the same spatial frequency buffers and recomputes the time angles in
float64 with diffusers' own formula (``position * theta ** (-2i / t_dim)``,
then ``cos``/``sin`` rounded to float32), so inside diffusers' table the
values are bit-identical to it, and beyond it (a stream a million frames
long) they stay exact: nothing is looked up past the table's end, and a
float64 angle of a large position is still accurate to ~1e-9 rad. All of it
is pure tensor arithmetic: no host sync, so it can sit inside a CUDA graph.

Tables are built once per chunk and shared by every transformer block.

:class:`KeyRotation` is what the KV cache needs to know about the rotation
of the keys it stores (see :mod:`streamgen.models.video.kv_cache`): how to
advance the time rotation of stored keys by some frames (the sinks, once per
chunk) and how to undo the whole rotation (adaptive sinks compare raw keys).
"""

from __future__ import annotations

import torch

ROPE_THETA = 10000.0  # WanRotaryPosEmbed's default, the value Wan uses


class WanRope:
    """Per-token RoPE tables from a diffusers ``WanRotaryPosEmbed`` (shares its buffers)."""

    def __init__(self, rope: torch.nn.Module, theta: float = ROPE_THETA) -> None:
        self._rope = rope
        self.split = (rope.t_dim, rope.h_dim, rope.w_dim)
        self.max_positions = int(rope.max_seq_len)
        self.theta = float(theta)
        self._check_against_table()

    @property
    def time_dim(self) -> int:
        """Channels of each head that carry the time rotation (the first ``time_dim`` of ``head_dim``)."""
        return self.split[0]

    def _check_against_table(self) -> None:
        """The recomputed time angles must be diffusers' (a different theta would show here)."""
        table = self._rope.freqs_cos.split(self.split, dim=1)[0]
        if table.is_meta:
            return
        count = min(64, table.shape[0])
        ours, _ = self.time_cos_sin(torch.arange(count), torch.device("cpu"))
        tolerance = 1e-6 if table.dtype in (torch.float32, torch.float64) else 1e-2  # a model cast to half casts its table
        if not torch.allclose(ours, table[:count].to("cpu", torch.float32), atol=tolerance, rtol=0):
            raise ValueError("the transformer's RoPE table does not match Wan's time frequencies (theta 10000)")

    def time_cos_sin(self, positions: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos``, ``sin`` ``(*positions.shape, t_dim)`` float32, pairs interleaved like diffusers' tables."""
        # diffusers' get_1d_rotary_pos_embed in float64 (computed here, on the device: no stored state
        # that a dtype cast of the model could round, nothing copied from the host inside a graph)
        t_dim = self.time_dim
        freqs = 1.0 / (self.theta ** (torch.arange(0, t_dim, 2, dtype=torch.float64, device=device) / t_dim))
        angles = positions.to(device=device, dtype=torch.float64)[..., None] * freqs
        cos = angles.cos().repeat_interleave(2, dim=-1).float()
        sin = angles.sin().repeat_interleave(2, dim=-1).float()
        return cos, sin

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
        Positions may be any non-negative frame index (not bounded by the table).
        """
        cos_parts, sin_parts = self._parts()
        device = frame_positions.device if device is None else device
        time_cos, time_sin = self.time_cos_sin(frame_positions, device)
        cos = _assemble(time_cos, cos_parts, grid_h, grid_w, device)
        sin = _assemble(time_sin, sin_parts, grid_h, grid_w, device)
        return cos, sin * _pair_sign(sin.shape[-1], device)

    def key_rotation(self, grid_h: int, grid_w: int) -> KeyRotation:
        """What a KV cache of this latent grid needs to re-rotate and un-rotate its stored keys."""
        return KeyRotation(self, grid_h, grid_w)


class KeyRotation:
    """How the keys in a KV cache are rotated: time by their frame position, space by their token (one grid)."""

    def __init__(self, rope: WanRope, grid_h: int, grid_w: int) -> None:
        self.rope = rope
        self.grid_h = grid_h
        self.grid_w = grid_w
        self.time_dim = rope.time_dim

    def shift_time(self, keys: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``keys`` ``(..., tokens, heads, head_dim)`` with their time rotation advanced by ``frames`` positions.

        ``frames`` (int64) broadcasts against ``keys.shape[:-3]`` (e.g. one
        value per row). Only the first ``time_dim`` channels change; the
        spatial channels are copied. Rotations compose, so a key rotated at
        position ``p`` and shifted by ``d`` is the key rotated at ``p + d``.
        """
        return torch.cat([self.shifted_time_channels(keys, frames), keys[..., self.time_dim :]], dim=-1)

    def shifted_time_channels(self, keys: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Just the time channels ``(..., time_dim)`` of :meth:`shift_time` (the spatial ones do not change)."""
        cos, sin = self.rope.time_cos_sin(frames, keys.device)  # (*frames.shape, t_dim)
        cos, sin = cos[..., None, None, :], (sin * _pair_sign(self.time_dim, keys.device))[..., None, None, :]
        return apply_rope(keys[..., : self.time_dim], cos, sin)

    def unrotate(self, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Raw (pre-RoPE) keys of whole frames: ``keys`` ``(B, F*tokens, heads, head_dim)`` rotated at ``positions`` ``(B, F)``."""
        cos, signed_sin = self.rope.tables(positions, self.grid_h, self.grid_w, keys.device)
        return apply_rope(keys, cos, -signed_sin)


def _pair_sign(dim: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(dim, device=device) % 2) * 2 - 1  # -1, +1, -1, ...


def _assemble(
    time: torch.Tensor, parts: tuple[torch.Tensor, ...], grid_h: int, grid_w: int, device: torch.device
) -> torch.Tensor:
    """Per-token tables from the time part ``(B, F, t_dim)`` and the table's spatial parts."""
    _, h_part, w_part = (p.to(device=device, dtype=torch.float32) for p in parts)
    batch, frames = time.shape[:2]
    tokens = grid_h * grid_w
    t = time[:, :, None, :].expand(batch, frames, tokens, time.shape[-1])
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
