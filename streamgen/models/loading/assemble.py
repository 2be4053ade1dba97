"""Turn loaded components into the :class:`ImageModel` the pipeline uses.

This is where a model's *behaviour* is decided from its parts: SD vs SDXL
(the UNet's added "text_time" conditioning), the noise schedule and
prediction type (the scheduler config), how x0 is estimated (the preset, or
a guess from the name and scheduler), its native size and the stream
parameters that suit it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ...config import X0Formula
from ...errors import ModelLoadError
from .components import ImageComponents, is_sdxl_unet_config, place
from ..image.image_model import ImageModel
from ..image.numerics import make_numerics
from .vae import needs_fp32_vae

# Parameters for one-step distilled students (SD-turbo style) when no preset says otherwise.
DIRECT_X0_DEFAULT_PARAMS: dict[str, Any] = {"num_inference_steps": 1, "strength": 0.5, "cfg_type": "none", "guidance_scale": 1.0}


@dataclass(frozen=True)
class ModelTraits:
    """What the loader knows about a model beyond its weights."""

    name: str
    x0_formula: X0Formula
    default_size: tuple[int, int] | None = None  # None: the UNet's sample size times the VAE factor
    default_params: dict[str, Any] = field(default_factory=dict)


def guess_x0_formula(name: str, scheduler_config: dict[str, Any], loras: dict[str, float]) -> X0Formula:
    """``direct`` for turbo (adversarially distilled) models, ``lcm`` for everything else.

    LCM models use the consistency boundary condition; for other models the
    two formulas differ only at the very lowest timesteps, so ``lcm`` is the
    safe default.
    """
    lowered = name.lower()
    if scheduler_config.get("_class_name") == "LCMScheduler" or "lcm" in lowered or any("lcm" in k.lower() for k in loras):
        return "lcm"
    return "direct" if "turbo" in lowered else "lcm"


def default_params_for(x0_formula: X0Formula) -> dict[str, Any]:
    return dict(DIRECT_X0_DEFAULT_PARAMS) if x0_formula == "direct" else {}


def assemble_image_model(
    components: ImageComponents,
    vae: torch.nn.Module,
    traits: ModelTraits,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> ImageModel:
    """Place everything on ``device``/``dtype`` and wrap it in an :class:`ImageModel`."""
    is_sdxl = is_sdxl_unet_config(components.unet.config)
    check_text_conditioning(components, is_sdxl, traits.name)
    fp32_vae = needs_fp32_vae(vae, is_sdxl, dtype)
    unet = place(components.unet, device, dtype)
    text_encoders = [place(e, device, dtype) for e in components.text_encoders]
    vae = place(vae, device, torch.float32 if fp32_vae else dtype)
    try:
        numerics = make_numerics(device, scheduler_config=components.scheduler_config, x0_formula=traits.x0_formula)
    except ValueError as error:
        raise ModelLoadError(f"{traits.name}: {error}") from error
    model = ImageModel(
        name=traits.name,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=components.tokenizers,
        numerics=numerics,
        default_size=traits.default_size or native_size(unet, vae),
        is_sdxl=is_sdxl,
        default_params=traits.default_params,
    )
    if fp32_vae:
        run_vae_in_float32(model)
    return model


def native_size(unet: torch.nn.Module, vae: torch.nn.Module) -> tuple[int, int]:
    """(width, height) the UNet was trained at: its latent sample size times the VAE's downscale."""
    config = vae.config
    blocks = getattr(config, "block_out_channels", None) or config.encoder_block_out_channels
    side = int(unet.config.sample_size) * 2 ** (len(blocks) - 1)
    return side, side


def check_text_conditioning(components: ImageComponents, is_sdxl: bool, name: str) -> None:
    """The text encoders must produce what the UNet attends to (catches mixed-up components early)."""
    encoders = components.text_encoders
    expected = 2 if is_sdxl else 1
    if len(encoders) != expected or len(components.tokenizers) != expected:
        kind = "an SDXL" if is_sdxl else "an SD"
        raise ModelLoadError(f"{name}: {kind} UNet needs {expected} text encoder(s) and tokenizer(s); got {len(encoders)} and {len(components.tokenizers)}")
    widths = [int(e.config.hidden_size) for e in encoders]
    cross = components.unet.config.cross_attention_dim
    if sum(widths) != cross:
        raise ModelLoadError(f"{name}: the text encoders give {'+'.join(map(str, widths))} features but the UNet attends to {cross}")
    if is_sdxl and not hasattr(encoders[1], "text_projection"):
        raise ModelLoadError(f"{name}: SDXL's second text encoder must be a CLIPTextModelWithProjection (it provides the pooled embedding)")


def run_vae_in_float32(model: ImageModel) -> None:
    """Route VAE calls through float32 (the VAE's weights already are) and hand back the model dtype."""
    dtype = model.dtype
    encode, decode = model._eager_vae_encode, model._eager_vae_decode
    model.vae_encode_forward = lambda images: encode(images.float()).to(dtype)
    model.vae_decode_forward = lambda latents: decode(latents.float()).to(dtype)
