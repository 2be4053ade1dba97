"""The interface every ControlNet preprocessor follows, and the small helpers they share.

Convention (diffusers' ControlNet conditioning images): frames in are
``(N, 3, H, W)`` floats in [0, 1] on any device and dtype; the control image
out has the same shape, device and dtype, values in [0, 1]. Settings come
with every call (a live change never rebuilds anything); libraries that need
float32 get it internally and the result is cast back.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch

from ...errors import ConfigError, InputError
from ...preprocessor_settings import SETTINGS_TYPES, PreprocessorSettings

# The normalisation the ViT estimators (Depth Anything's DINOv2, ViTPose) were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class Preprocessor(Protocol):
    """Frames in, control images out. ``uses_previous_output`` is True only for ``feedback``."""

    name: str
    uses_previous_output: bool

    def __call__(self, frames: torch.Tensor, settings: Any, previous: torch.Tensor | None = None) -> torch.Tensor: ...


def check_frames(frames: Any) -> None:
    """InputError unless ``frames`` is a floating ``(N, 3, H, W)`` tensor with N, H, W > 0."""
    if not isinstance(frames, torch.Tensor):
        raise InputError(f"frames must be a torch.Tensor of shape (N, 3, H, W), got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[1] != 3 or 0 in frames.shape:
        raise InputError(f"frames must have shape (N, 3, H, W) with N, H, W > 0, got {tuple(frames.shape)}")
    if not frames.is_floating_point():
        raise InputError(f"frames must be floating point with values in [0, 1], got {frames.dtype}")


def resolve_settings(name: str, settings: Any) -> PreprocessorSettings:
    """``settings`` when it is ``name``'s settings dataclass; the defaults for None; else ConfigError."""
    cls = SETTINGS_TYPES[name]
    if settings is None:
        return cls()
    if type(settings) is not cls:
        raise ConfigError(f"{name} settings must be {cls.__name__} (see parse_preprocessor_settings), got {type(settings).__name__}")
    return settings


def finish(result: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1], widen one channel to three, and return on ``frames``' device and dtype."""
    if result.shape[1] == 1:
        result = result.expand(-1, 3, -1, -1)
    return result.clamp(0.0, 1.0).to(device=frames.device, dtype=frames.dtype).contiguous()


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per RGB channel, in ``x``'s dtype and device."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def normalise_max(values: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Divide each image of a ``(N, C, H, W)`` batch by its own maximum (all-zero images stay zero)."""
    peak = values.flatten(1).amax(dim=1).clamp_min(eps)
    return values / peak.view(-1, 1, 1, 1)


def normalise_range(values: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Map each image of a ``(N, C, H, W)`` batch to [0, 1] by its own min and max (flat images become 0)."""
    flat = values.flatten(1)
    low = flat.amin(dim=1).view(-1, 1, 1, 1)
    span = (flat.amax(dim=1).view(-1, 1, 1, 1) - low).clamp_min(eps)
    return (values - low) / span


def threshold_rescale(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """Values at or below ``threshold`` become 0; the rest are stretched back to [0, 1]."""
    if threshold <= 0:
        return values
    return ((values - threshold) / (1.0 - threshold)).clamp(0.0, 1.0)


def gaussian_kernel_size(sigma: float, height: int | None = None, width: int | None = None) -> int:
    """An odd kernel covering +-3 sigma; given the image size, capped so reflect padding (size // 2 < side) fits."""
    size = 2 * math.ceil(3.0 * sigma) + 1
    if height is not None and width is not None:
        size = min(size, 2 * min(height, width) - 1)
    return size
