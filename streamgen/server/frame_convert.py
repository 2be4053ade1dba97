"""Frames in and out of the model, off the event loop: ``av.VideoFrame`` ↔ uint8 tensors.

Input: decoded frames are scaled to *cover* the stream's size and centre
cropped, in PyAV's swscale (AREA when shrinking), then stacked into one
(k, H, W, 3) uint8 tensor. Output: one ``VideoFrame`` per consumer (each
encoder owns its frame), carrying the input frame's pts and time base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from av import VideoFrame

from ..errors import InputError
from .slot import FrameTag

VIDEO_TIME_BASE = Fraction(1, 90000)


@dataclass(frozen=True)
class OutputFrame:
    """One processed frame, as one ``VideoFrame`` per consumer, with the tag of its input."""

    copies: list[VideoFrame]
    tag: FrameTag | None
    skipped: bool


def frames_to_tensor(frames: list[VideoFrame], size: tuple[int, int] | None) -> torch.Tensor:
    """Decoded frames → (k, H, W, 3) uint8, scaled to cover ``size`` and centre-cropped."""
    arrays = [frame_to_rgb(frame, size) for frame in frames]
    if len({a.shape for a in arrays}) != 1:
        raise InputError("the frames of one step changed size; dropping them")
    return torch.from_numpy(np.stack(arrays))


def to_model_device(frames: torch.Tensor, device: Any) -> torch.Tensor:
    """Start the host-to-device copy of a step's frames on the input thread (CUDA: pinned, non-blocking).

    The copy is queued on the current CUDA stream, the one the model thread's
    step also uses, so the step's kernels run after it without a host sync;
    on a CPU (or an unknown device) the frames stay where they are.
    """
    if device is None or getattr(device, "type", None) != "cuda":
        return frames
    return frames.pin_memory().to(device, non_blocking=True)


def frame_to_rgb(frame: VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    width, height = size
    scale = max(width / frame.width, height / frame.height)
    cover_w = max(width, math.ceil(frame.width * scale - 1e-6))
    cover_h = max(height, math.ceil(frame.height * scale - 1e-6))
    shrinking = cover_w < frame.width or cover_h < frame.height
    rgb = frame.reformat(width=cover_w, height=cover_h, format="rgb24", interpolation="AREA" if shrinking else "BILINEAR").to_ndarray()
    top, left = (cover_h - height) // 2, (cover_w - width) // 2
    return np.ascontiguousarray(rgb[top : top + height, left : left + width])


def to_output_frames(output: Any, copies: int, fallback_pts: Any) -> list[OutputFrame]:
    """A pipeline's StepOutput → frames for ``copies`` consumers (0: counted, nothing converted)."""
    tensor = output.frames
    if tensor is None or tensor.shape[0] == 0:
        return []
    array = tensor.detach().to("cpu").numpy() if copies else None
    tags = tuple(output.tags) if output.tags else ()
    frames = []
    for j in range(tensor.shape[0]):
        tag = tags[j] if j < len(tags) and isinstance(tags[j], FrameTag) else None
        pts, time_base = (tag.pts, tag.time_base) if tag is not None and tag.pts is not None else (fallback_pts(), VIDEO_TIME_BASE)
        made = []
        for _ in range(copies):
            frame = VideoFrame.from_ndarray(np.ascontiguousarray(array[j]), format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            made.append(frame)
        frames.append(OutputFrame(made, tag, bool(output.skipped)))
    return frames
