"""The flow-matching parametrisation of the Wan DiT: what its velocity prediction means.

The DiT predicts a velocity ``v`` such that ``x_t = x0 + σ · v`` at noise
level σ. The stream pipeline uses both directions; the pipeline stages
(:mod:`streamgen.parallel`) use :func:`flow_x0` on the last rank, which
turns a chunk's final prediction into clean latents and decodes them there.
"""

from __future__ import annotations

import torch


def flow_x0(x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Clean estimate ``x0 = x_t − σ · v`` (σ broadcast over rows)."""
    return x_t - sigma * v


def flow_renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x0`` brought to noise level σ with ``noise``: ``(1 − σ) · x0 + σ · ε``."""
    return x0 + sigma * (noise - x0)
