"""What every local output is: something that takes pictures with timestamps, and is closed once.

A sink learns the stream's size from its first picture (the size is fixed
for a stream), so it can open its device or file then. ``realtime`` sinks
(a virtual camera, a window) show frames as they come: the pump spaces the
frames of a video model's chunk for them, instead of flashing the chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import numpy as np

from ..errors import StreamgenError


class OutputError(StreamgenError):
    """A sink failed while the stream ran (a full disk, a device taken away); the run ends with the message."""


class SinkClosed(Exception):
    """The user closed an output (the preview window): the run stops, and that is no error."""


@dataclass(frozen=True)
class Picture:
    """One processed frame: (H, W, 3) uint8 RGB, shown at ``pts × time_base`` seconds of the stream."""

    image: np.ndarray
    pts: int
    time_base: Fraction

    @property
    def seconds(self) -> float:
        return float(self.pts * self.time_base)


class FrameSink(Protocol):
    """A local output (see module docstring)."""

    name: str  # what the status line and the summary call it
    realtime: bool
    frames_written: int

    def write(self, picture: Picture) -> None:
        """Show or store one picture (the sink thread); raises OutputError when it cannot."""

    def close(self) -> None:
        """Finish (flush a file, release a device); safe to call twice."""

    def describe(self) -> str:
        """One line for the summary: where the frames went and how many."""
