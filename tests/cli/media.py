"""Small media files for CLI tests, written and read back with PyAV (no image library)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def moving_pattern(index: int, width: int, height: int) -> np.ndarray:
    """A frame that differs from its neighbours: a bright bar moving across a gradient."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    image[..., 1] = np.linspace(255, 0, height, dtype=np.uint8)[:, None]
    left = (index * 7) % max(1, width - 8)
    image[:, left : left + 8] = 255
    return image


def write_clip(path: Path, count: int, width: int = 96, height: int = 80, fps: int = 25, *, static: bool = False) -> None:
    """An H.264 (or MPEG-4) clip of ``count`` frames at ``fps``."""
    codec = "libx264" if _has_encoder("libx264") else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(moving_pattern(0 if static else i, width, height), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_png(path: Path, image: np.ndarray) -> None:
    """One PNG image (FFmpeg's PNG encoder through PyAV)."""
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def decode(path: Path) -> tuple[list[np.ndarray], list[float]]:
    """All frames of a video file as RGB arrays, and their presentation times in seconds."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [float(f.pts * f.time_base) for f in frames]


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001
        return False
    return True
