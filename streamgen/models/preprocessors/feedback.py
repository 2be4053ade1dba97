"""``feedback``: the stream's previous output as the control image (TemporalNet-style temporal consistency).

The caller passes the previous output frames as ``previous`` ((N or 1, 3, h, w)
in [0, 1]); on the first frame there is none and the frames themselves are
used. ``mix`` < 1 blends the current frame in. A previous output of another
size is resized to the frames' size (bilinear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import InputError
from .base import check_frames, finish, resolve_settings


class Feedback:
    name = "feedback"
    uses_previous_output = True

    def __call__(self, frames: torch.Tensor, settings=None, previous: torch.Tensor | None = None) -> torch.Tensor:
        s = resolve_settings(self.name, settings)
        check_frames(frames)
        if previous is None:
            return finish(frames, frames)
        if not isinstance(previous, torch.Tensor) or previous.ndim != 4 or previous.shape[1] != 3 or previous.shape[0] not in (1, frames.shape[0]):
            shape = tuple(previous.shape) if isinstance(previous, torch.Tensor) else type(previous).__name__
            raise InputError(f"previous must have shape (1 or {frames.shape[0]}, 3, H, W) like the frames, got {shape}")
        prev = previous.to(device=frames.device, dtype=torch.float32)
        if prev.shape[2:] != frames.shape[2:]:
            prev = F.interpolate(prev, size=tuple(frames.shape[2:]), mode="bilinear", antialias=True, align_corners=False)
        prev = prev.expand(frames.shape[0], -1, -1, -1)
        if s.mix >= 1.0:
            return finish(prev, frames)
        return finish(torch.lerp(frames.float(), prev, s.mix), frames)
