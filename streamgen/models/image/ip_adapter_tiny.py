"""The built-in ``tiny`` IP-Adapter: a tiny CLIP image encoder and random adapter weights.

Like the ``tiny`` image model, it exists so that tests and the offline demo run
the real code path (diffusers' IP-Adapter attention processors and image
projections, a transformers CLIP vision model) without a download. The
weights are random and deterministic for a seed.

The adapter state dict is written in the *published* IP-Adapter layout (the
one h94/IP-Adapter ships: ``image_proj.*`` and ``ip_adapter.<n>.to_k_ip`` /
``to_v_ip`` keys), with exactly the shapes diffusers expects for a given
UNet, so it goes through the same conversion as a downloaded adapter.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from .ip_adapter_weights import (
    PLUS_DEPTH,
    PLUS_DIM_HEAD,
    PLAIN_TOKENS,
    cross_attention_layout,
    unet_cross_attention_dim,
)

TINY_ENCODER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=32,
)
TINY_PLUS_QUERIES = 4  # image tokens the tiny "plus" resampler produces (the real SD1.5 one: 16)
TINY_PLUS_WIDTH = 32  # the resampler's inner width (hidden_dims)
PLUS_FFN_RATIO = 4  # fixed by diffusers' IPAdapterPlusImageProjection


def tiny_image_encoder(seed: int = 0) -> CLIPVisionModelWithProjection:
    """A CLIP vision model with projection, 32 wide, 32x32 input, deterministic for ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_ENCODER))
    return encoder.eval().requires_grad_(False)


def tiny_ip_adapter_state_dict(
    unet: torch.nn.Module,
    variant: str = "plain",
    *,
    seed: int = 0,
    encoder_config: CLIPVisionConfig | None = None,
    cross_attention_dim: int | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Random IP-Adapter weights for ``unet`` in the published layout: ``{"image_proj": ..., "ip_adapter": ...}``.

    ``cross_attention_dim`` overrides the UNet's (to build an adapter that does
    NOT fit, for tests); ``encoder_config`` defaults to the tiny encoder's.
    """
    if variant not in ("plain", "plus"):
        raise ValueError(f"variant must be 'plain' or 'plus', not {variant!r}")
    encoder_config = encoder_config or CLIPVisionConfig(**TINY_ENCODER)
    cross_dim = cross_attention_dim or unet_cross_attention_dim(unet)
    generator = torch.Generator().manual_seed(seed)
    shapes = _image_proj_shapes(variant, encoder_config, cross_dim)
    image_proj = {name: _random(name, shape, generator) for name, shape in shapes.items()}
    ip_layers: dict[str, torch.Tensor] = {}
    for key_id, hidden_size in cross_attention_layout(unet):
        for name in ("to_k_ip", "to_v_ip"):
            ip_layers[f"{key_id}.{name}.weight"] = _random("weight", (hidden_size, cross_dim), generator)
    return {"image_proj": image_proj, "ip_adapter": ip_layers}


def save_tiny_ip_adapter(
    unet: torch.nn.Module,
    folder: Path,
    *,
    variant: str = "plain",
    seed: int = 0,
    encoder_seed: int = 0,
    cross_attention_dim: int | None = None,
) -> Path:
    """Write a tiny adapter as a published-layout ``.safetensors`` and its encoder as ``folder/image_encoder``.

    Returns the weight file; :func:`~.ip_adapter.load_ip_adapter` finds the
    encoder beside it, as with h94/IP-Adapter's ``models/`` folder.
    """
    from safetensors.torch import save_file  # noqa: PLC0415

    from .ip_adapter_weights import flatten_state_dict  # noqa: PLC0415

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = tiny_ip_adapter_state_dict(unet, variant, seed=seed, cross_attention_dim=cross_attention_dim)
    path = folder / f"ip-adapter_tiny{'_plus' if variant == 'plus' else ''}.safetensors"
    save_file({k: v.contiguous() for k, v in flatten_state_dict(state_dict).items()}, str(path))
    tiny_image_encoder(encoder_seed).save_pretrained(folder / "image_encoder")
    return path


def _image_proj_shapes(variant: str, encoder: CLIPVisionConfig, cross_dim: int) -> dict[str, tuple[int, ...]]:
    if variant == "plain":  # ImageProjection: CLIP image_embeds -> PLAIN_TOKENS tokens
        embed = encoder.projection_dim
        return {
            "proj.weight": (PLAIN_TOKENS * cross_dim, embed),
            "proj.bias": (PLAIN_TOKENS * cross_dim,),
            "norm.weight": (cross_dim,),
            "norm.bias": (cross_dim,),
        }
    # IPAdapterPlusImageProjection (the "Resampler"): penultimate CLIP states -> queries tokens.
    width, inner, ffn = TINY_PLUS_WIDTH, PLUS_DIM_HEAD, PLUS_FFN_RATIO * TINY_PLUS_WIDTH
    shapes: dict[str, tuple[int, ...]] = {
        "latents": (1, TINY_PLUS_QUERIES, width),
        "proj_in.weight": (width, encoder.hidden_size),
        "proj_in.bias": (width,),
        "proj_out.weight": (cross_dim, width),
        "proj_out.bias": (cross_dim,),
        "norm_out.weight": (cross_dim,),
        "norm_out.bias": (cross_dim,),
    }
    for i in range(PLUS_DEPTH):
        shapes.update({
            f"layers.{i}.0.norm1.weight": (width,),
            f"layers.{i}.0.norm1.bias": (width,),
            f"layers.{i}.0.norm2.weight": (width,),
            f"layers.{i}.0.norm2.bias": (width,),
            f"layers.{i}.0.to_q.weight": (inner, width),
            f"layers.{i}.0.to_kv.weight": (2 * inner, width),
            f"layers.{i}.0.to_out.weight": (width, inner),
            f"layers.{i}.1.0.weight": (width,),
            f"layers.{i}.1.0.bias": (width,),
            f"layers.{i}.1.1.weight": (ffn, width),
            f"layers.{i}.1.3.weight": (width, ffn),
        })
    return shapes


def _random(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Weights scaled by 1/sqrt(fan-in); norm scales near 1; small biases."""
    noise = torch.randn(shape, generator=generator)
    if len(shape) == 1 and name.endswith("weight"):  # the only 1-D weights are LayerNorm scales
        return 1.0 + 0.1 * noise
    if len(shape) == 1:
        return 0.02 * noise
    return noise / shape[-1] ** 0.5
