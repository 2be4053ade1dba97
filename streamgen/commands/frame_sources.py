"""Where ``streamgen run`` reads frames from: a video file, a folder of images, or a synthetic clip.

Every source yields :class:`SourceFrame` objects (an RGB uint8 picture and its
presentation time as an integer ``pts`` in the source's ``time_base``), so the
output can keep the input's timing exactly. Files are decoded with PyAV, images
included (PNG, JPEG, ... through FFmpeg), so no image library is needed.
Opening a source checks that it is readable and raises
:class:`~streamgen.errors.InputError` with the path when it is not.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
SYNTHETIC_PREFIX = "synthetic"
SYNTHETIC_DEFAULT_FRAMES = 90
SYNTHETIC_DEFAULT_SIZE = (256, 256)


@dataclass(frozen=True)
class SourceFrame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    pts: int  # presentation time in the source's time_base


class FrameSource:
    """A sequence of frames with a time base, a nominal rate and (when known) a count."""

    description: str
    time_base: Fraction
    rate: Fraction
    count: int | None

    def __iter__(self) -> Iterator[SourceFrame]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles (idempotent)."""


def fraction_of(value: float) -> Fraction:
    """A rate as a small exact fraction (29.97 → 30000/1001)."""
    return Fraction(value).limit_denominator(1001)


class VideoFileSource(FrameSource):
    """Decoded frames of the first video stream of a file, with their own timestamps."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._container = av.open(str(path))
        except (av.FFmpegError, OSError) as error:
            raise InputError(f"cannot read input {str(path)!r}: {_reason(error)}") from None
        if not self._container.streams.video:
            self._container.close()
            raise InputError(f"input {str(path)!r} has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._stream = stream
        self.rate = Fraction(stream.average_rate or stream.guessed_rate or 30)
        self.time_base = Fraction(stream.time_base) if stream.time_base else 1 / self.rate
        self.count = stream.frames or None
        self.description = f"{path} ({stream.codec_context.name}, {stream.codec_context.width}x{stream.codec_context.height}, {float(self.rate):.3g} fps)"

    def __iter__(self) -> Iterator[SourceFrame]:
        frame_step = 1 / (self.rate * self.time_base)
        last_pts: int | None = None
        try:
            for index, frame in enumerate(self._container.decode(self._stream)):
                pts = frame.pts if frame.pts is not None else (last_pts + round(frame_step) if last_pts is not None else round(index * frame_step))
                last_pts = pts
                yield SourceFrame(frame.to_ndarray(format="rgb24"), pts)
        except av.FFmpegError as error:
            raise InputError(f"cannot decode input {str(self.path)!r}: {_reason(error)}") from None

    def close(self) -> None:
        self._container.close()


class ImageFolderSource(FrameSource):
    """Every image file in a folder, in natural name order (frame2 before frame10), at a fixed rate."""

    def __init__(self, folder: Path, fps: float) -> None:
        self.paths = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=_natural_key)
        if not self.paths:
            raise InputError(f"input folder {str(folder)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.rate = fraction_of(fps)
        self.time_base = 1 / self.rate
        self.count = len(self.paths)
        self.description = f"{folder}/ ({self.count} images, {fps:g} fps)"

    def __iter__(self) -> Iterator[SourceFrame]:
        for index, path in enumerate(self.paths):
            yield SourceFrame(read_image(path), index)


class SyntheticSource(FrameSource):
    """A moving test pattern made in memory, so a demo needs no input file.

    A diagonal colour gradient drifts across the frame while a bright disc
    circles the centre: every frame differs from the last, as a camera's do.
    """

    def __init__(self, frames: int, width: int, height: int, fps: float) -> None:
        self.count = frames
        self.width, self.height = width, height
        self.rate = fraction_of(fps)
        self.time_base = 1 / self.rate
        self.description = f"synthetic clip ({frames} frames, {width}x{height}, {fps:g} fps)"

    def __iter__(self) -> Iterator[SourceFrame]:
        for index in range(self.count):
            yield SourceFrame(synthetic_frame(index, self.width, self.height), index)


def synthetic_frame(index: int, width: int, height: int) -> np.ndarray:
    """Frame ``index`` of the synthetic clip: (height, width, 3) uint8."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = index * 0.08
    red = 127.5 + 127.5 * np.sin(2 * np.pi * (x / width) + phase)
    green = 127.5 + 127.5 * np.sin(2 * np.pi * (y / height) - phase * 0.7)
    blue = 127.5 + 127.5 * np.sin(2 * np.pi * (x + y) / (width + height) + phase * 1.3)
    image = np.stack([red, green, blue], axis=-1)
    radius = min(width, height) / 8
    cx = width / 2 + (width / 4) * np.cos(phase)
    cy = height / 2 + (height / 4) * np.sin(phase)
    disc = (x - cx) ** 2 + (y - cy) ** 2 < radius**2
    image[disc] = 255.0
    return image.astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    """One still image file → (H, W, 3) uint8 RGB, decoded by FFmpeg."""
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                return frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError) as error:
        raise InputError(f"cannot read image {str(path)!r}: {_reason(error)}") from None
    raise InputError(f"image {str(path)!r} holds no picture")


def parse_synthetic(spec: str) -> int | None:
    """``synthetic`` → the default frame count, ``synthetic:120`` → 120, anything else → None."""
    name, sep, count = spec.partition(":")
    if name != SYNTHETIC_PREFIX:
        return None
    if not sep:
        return SYNTHETIC_DEFAULT_FRAMES
    if not count.isdigit() or int(count) < 1:
        raise InputError(f"--input {spec!r}: the synthetic clip length must be a positive number of frames, e.g. synthetic:120")
    return int(count)


def open_source(spec: str, *, fps: float, size: tuple[int, int] | None = None) -> FrameSource:
    """The source ``spec`` names: ``synthetic[:FRAMES]``, a folder of images or a video file."""
    frames = parse_synthetic(spec)
    if frames is not None:
        width, height = size or SYNTHETIC_DEFAULT_SIZE
        return SyntheticSource(frames, width, height, fps)
    path = Path(spec)
    if path.is_dir():
        return ImageFolderSource(path, fps)
    if not path.exists():
        raise InputError(f"input {spec!r} does not exist (give a video file, a folder of images, or synthetic[:FRAMES])")
    return VideoFileSource(path)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)
