"""Frames in and out of the model, off the event loop: ``av.VideoFrame`` ↔ uint8 tensors.

Input: decoded frames are scaled to *cover* the stream's size and centre
cropped, in PyAV's swscale (AREA when shrinking), then stacked into one
(k, H, W, 3) uint8 tensor. Output: one ``VideoFrame`` per consumer (each
encoder owns its frame), carrying the input frame's pts and time base.

The cost of converting a frame is bounded by the stream's size, whatever
arrives (:func:`plan_conversion`): a frame whose shape is close to the
stream's is scaled to cover it in one pass, but scaling a thin frame
(2x2160 for a 512x512 stream) to cover would mean a 512x552960 image, so
such a frame is cropped to the stream's aspect first and only the crop is
scaled. Frames thinner than :data:`MAX_ASPECT` are refused with an error to
the client (they are dropped; the stream goes on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from av import VideoFrame

from ...errors import InputError
from ..sessions.slot import FrameTag

VIDEO_TIME_BASE = Fraction(1, 90000)
MAX_ASPECT = 16.0  # longest side over shortest side of an input frame (a 3840x240 strip passes, 3840x2 does not)
COVER_AREA_LIMIT = 4  # a one-pass cover may be at most this many times the stream's area; beyond, crop first


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


@dataclass(frozen=True)
class ConversionPlan:
    """How one frame becomes the stream's size: crop ``crop`` (left, top, width, height) of the source first, or not
    (None), then scale to ``scaled`` and take the centred ``size``."""

    crop: tuple[int, int, int, int] | None
    scaled: tuple[int, int]
    size: tuple[int, int]

    @property
    def largest_pixels(self) -> int:
        """The most pixels any intermediate image holds (the decoded source aside, which ``--max-input`` bounds)."""
        return self.scaled[0] * self.scaled[1]


def plan_conversion(source: tuple[int, int], size: tuple[int, int]) -> ConversionPlan:
    """The conversion of a ``source`` (width, height) frame to ``size`` (see module docstring); InputError when it is too thin."""
    src_w, src_h = source
    width, height = size
    if min(src_w, src_h) < 1 or max(src_w, src_h) / min(src_w, src_h) > MAX_ASPECT:
        raise InputError(
            f"a {src_w}x{src_h} frame was dropped: frames may be at most {MAX_ASPECT:g} times longer than they are wide; "
            f"send frames closer to the stream's {width}x{height}"
        )
    scale = max(width / src_w, height / src_h)
    cover_w = max(width, math.ceil(src_w * scale - 1e-6))
    cover_h = max(height, math.ceil(src_h * scale - 1e-6))
    if cover_w * cover_h <= COVER_AREA_LIMIT * width * height:
        return ConversionPlan(None, (cover_w, cover_h), size)
    if src_w * height > src_h * width:  # wider than the stream: keep the full height, the centred columns
        crop_w, crop_h = max(1, min(src_w, round(src_h * width / height))), src_h
    else:
        crop_w, crop_h = src_w, max(1, min(src_h, round(src_w * height / width)))
    return ConversionPlan(((src_w - crop_w) // 2, (src_h - crop_h) // 2, crop_w, crop_h), (width, height), size)


def frame_to_rgb(frame: VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    plan = plan_conversion((frame.width, frame.height), size)
    width, height = size
    if plan.crop is not None:
        left, top, crop_w, crop_h = plan.crop
        crop = np.ascontiguousarray(frame.to_ndarray(format="rgb24")[top : top + crop_h, left : left + crop_w])
        frame = VideoFrame.from_ndarray(crop, format="rgb24")
    cover_w, cover_h = plan.scaled
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
