"""``blur`` and ``tile``: low-detail versions of the frame, for ControlNet blur and tile models.

``blur`` is a Gaussian blur (kornia). ``tile`` follows the ControlNet-tile
convention: shrink the frame by ``factor`` (antialiased) and scale it back up
(bicubic), so structure and colour survive while fine detail is left for the
diffusion model to invent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import check_frames, finish, gaussian_kernel_size, resolve_settings
from .kornia_import import kornia


class Blur:
    name = "blur"
    uses_previous_output = False

    def __call__(self, frames: torch.Tensor, settings=None, previous: torch.Tensor | None = None) -> torch.Tensor:
        s = resolve_settings(self.name, settings)
        check_frames(frames)
        size = gaussian_kernel_size(s.sigma)
        blurred = kornia().filters.gaussian_blur2d(frames.float(), (size, size), (s.sigma, s.sigma), border_type="replicate")
        return finish(blurred, frames)


class Tile:
    name = "tile"
    uses_previous_output = False

    def __call__(self, frames: torch.Tensor, settings=None, previous: torch.Tensor | None = None) -> torch.Tensor:
        s = resolve_settings(self.name, settings)
        check_frames(frames)
        height, width = frames.shape[2], frames.shape[3]
        small = (max(1, round(height / s.factor)), max(1, round(width / s.factor)))
        if small == (height, width):
            return finish(frames, frames)
        x = F.interpolate(frames.float(), size=small, mode="bilinear", antialias=True, align_corners=False)
        x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)
        return finish(x, frames)
