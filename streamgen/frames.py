"""Frames in, frames out: conversion between user frame types and model tensors.

Users hand streamgen numpy arrays (HWC uint8), torch tensors or
``av.VideoFrame`` objects and get the same kind back. Inside, a frame is a
float tensor in [-1, 1], NCHW, at the stream's resolution. Frames are scaled
to cover the target size and centre-cropped, so any camera aspect works.
No PIL, no JPEG: uint8 → torch → model → uint8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

FrameKindName = Literal["numpy", "torch_uint8", "torch_float", "av"]
MAX_INPUT_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class FrameKind:
    """How the user's frames looked, so outputs can be returned the same way."""

    name: FrameKindName
    batched: bool
    device: torch.device | None = None
    pts: tuple[Any, ...] = ()
    time_base: Any = None


def _av_module():
    try:
        import av  # noqa: PLC0415  (optional at import time, required for VideoFrame input)
    except ImportError:  # pragma: no cover - av is a hard dependency
        return None
    return av


def _check_uint8_hwc(array: np.ndarray | torch.Tensor, what: str) -> None:
    shape = tuple(array.shape)
    if len(shape) not in (3, 4) or shape[-1] != 3:
        raise InputError(f"{what} must have shape (height, width, 3) or (batch, height, width, 3) with RGB channels; got shape {shape}")
    if shape[-2] * shape[-3] > MAX_INPUT_PIXELS or min(shape[-3], shape[-2]) < 8:
        raise InputError(f"{what} is {shape[-2]}x{shape[-3]}; frames must be between 8x8 and 4096x4096 pixels")


def frames_to_uint8(frames: Any) -> tuple[torch.Tensor, FrameKind]:
    """Normalise user frames to a (B, H, W, 3) uint8 CPU/GPU tensor plus their kind.

    Accepts one frame or a batch: numpy uint8 (H, W, 3) / (B, H, W, 3); torch
    uint8 of the same layouts; torch float (3, H, W) / (B, 3, H, W) in [0, 1];
    ``av.VideoFrame`` or a list of them.
    """
    av = _av_module()
    if av is not None and isinstance(frames, av.VideoFrame):
        frames = [frames]
        single = True
    else:
        single = False
    if isinstance(frames, list) and frames and av is not None and isinstance(frames[0], av.VideoFrame):
        if not all(isinstance(f, av.VideoFrame) for f in frames):
            raise InputError("a list of frames must contain only av.VideoFrame objects")
        arrays = [f.to_ndarray(format="rgb24") for f in frames]
        if len({a.shape for a in arrays}) != 1:
            raise InputError("all frames of a batch must have the same size")
        stacked = torch.from_numpy(np.stack(arrays))
        _check_uint8_hwc(stacked, "a VideoFrame")
        kind = FrameKind("av", not single, None, tuple(f.pts for f in frames), frames[0].time_base)
        return stacked, kind
    if isinstance(frames, list):
        if not frames:
            raise InputError("got an empty list of frames")
        if all(isinstance(f, np.ndarray) for f in frames):
            frames = np.stack(frames) if len({f.shape for f in frames}) == 1 else frames
        elif all(isinstance(f, torch.Tensor) for f in frames):
            frames = torch.stack(frames) if len({tuple(f.shape) for f in frames}) == 1 else frames
        if isinstance(frames, list):
            raise InputError("all frames of a batch must be of one type and one size")
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise InputError(f"numpy frames must be uint8 RGB (values 0-255); got dtype {frames.dtype}")
        _check_uint8_hwc(frames, "a numpy frame")
        tensor = torch.from_numpy(np.ascontiguousarray(frames))
        batched = tensor.ndim == 4
        return (tensor if batched else tensor[None]), FrameKind("numpy", batched)
    if isinstance(frames, torch.Tensor):
        return _torch_to_uint8(frames)
    raise InputError(
        f"unsupported frame type {type(frames).__name__}; pass a numpy uint8 array (H, W, 3), "
        "a torch tensor or an av.VideoFrame"
    )


def _torch_to_uint8(frames: torch.Tensor) -> tuple[torch.Tensor, FrameKind]:
    if frames.dtype == torch.uint8:
        _check_uint8_hwc(frames, "a uint8 tensor frame")
        batched = frames.ndim == 4
        return (frames if batched else frames[None]), FrameKind("torch_uint8", batched, frames.device)
    if not frames.is_floating_point():
        raise InputError(f"tensor frames must be uint8 (H, W, 3) or float (3, H, W) in [0, 1]; got dtype {frames.dtype}")
    shape = tuple(frames.shape)
    if frames.ndim not in (3, 4) or shape[-3] != 3:
        raise InputError(f"float tensor frames must have shape (3, height, width) or (batch, 3, height, width); got {shape}")
    if shape[-1] * shape[-2] > MAX_INPUT_PIXELS or min(shape[-1], shape[-2]) < 8:
        raise InputError(f"frame is {shape[-1]}x{shape[-2]}; frames must be between 8x8 and 4096x4096 pixels")
    if not torch.isfinite(frames).all():
        raise InputError("float tensor frames contain NaN or infinite values")
    batched = frames.ndim == 4
    batch = frames if batched else frames[None]
    as_uint8 = (batch.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return as_uint8, FrameKind("torch_float", batched, frames.device)


def uint8_to_model(frames: torch.Tensor, width: int, height: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, height, width) in [-1, 1] on ``device``.

    The frame is scaled to cover the target and centre-cropped.
    """
    if frames.device != device:
        if device.type == "cuda" and frames.device.type == "cpu":
            frames = frames.pin_memory()
        frames = frames.to(device, non_blocking=True)
    images = frames.permute(0, 3, 1, 2).to(dtype=torch.float32)
    images = cover_resize(images, width, height)
    return (images / 127.5 - 1.0).to(dtype)


def cover_resize(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Scale (B, C, H, W) images to cover ``width`` x ``height`` and centre-crop."""
    in_h, in_w = images.shape[-2:]
    if (in_h, in_w) == (height, width):
        return images
    scale = max(width / in_w, height / in_h)
    new_w, new_h = max(width, round(in_w * scale)), max(height, round(in_h * scale))
    if (new_h, new_w) != (in_h, in_w):
        images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return images[..., top : top + height, left : left + width]


def model_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8 on the same device."""
    return ((images.float() + 1.0) * 127.5).clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def uint8_to_user(frames: torch.Tensor, kind: FrameKind) -> Any:
    """Return (B, H, W, 3) uint8 frames in the kind the user passed in."""
    if kind.name == "torch_uint8":
        out = frames.to(kind.device)
    elif kind.name == "torch_float":
        out = (frames.permute(0, 3, 1, 2).float() / 255.0).to(kind.device)
    else:
        array = frames.cpu().numpy()
        if kind.name == "numpy":
            return array if kind.batched else array[0]
        av = _av_module()
        out_frames = []
        for i, image in enumerate(array):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if i < len(kind.pts):
                frame.pts = kind.pts[i]
                if kind.time_base is not None:
                    frame.time_base = kind.time_base
            out_frames.append(frame)
        return out_frames if kind.batched else out_frames[0]
    return out if kind.batched else out[0]
