"""The least a session offers the model worker, for tests that drive a :class:`~streamgen.server.worker.model_worker.ModelWorker` directly."""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
from av import VideoFrame

from streamgen.server.worker.frame_convert import OutputFrame
from streamgen.server.sessions.slot import FrameTag, LatestFrames


class Client:
    """A session without a peer: frames go into its slot, outputs and failures are kept."""

    def __init__(self, state, size: int = 64) -> None:
        self.slot = LatestFrames(1)
        self.state = state
        self.size = size
        self.closed = False
        self.delivered: list[OutputFrame] = []
        self.failures: list[BaseException] = []

    def consumer_count(self) -> int:
        return 1

    def fallback_pts(self) -> int:
        return 0

    def deliver(self, frames, produced_at) -> None:
        self.delivered.extend(frames)

    def fail(self, error, is_user_error) -> None:
        self.failures.append(error)

    def feed(self, index: int) -> None:
        frame = VideoFrame.from_ndarray(np.full((self.size, self.size, 3), index % 256, dtype=np.uint8), format="rgb24")
        frame.pts, frame.time_base = index * 3000, Fraction(1, 90000)
        self.slot.put(frame, FrameTag(frame.pts, frame.time_base, time.monotonic(), index))
