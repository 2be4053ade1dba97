"""Reference computations and small utilities for the image pipeline tests."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from streamgen.frames import uint8_to_model
from streamgen.pipeline.schedule import TIMESTEP_GRID


def random_frames(count: int, size: int = 64, seed: int = 0, batch: int = 1) -> list[torch.Tensor]:
    """``count`` calls' worth of (batch, size, size, 3) uint8 frames."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (batch, size, size, 3), generator=generator, dtype=torch.uint8) for _ in range(count)]


@dataclass
class UnetCallLog:
    """Rows per UNet call, recorded by wrapping the model's replaceable forward."""

    rows: list[int] = field(default_factory=list)


@contextlib.contextmanager
def record_unet_calls(model):
    log = UnetCallLog()
    original = model.unet_forward

    def wrapped(latents, timesteps, hidden, added):
        log.rows.append(latents.shape[0])
        return original(latents, timesteps, hidden, added)

    model.unet_forward = wrapped
    try:
        yield log
    finally:
        model.unet_forward = original


@contextlib.contextmanager
def record_decoded_latents(model):
    """Capture the latents every decode call receives (the pipeline's final x0)."""
    seen: list[torch.Tensor] = []
    original = model.vae_decode_forward

    def wrapped(latents):
        seen.append(latents.clone())
        return original(latents)

    model.vae_decode_forward = wrapped
    try:
        yield seen
    finally:
        model.vae_decode_forward = original


def coefficients(model, t_index: int):
    """α, β, c_skip, c_out of one grid index, computed from scratch in float64."""
    t = TIMESTEP_GRID[t_index]
    ac = model.numerics.alphas_cumprod.double()[t]
    alpha, beta = ac.sqrt(), (1 - ac).sqrt()
    if model.numerics.x0_formula == "lcm":
        s = 10.0 * t
        c_skip = 0.25 / (s * s + 0.25)
        c_out = s / (s * s + 0.25) ** 0.5
    else:
        c_skip, c_out = 0.0, 1.0
    return float(alpha), float(beta), float(c_skip), float(c_out)


@torch.inference_mode()
def measured_uncond(model, x_t0, t_index, uncond):
    return model.predict_noise(x_t0, torch.tensor([TIMESTEP_GRID[t_index]]), uncond)


@torch.inference_mode()
def noised_input(model, frame_uint8, size, t_index, noise0):
    latent = model.encode_images(uint8_to_model(frame_uint8, size, size, model.device, model.dtype))
    alpha, beta, _, _ = coefficients(model, t_index)
    return alpha * latent + beta * noise0


@torch.inference_mode()
def reference_img2img(
    model,
    frame_uint8,
    size,
    t_indices,
    noise,
    cond,
    uncond=None,
    guidance=1.0,
    renoise=True,
    residual_cfg=None,
    delta=1.0,
    measured_stock=None,
):
    """Sequential n-step denoising of one frame, written out independently of the pipeline.

    ``noise`` is (n, C, h, w): the noise for each step's slot. ``cond``/``uncond``
    are (1, L, D) prompt states; with ``uncond`` and no ``residual_cfg`` this is
    classic CFG. ``residual_cfg`` "self" / "initialize" replaces the uncond
    prediction by δ·stock noise, where slot 0's stock is the added noise
    ("self") or the uncond prediction measured with ``uncond`` ("initialize"),
    and slot i+1's stock = noise_{i+1} + (α_{i+1}/β_{i+1})·c_out_i·β_i·(stock_i − ε̂_i)/α_i.
    Returns the final x0 latent (1, C, h, w).
    """
    image = uint8_to_model(frame_uint8, size, size, model.device, model.dtype)
    latent = model.encode_images(image)
    alpha, beta, _, _ = coefficients(model, t_indices[0])
    x = alpha * latent + beta * noise[0:1]
    stock = noise[0:1]
    if residual_cfg == "initialize":
        stock = measured_stock if measured_stock is not None else measured_uncond(model, x, t_indices[0], uncond)
    for i, t_index in enumerate(t_indices):
        alpha, beta, c_skip, c_out = coefficients(model, t_index)
        t = torch.tensor([TIMESTEP_GRID[t_index]])
        eps = model.predict_noise(x, t, cond)
        if residual_cfg is not None:
            eps_u = delta * stock
            eps = eps_u + guidance * (eps - eps_u)
        elif uncond is not None:
            eps_u = model.predict_noise(x, t, uncond)
            eps = eps_u + guidance * (eps - eps_u)
        x0 = c_out * (x - beta * eps) / alpha + c_skip * x
        if i + 1 < len(t_indices):
            next_alpha, next_beta, _, _ = coefficients(model, t_indices[i + 1])
            x = next_alpha * x0 + (next_beta * noise[i + 1 : i + 2] if renoise else 0)
            residual = c_out * beta * (stock - eps) / alpha
            stock = next_alpha / next_beta * residual + (noise[i + 1 : i + 2] if renoise else 0)
    return x0
