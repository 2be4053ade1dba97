"""Weighted blending of tensors, linear or spherical, for prompts and seeds."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import Interpolation

_PARALLEL_EPS = 1e-4


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, dim: int | None = None) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1).

    With ``dim`` the vectors along that axis are interpolated independently
    (per token for prompt embeddings); without it the whole tensor is one
    vector (for noise). Nearly parallel vectors fall back to linear blending.
    """
    a32, b32 = a.float(), b.float()
    if dim is None:
        a_flat, b_flat = a32.reshape(1, -1), b32.reshape(1, -1)
    else:
        a_flat, b_flat = a32.movedim(dim, -1), b32.movedim(dim, -1)
    a_n = a_flat / a_flat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b_n = b_flat / b_flat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = (a_n * b_n).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    parallel = sin.abs() < _PARALLEL_EPS
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    w_a = torch.where(parallel, torch.full_like(sin, 1 - t), torch.sin((1 - t) * theta) / safe_sin)
    w_b = torch.where(parallel, torch.full_like(sin, t), torch.sin(t * theta) / safe_sin)
    out = w_a * a_flat + w_b * b_flat
    out = out.reshape(a.shape) if dim is None else out.movedim(-1, dim)
    return out.to(a.dtype)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return a + (b - a) * t


def interpolate(a: torch.Tensor, b: torch.Tensor, t: float, method: Interpolation, dim: int | None = None) -> torch.Tensor:
    """Blend ``a`` towards ``b`` by ``t`` with the named method."""
    if t <= 0.0:
        return a
    if t >= 1.0:
        return b
    return slerp(a, b, t, dim) if method == "slerp" else lerp(a, b, t)


def weighted_blend(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    method: Interpolation,
    dim: int | None = None,
    preserve_variance: bool = False,
) -> torch.Tensor:
    """Blend several tensors by weight.

    Linear: the weighted mean; with ``preserve_variance`` (independent
    Gaussian noise) divided by the norm of the weights instead, so the blend
    stays unit-variance. Slerp: folded pairwise, each new tensor entering with
    its share of the accumulated weight.
    """
    total = float(sum(weights))
    norm = [w / total for w in weights]
    if len(tensors) == 1:
        return tensors[0]
    if method == "linear":
        out = sum(w * t.float() for w, t in zip(norm, tensors))
        if preserve_variance:
            out = out / sum(w * w for w in norm) ** 0.5
        return out.to(tensors[0].dtype)
    acc, acc_w = tensors[0], norm[0]
    for tensor, w in zip(tensors[1:], norm[1:]):
        if w <= 0:
            continue
        acc = slerp(acc, tensor, w / (acc_w + w), dim) if acc_w > 0 else tensor
        acc_w += w
    return acc
