"""Writing ``streamgen run``'s output: RGB frames with timestamps → an encoded video file (PyAV).

The writer opens the file on the first frame, when the output size is known,
and keeps the input's time base so each output frame gets exactly the
presentation time of the input frame it depicts. A frame whose time is not
after the last one written (a pipeline may hand the same input frame back
twice while its buffer fills) is not written twice; it is counted instead.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import ConfigError

# The encoder ``auto`` picks: H.264 when PyAV's FFmpeg has libx264, else MPEG-4 part 2 (always built in).
AUTO_CODECS = ("libx264", "mpeg4")
CODEC_ALIASES = {"h264": "libx264"}
MPEG4_MAX_TIME_BASE_DENOMINATOR = 65535  # the MPEG-4 part 2 standard's limit
DEFAULT_BITRATE_KBPS = 4000  # for encoders without a constant-quality mode set here
X264_OPTIONS = {"crf": "20", "preset": "veryfast"}
# The containers offered when an --output extension cannot hold the video (each is checked against the encoder).
VIDEO_CONTAINERS = (".mp4", ".mkv", ".mov", ".avi", ".webm")


def encoder_available(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.FFmpegError, ValueError):
        return False
    return True


def pick_codec(requested: str) -> str:
    """``auto`` → the best encoder this FFmpeg build has; a named one is checked to exist."""
    if requested == "auto":
        for name in AUTO_CODECS:
            if encoder_available(name):
                return name
        raise ConfigError("no H.264 or MPEG-4 encoder in this PyAV build; pass --codec with an encoder it has")
    name = CODEC_ALIASES.get(requested, requested)
    if not encoder_available(name):
        raise ConfigError(f"--codec {requested!r}: this PyAV build has no such video encoder (try auto, h264 or mpeg4)")
    return name


def check_output_path(path: Path, codec: str | None = None) -> None:
    """Fail before any work when the output cannot be created (or, given ``codec``, cannot hold that video)."""
    if path.is_dir():
        raise ConfigError(f"--output {str(path)!r} is a folder; give a file name such as out.mp4")
    if not path.parent.exists():
        raise ConfigError(f"--output {str(path)!r}: folder {str(path.parent)!r} does not exist")
    if not path.suffix:
        raise ConfigError(f"--output {str(path)!r} needs a file extension that names the container, e.g. .mp4 or .mkv")
    if codec is not None and not container_takes(path.name, codec):
        accepted = ", ".join(suffix for suffix in VIDEO_CONTAINERS if container_takes(f"out{suffix}", codec))
        raise ConfigError(f"--output {str(path)!r}: PyAV cannot write {codec} video to a {path.suffix} file; use one of {accepted or 'none found (try another --codec)'}")


def container_takes(name: str, codec: str) -> bool:
    """Whether FFmpeg picks a muxer for a file called ``name`` that accepts ``codec`` video.

    Asks PyAV as the writer will (``av.open(name, "w")``, the format guessed from
    the extension), in memory: nothing is created on disk.
    """
    try:
        container = av.open(io.BytesIO(), mode="w", format=_guess_format(name))
    except (av.FFmpegError, ValueError):
        return False
    try:
        container.add_stream(codec, rate=30)
    except (av.FFmpegError, ValueError):
        return False
    finally:
        container.close()
    return not _is_image_muxer(container.format.name)


def _guess_format(name: str) -> str:
    """The muxer FFmpeg guesses from a file name (ValueError when none: "Could not determine output format")."""
    container = av.open(name, mode="w")  # guesses only: PyAV opens the file when the first packet is written
    try:
        return container.format.name
    finally:
        container.close()


def _is_image_muxer(format_name: str) -> bool:
    """Image muxers (image2, *_pipe) and raw pipes (yuv4mpegpipe) accept a codec here but cannot write it as video."""
    return format_name == "image2" or format_name.endswith("pipe") or format_name in {"apng", "gif", "webp"}


class VideoWriter:
    """Encode (H, W, 3) uint8 RGB frames at given pts into ``path``."""

    def __init__(self, path: Path, codec: str, *, rate: Fraction, time_base: Fraction, bitrate_kbps: int | None = None) -> None:
        self.path = path
        self.codec = codec
        self.rate = rate
        self.source_time_base = time_base
        self.time_base = _encoder_time_base(codec, time_base)
        self.bitrate_kbps = bitrate_kbps
        self.frames_written = 0
        self.frames_repeated = 0
        self.size: tuple[int, int] | None = None
        self._container = None
        self._stream = None
        self._last_pts: int | None = None

    def write(self, image: np.ndarray, source_pts: int) -> bool:
        """Encode one frame; returns False (and counts it) when its time is not after the last."""
        pts = round(source_pts * self.source_time_base / self.time_base)
        if self._last_pts is not None and pts <= self._last_pts:
            self.frames_repeated += 1
            return False
        if self._stream is None:
            self._open(image.shape[1], image.shape[0])
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = pts
        frame.time_base = self.time_base
        self._mux(self._stream.encode(frame))
        self._last_pts = pts
        self.frames_written += 1
        return True

    def close(self) -> None:
        """Flush the encoder and finish the file (safe to call twice, or when nothing was written)."""
        if self._container is None:
            return
        try:
            self._mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None

    def _open(self, width: int, height: int) -> None:
        try:
            container = av.open(str(self.path), mode="w")
        except (av.FFmpegError, OSError, ValueError) as error:
            raise ConfigError(f"cannot create {str(self.path)!r}: {getattr(error, 'strerror', None) or error}") from None
        try:
            stream = container.add_stream(self.codec, rate=self.rate)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.time_base = self.time_base
            stream.codec_context.time_base = self.time_base
            if self.bitrate_kbps:
                stream.bit_rate = self.bitrate_kbps * 1000
            elif self.codec == "libx264":
                stream.options = dict(X264_OPTIONS)
            else:
                stream.bit_rate = DEFAULT_BITRATE_KBPS * 1000
        except (av.FFmpegError, ValueError) as error:
            container.close()
            raise ConfigError(f"cannot write {self.codec} video to {str(self.path)!r}: {error}") from None
        self._container, self._stream = container, stream
        self.size = (width, height)

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)


def _encoder_time_base(codec: str, time_base: Fraction) -> Fraction:
    """The source's time base, unless the encoder cannot represent it (MPEG-4 part 2: then 1/60000 s)."""
    if codec == "mpeg4" and time_base.denominator > MPEG4_MAX_TIME_BASE_DENOMINATOR:
        return Fraction(1, 60000)
    return time_base
