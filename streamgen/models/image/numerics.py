"""Noise-schedule numbers shared by every Stable Diffusion family model."""

from __future__ import annotations

from typing import Any

import torch

from ...config import PredictionType, X0Formula
from .image_model import ModelNumerics

# SD1.x, SD2.x and SDXL all train with this schedule.
DEFAULT_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


def alphas_cumprod_from_config(config: dict[str, Any] | None = None) -> torch.Tensor:
    """ᾱ_t for t = 0..T-1 from a diffusers scheduler config (scaled-linear or linear betas)."""
    config = {**DEFAULT_SCHEDULE, **(config or {})}
    steps = int(config["num_train_timesteps"])
    start, end = float(config["beta_start"]), float(config["beta_end"])
    schedule = config["beta_schedule"]
    if schedule == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    else:
        raise ValueError(f"unsupported beta_schedule {schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def make_numerics(
    device: torch.device | str,
    *,
    scheduler_config: dict[str, Any] | None = None,
    x0_formula: X0Formula = "lcm",
    prediction_type: PredictionType | None = None,
) -> ModelNumerics:
    """Numerics for a model: its ᾱ table on ``device`` and how x0 is estimated."""
    config = scheduler_config or {}
    prediction = prediction_type or config.get("prediction_type", "epsilon")
    return ModelNumerics(
        alphas_cumprod=alphas_cumprod_from_config(config).to(device),
        x0_formula=x0_formula,
        prediction_type=prediction,
        timestep_scaling=float(config.get("timestep_scaling", 10.0)),
    )
