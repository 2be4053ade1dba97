"""The built-in ``tiny`` image model: real diffusers classes, tiny sizes, random weights.

It exists so that tests, CI and the offline demo exercise the same code paths
as SD-turbo or SD1.5 (UNet2DConditionModel with cross-attention, TAESD-style
AutoencoderTiny, CLIPTextModel) without any download. Its weights are random,
so its output is noise-like; it is deterministic for a given seed.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderTiny, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .image_model import ImageModel
from .numerics import make_numerics
from ..loading.tokenizer import CLIP_MAX_LENGTH, OFFLINE_VOCAB_SIZE, offline_clip_tokenizer

TINY_TEXT_DIM = 32
TINY_DEFAULT_SIZE = (256, 256)


def tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def tiny_vae() -> AutoencoderTiny:
    """A TAESD-shaped VAE, 8 channels wide.

    PyTorch's default init shrinks activations layer by layer, which would
    make every output the same flat colour; a variance-preserving (He) init
    keeps the decoded images varied and input-dependent, and the last layer
    is scaled down so they use the colour range instead of clipping.
    """
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    last_conv = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    last_conv.weight.data.mul_(0.25)
    return vae


def tiny_text_encoder() -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=OFFLINE_VOCAB_SIZE,
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def _place(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> torch.nn.Module:
    module = module.to(device=device)
    if dtype != torch.float32:  # built in float32; cast only when asked, to avoid diffusers' cast warning
        module = module.to(dtype=dtype)
    return module.eval().requires_grad_(False)


def build_tiny_image_model(seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> ImageModel:
    """The ``tiny`` preset, deterministic for ``seed``, on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet, vae, text_encoder = tiny_unet(), tiny_vae(), tiny_text_encoder()
    modules = [_place(m, device, dtype) for m in (unet, vae, text_encoder)]
    unet, vae, text_encoder = modules
    return ImageModel(
        name="tiny",
        unet=unet,
        vae=vae,
        text_encoders=[text_encoder],
        tokenizers=[offline_clip_tokenizer()],
        numerics=make_numerics(device, x0_formula="lcm"),
        default_size=TINY_DEFAULT_SIZE,
    )
