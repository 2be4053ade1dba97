"""``soft_edge`` and ``lineart``: learned-detector look-alikes made of classic filters (kornia), white on black.

- ``soft_edge`` approximates HED/PiDiNet soft edges: Gaussian blur, then the
  Sobel gradient magnitude (the strongest of the three colour channels, so
  colour-only boundaries count), normalised per image.
- ``lineart`` approximates the lineart annotators' ink drawing with a
  difference of Gaussians (the core of XDoG): where a pixel is darker than its
  surroundings (a stroke, a contour, a crease) it lights up, flat areas and
  soft shading stay black. Strokes come out roughly ``sigma`` pixels wide.

Both are deterministic, per image (a frame's result does not depend on the
rest of its batch) and run on the frames' device.
"""

from __future__ import annotations

import torch

from .base import check_frames, finish, gaussian_kernel_size, normalise_max, resolve_settings, threshold_rescale
from .kornia_import import kornia

# The outer Gaussian of the DoG is this much wider than the inner one (Marr-Hildreth's classic ratio).
DOG_RATIO = 1.6


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    size = gaussian_kernel_size(sigma)
    return kornia().filters.gaussian_blur2d(x, (size, size), (sigma, sigma), border_type="replicate")


class SoftEdge:
    name = "soft_edge"
    uses_previous_output = False

    def __call__(self, frames: torch.Tensor, settings=None, previous: torch.Tensor | None = None) -> torch.Tensor:
        s = resolve_settings(self.name, settings)
        check_frames(frames)
        x = frames.float()
        if s.sigma > 0:
            x = _blur(x, s.sigma)
        gradient = kornia().filters.spatial_gradient(x, mode="sobel", normalized=True)  # (N, 3, 2, H, W)
        magnitude = torch.linalg.vector_norm(gradient, dim=2).amax(dim=1, keepdim=True)
        return finish(threshold_rescale(normalise_max(magnitude), s.threshold), frames)


class Lineart:
    name = "lineart"
    uses_previous_output = False

    def __call__(self, frames: torch.Tensor, settings=None, previous: torch.Tensor | None = None) -> torch.Tensor:
        s = resolve_settings(self.name, settings)
        check_frames(frames)
        grey = kornia().color.rgb_to_grayscale(frames.float())
        darker = (_blur(grey, s.sigma * DOG_RATIO) - _blur(grey, s.sigma)).clamp_min(0.0)
        return finish(threshold_rescale(normalise_max(darker), s.threshold), frames)
