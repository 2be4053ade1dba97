"""Per-slot coefficients of a stream's denoising steps.

A stream with ``t_index_list`` of length n has n slots; slot i denoises at
timestep ``t_i = GRID[t_index_list[i]]``. For each slot this module holds
α_i = sqrt(ᾱ_{t_i}), β_i = sqrt(1 − ᾱ_{t_i}) and the boundary-condition
scalings used to turn a noise estimate into a clean-latent estimate:

    x0 = c_out · (x − β·ε̂) / α + c_skip · x

LCM models use c_skip = σ²/((s·t)² + σ²), c_out = s·t/sqrt((s·t)² + σ²) with
σ = 0.5 and s = 10; one-step "direct" models (SD-turbo, SDXL-turbo) use
c_skip = 0, c_out = 1, i.e. x0 = (x − β·ε̂)/α.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TIMESTEP_GRID_SIZE
from ..models.image.image_model import ModelNumerics

_GRID_STRIDE = 1000 // TIMESTEP_GRID_SIZE
TIMESTEP_GRID: tuple[int, ...] = tuple(999 - _GRID_STRIDE * i for i in range(TIMESTEP_GRID_SIZE))


@dataclass(frozen=True)
class SlotSchedule:
    """Coefficients for n slots, each repeated for the f frames of a slot (n·f rows)."""

    t_indices: tuple[int, ...]
    frames_per_slot: int
    timesteps: torch.Tensor  # (n·f,) long
    alpha: torch.Tensor  # (n·f, 1, 1, 1)
    beta: torch.Tensor
    c_skip: torch.Tensor
    c_out: torch.Tensor

    @property
    def num_slots(self) -> int:
        return len(self.t_indices)

    def rows(self, first_slot: int, num_slots: int = 1) -> slice:
        """Row range of ``num_slots`` consecutive slots starting at ``first_slot``."""
        f = self.frames_per_slot
        return slice(first_slot * f, (first_slot + num_slots) * f)


def make_slot_schedule(
    t_indices: tuple[int, ...],
    frames_per_slot: int,
    numerics: ModelNumerics,
    device: torch.device,
    dtype: torch.dtype,
) -> SlotSchedule:
    """Build the per-row coefficients for ``t_indices`` (indices into :data:`TIMESTEP_GRID`)."""
    steps = torch.tensor([TIMESTEP_GRID[i] for i in t_indices], dtype=torch.long)
    ac = numerics.alphas_cumprod.detach().cpu().double()[steps]
    alpha, beta = ac.sqrt(), (1 - ac).sqrt()
    if numerics.x0_formula == "lcm":
        scaled = steps.double() * numerics.timestep_scaling
        sigma2 = numerics.sigma_data**2
        c_skip = sigma2 / (scaled**2 + sigma2)
        c_out = scaled / (scaled**2 + sigma2).sqrt()
    else:
        c_skip, c_out = torch.zeros_like(alpha), torch.ones_like(alpha)

    def per_row(values: torch.Tensor) -> torch.Tensor:
        rows = values.repeat_interleave(frames_per_slot)
        return rows.view(-1, 1, 1, 1).to(device=device, dtype=dtype)

    return SlotSchedule(
        t_indices=tuple(t_indices),
        frames_per_slot=frames_per_slot,
        timesteps=steps.repeat_interleave(frames_per_slot).to(device),
        alpha=per_row(alpha),
        beta=per_row(beta),
        c_skip=per_row(c_skip),
        c_out=per_row(c_out),
    )
