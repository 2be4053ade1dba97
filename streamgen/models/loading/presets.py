"""Named image models users can ask for by a short name.

A preset says where the weights live, which tiny VAE and LoRA go with them,
how x0 is estimated and which parameters suit the model. ``tiny`` is built in
code (see :mod:`streamgen.models.image.tiny`); the others load through diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ...config import X0Formula


@dataclass(frozen=True)
class ImagePreset:
    """A named image model and the settings that suit it."""

    name: str
    family: Literal["tiny", "sd", "sdxl"]
    repo: str | None
    description: str
    tiny_vae_repo: str | None = None
    lora: dict[str, float] = field(default_factory=dict)
    x0_formula: X0Formula = "lcm"
    default_size: tuple[int, int] = (512, 512)
    default_params: dict[str, Any] = field(default_factory=dict)
    dummy_config: str | None = None  # folder under streamgen/models/configs/


IMAGE_PRESETS: dict[str, ImagePreset] = {
    p.name: p
    for p in (
        ImagePreset(
            name="tiny",
            family="tiny",
            repo=None,
            description="built-in random-weight model for tests and offline demos (noise-like output)",
            default_size=(256, 256),
        ),
        ImagePreset(
            name="sd-turbo",
            family="sd",
            repo="stabilityai/sd-turbo",
            description="SD-turbo (SD 2.1 distilled), 1-4 steps at 512x512",
            tiny_vae_repo="madebyollin/taesd",
            x0_formula="direct",
            default_params={"num_inference_steps": 1, "strength": 0.5, "cfg_type": "none", "guidance_scale": 1.0},
            dummy_config="sd-turbo",
        ),
        ImagePreset(
            name="sd15-lcm",
            family="sd",
            repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
            description="Stable Diffusion 1.5 with the LCM-LoRA, 2-4 steps at 512x512",
            tiny_vae_repo="madebyollin/taesd",
            lora={"latent-consistency/lcm-lora-sdv1-5": 1.0},
            x0_formula="lcm",
            default_params={"num_inference_steps": 2, "strength": 0.35, "cfg_type": "self", "guidance_scale": 1.2},
            dummy_config="sd15",
        ),
        ImagePreset(
            name="sdxl-turbo",
            family="sdxl",
            repo="stabilityai/sdxl-turbo",
            description="SDXL-turbo, 1-4 steps at 512x512",
            tiny_vae_repo="madebyollin/taesdxl",
            x0_formula="direct",
            default_params={"num_inference_steps": 1, "strength": 0.5, "cfg_type": "none", "guidance_scale": 1.0},
            dummy_config="sdxl-turbo",
        ),
    )
}


def get_image_preset(name: str) -> ImagePreset | None:
    return IMAGE_PRESETS.get(name)


