"""Tiny video components built in code: a Wan VAE, a UMT5 text encoder and a byte tokenizer, random weights.

``tiny-video`` and the ``weights="dummy"`` Wan presets need a VAE, a text
encoder and a tokenizer without any download. These are the real classes
(diffusers ``AutoencoderKLWan``, transformers ``UMT5EncoderModel``) at toy
sizes, so the streaming VAE caches, the attention masks of padded prompts
and the cross-attention context run exactly the code a real checkpoint runs.

:class:`ByteTokenizer` maps UTF-8 bytes to ids (no vocabulary file, no
download) and answers the call signature of a Hugging Face tokenizer, so
real and tiny models share the prompt-encoding code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

TINY_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 4,
    "z_dim": 16,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}

# Ids: 0 = pad, 1 = end of text, 2.. = byte value + 2 (T5's pad/eos convention).
BYTE_VOCAB_SIZE = 256 + 2
TINY_TEXT_LENGTH = 32


@dataclass(frozen=True)
class TokenBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


class ByteTokenizer:
    """UTF-8 bytes → ids, padded/truncated to ``model_max_length``, with an end-of-text id (offline, no files)."""

    pad_token_id = 0
    eos_token_id = 1

    def __init__(self, model_max_length: int = TINY_TEXT_LENGTH) -> None:
        self.model_max_length = model_max_length

    def __call__(self, texts: str | list[str], *, max_length: int | None = None, **_: Any) -> TokenBatch:
        if isinstance(texts, str):
            texts = [texts]
        length = max_length or self.model_max_length
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [b + 2 for b in text.encode("utf-8")][: length - 1] + [self.eos_token_id]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return TokenBatch(ids, mask)


def tiny_wan_vae(**overrides: Any) -> torch.nn.Module:
    """A Wan2.1-shaped VAE (4x time, 8x space, 16 latent channels), 4 channels wide."""
    from diffusers import AutoencoderKLWan  # noqa: PLC0415

    return AutoencoderKLWan(**{**TINY_VAE_CONFIG, **overrides})


def tiny_umt5_encoder(d_model: int, *, layers: int = 1, heads: int = 2, d_kv: int = 16, d_ff: int = 64) -> torch.nn.Module:
    """A UMT5 encoder of width ``d_model`` (the DiT's ``text_dim``) over the byte vocabulary.

    For ``weights="dummy"`` of Wan-1.3B/14B this stands in for UMT5-XXL
    (5.7 B parameters, 11 GB even as random weights): only its output width
    must match the DiT, and prompts are encoded once per change, so its size
    does not affect the stream's speed.
    """
    from transformers import UMT5Config, UMT5EncoderModel  # noqa: PLC0415

    config = UMT5Config(
        vocab_size=BYTE_VOCAB_SIZE,
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
    )
    return UMT5EncoderModel(config)


def seeded_build(seed: int, build: Any) -> Any:
    """``build()`` with torch's CPU RNG seeded, leaving the caller's RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
