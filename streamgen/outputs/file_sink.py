"""``file:PATH``: the processed stream as a video file, through ``streamgen run``'s writer.

Each picture keeps its capture timestamp, so the file plays at the speed the
stream ran: frames the model could not keep up with are gaps in time, not a
fast-forward. The writer opens the file on the first picture (when the size
is known) and finishes it on :meth:`FileSink.close`, so a stopped run still
leaves a playable file.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av

from .video_writer import VideoWriter
from ..errors import StreamgenError
from .sink import OutputError, Picture


class FileSink:
    """Encode pictures into ``path`` with ``codec`` (see module docstring)."""

    name = "file"
    realtime = False

    def __init__(self, path: Path, codec: str, rate: Fraction, bitrate_kbps: int | None = None) -> None:
        self.path = path
        self.codec = codec
        self.rate = rate
        self.bitrate_kbps = bitrate_kbps
        self._writer: VideoWriter | None = None

    @property
    def frames_written(self) -> int:
        return self._writer.frames_written if self._writer is not None else 0

    def write(self, picture: Picture) -> None:
        if self._writer is None:
            self._writer = VideoWriter(self.path, self.codec, rate=self.rate, time_base=picture.time_base, bitrate_kbps=self.bitrate_kbps)
        try:
            self._writer.write(picture.image, picture.pts)
        except StreamgenError:
            raise
        except (av.FFmpegError, OSError) as error:
            raise OutputError(f"cannot write {str(self.path)!r}: {getattr(error, 'strerror', None) or error}") from None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def describe(self) -> str:
        if self._writer is None or self._writer.size is None:
            return f"file {self.path}: nothing written"
        width, height = self._writer.size
        return f"file {self.path} ({self.codec}, {width}x{height}, {self.frames_written} frames)"
