"""Per-session noise from weighted seeds.

Noise is drawn on the CPU from each seed (so a seed gives the same noise on
every device) and blended: linearly with the weights' norm preserved, so the
blend stays unit-variance Gaussian, or by slerp.
"""

from __future__ import annotations

import torch

from ..config import Interpolation, WeightedSeed
from .blend import weighted_blend


def seeded_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def blended_noise(
    seeds: tuple[WeightedSeed, ...],
    method: Interpolation,
    shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Unit-variance noise of ``shape`` from a weighted blend of seeds."""
    noises = [seeded_noise(s.seed, shape) for s in seeds]
    blended = weighted_blend(noises, [s.weight for s in seeds], method, preserve_variance=True)
    return blended.to(device=device, dtype=dtype)
