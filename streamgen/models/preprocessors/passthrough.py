"""``passthrough``: the frame itself is the control image (e.g. a ControlNet trained on raw images, or an external preprocessor)."""

from __future__ import annotations

import torch

from .base import check_frames, finish, resolve_settings


class Passthrough:
    """Returns a clamped copy of the frames, same device and dtype."""

    name = "passthrough"
    uses_previous_output = False

    def __call__(self, frames: torch.Tensor, settings=None, previous: torch.Tensor | None = None) -> torch.Tensor:
        resolve_settings(self.name, settings)
        check_frames(frames)
        return finish(frames, frames)
