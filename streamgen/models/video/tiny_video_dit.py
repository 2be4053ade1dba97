"""The ``tiny-video`` transformer: Wan's real block-causal architecture at toy size, random weights.

Tests, CI and the offline demo run the same code as Wan2.1-1.3B (patch
embedding, per-frame timesteps, 3-D RoPE, sink + ring KV cache) with a model
that runs in milliseconds on a CPU. ``head_dim`` 24 splits into RoPE parts of
8 (time), 8 (height) and 8 (width), so all three axes are exercised.
Its output is noise-like but deterministic for a seed.
"""

from __future__ import annotations

from typing import Any

import torch

from .causal_wan import CausalWanTransformer
from .wan_build import build_wan_transformer

TINY_WAN_CONFIG: dict[str, Any] = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 2,
    "attention_head_dim": 24,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
}


def tiny_wan_config(**overrides: Any) -> dict[str, Any]:
    """The tiny config, with any field overridden (e.g. ``num_layers=3``)."""
    return {**TINY_WAN_CONFIG, **overrides}


def tiny_causal_wan(
    seed: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, **overrides: Any
) -> CausalWanTransformer:
    """A tiny :class:`CausalWanTransformer`, deterministic for ``seed``.

    diffusers initialises nothing to zero in Wan (linear layers use PyTorch's
    default init, the modulation tables ``randn/sqrt(dim)``), so outputs
    depend on every input: no re-initialisation is needed.
    """
    config = tiny_wan_config(**overrides)
    return CausalWanTransformer(build_wan_transformer(config, device=device, dtype=dtype, seed=seed))
