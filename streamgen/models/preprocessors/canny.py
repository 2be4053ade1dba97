"""``canny``: Canny edges (kornia), white on black, three channels: what ControlNet canny models are trained on.

Thresholds apply to kornia's normalised Sobel magnitude of the grey [0, 1]
image (not OpenCV's 0-255 scale: 0.1/0.2 here is roughly OpenCV's 100/200).
"""

from __future__ import annotations

import torch

from .base import check_frames, finish, gaussian_kernel_size, resolve_settings
from .kornia_import import kornia


class Canny:
    name = "canny"
    uses_previous_output = False

    def __call__(self, frames: torch.Tensor, settings=None, previous: torch.Tensor | None = None) -> torch.Tensor:
        s = resolve_settings(self.name, settings)
        check_frames(frames)
        x = frames.float()
        size = gaussian_kernel_size(s.sigma, x.shape[2], x.shape[3])
        _, edges = kornia().filters.canny(
            x,
            low_threshold=s.low_threshold,
            high_threshold=s.high_threshold,
            kernel_size=size,
            sigma=(s.sigma, s.sigma),
            hysteresis=True,
        )
        return finish(edges, frames)
