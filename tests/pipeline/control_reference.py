"""diffusers' own pipelines on streamgen's tiny components: the references the control tests hold streamgen to.

streamgen's grid is LCM's: an LCMScheduler with the same ᾱ table gives the
same timesteps and the same x0 formula. diffusers draws the img2img noise
and then one noise per intermediate step from one generator; the test gives
streamgen's stream the same draws as its per-slot noise.
"""

from __future__ import annotations

import torch
from diffusers import LCMScheduler, StableDiffusionControlNetImg2ImgPipeline

from streamgen.pipeline.schedule import TIMESTEP_GRID


def lcm_scheduler(model) -> LCMScheduler:
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading")
    assert torch.allclose(scheduler.alphas_cumprod.float(), model.numerics.alphas_cumprod.cpu().float(), atol=1e-6), "the tiny model's ᾱ differ from LCM's"
    return scheduler


def grid_indices(model, steps: int) -> tuple[int, ...]:
    """The t_index_list that reproduces an LCM schedule of ``steps`` steps (strength 1)."""
    scheduler = lcm_scheduler(model)
    scheduler.set_timesteps(steps)
    grid = [int(t) for t in TIMESTEP_GRID]
    return tuple(grid.index(int(t)) for t in scheduler.timesteps)


def diffusers_noise(seed: int, steps: int, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """The noises diffusers draws from ``torch.Generator().manual_seed(seed)``: the img2img noise, then one per intermediate step."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn((1, *latent_shape), generator=generator) for _ in range(steps)])


@torch.inference_mode()
def controlnet_img2img_reference(
    model,
    controlnets,
    frame_uint8: torch.Tensor,
    control_images: list[torch.Tensor],
    *,
    prompt: str,
    steps: int,
    seed: int,
    scales: list[float],
    starts: list[float],
    ends: list[float],
    guidance: float = 1.0,
    negative_prompt: str = "",
) -> torch.Tensor:
    """diffusers' StableDiffusionControlNetImg2ImgPipeline, one frame: the final latents (1, C, h, w)."""
    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=model.vae,
        text_encoder=model.text_encoders[0],
        tokenizer=model.tokenizers[0],
        unet=model.unet,
        controlnet=controlnets if len(controlnets) > 1 else controlnets[0],
        scheduler=lcm_scheduler(model),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    image = frame_uint8.permute(2, 0, 1)[None].float() / 255.0
    controls = [c[None] if c.ndim == 3 else c for c in control_images]
    one = len(controlnets) == 1
    kwargs = {}
    if guidance > 1.0:
        kwargs["negative_prompt_embeds"] = model.encode_prompt(negative_prompt).hidden
    out = pipe(
        prompt_embeds=model.encode_prompt(prompt).hidden,
        image=image,
        control_image=controls[0] if one else controls,
        strength=1.0,
        num_inference_steps=steps,
        guidance_scale=guidance,
        controlnet_conditioning_scale=scales[0] if one else scales,
        control_guidance_start=starts[0] if one else starts,
        control_guidance_end=ends[0] if one else ends,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        height=frame_uint8.shape[0],
        width=frame_uint8.shape[1],
        **kwargs,
    )
    return out.images
