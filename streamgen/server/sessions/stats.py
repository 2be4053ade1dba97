"""Per-session counters, rates and latency percentiles (owned by the event-loop thread).

The input pump and the output delivery both run on the event loop, so these
objects need no locks. ``snapshot()`` is what the ``stats`` data-channel
message, ``GET /api/sessions/{id}`` and ``/metrics`` report.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


class EventRate:
    """Events per second over a sliding window."""

    def __init__(self, window: float = 2.0) -> None:
        self._window = window
        self._times: deque[float] = deque()

    def add(self, now: float) -> None:
        self._times.append(now)
        self._expire(now)

    def per_second(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._expire(now)
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], self._times[-1] - self._times[0])
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def _expire(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()


class LatencyWindow:
    """The last ``size`` latencies, for p50/p95."""

    def __init__(self, size: int = 300) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._values.append(seconds)

    def percentile(self, q: float) -> float | None:
        if not self._values:
            return None
        ordered = sorted(self._values)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@dataclass
class SessionStats:
    """What one session has done so far (see module docstring)."""

    created_at: float = field(default_factory=time.monotonic)
    first_input_at: float | None = None
    first_output_at: float | None = None
    first_output_pts: int | None = None
    frames_received: int = 0
    frames_dropped: int = 0
    frames_rejected: int = 0
    frames_output: int = 0
    frames_skipped: int = 0
    frames_repeated: int = 0
    deadline_misses: int = 0
    input_rate: EventRate = field(default_factory=EventRate)
    output_rate: EventRate = field(default_factory=EventRate)
    latency: LatencyWindow = field(default_factory=LatencyWindow)

    def on_input(self, now: float) -> None:
        self.frames_received += 1
        self.input_rate.add(now)
        if self.first_input_at is None:
            self.first_input_at = now

    def on_output(self, now: float, latency: float | None, pts: int | None, skipped: bool) -> None:
        self.frames_output += 1
        self.output_rate.add(now)
        if skipped:
            self.frames_skipped += 1
        if latency is not None:
            self.latency.add(latency)
        if self.first_output_at is None:
            self.first_output_at = now
            self.first_output_pts = pts

    @property
    def time_to_first_frame(self) -> float | None:
        """Seconds from the session's creation to its first output frame."""
        return None if self.first_output_at is None else self.first_output_at - self.created_at

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        p50, p95 = self.latency.percentile(50), self.latency.percentile(95)
        ttff = self.time_to_first_frame
        return {
            "fps_in": round(self.input_rate.per_second(now), 2),
            "fps_out": round(self.output_rate.per_second(now), 2),
            "latency_ms_p50": None if p50 is None else round(p50 * 1000, 1),
            "latency_ms_p95": None if p95 is None else round(p95 * 1000, 1),
            "frames_in": self.frames_received,
            "frames_out": self.frames_output,
            "dropped": self.frames_dropped,
            "rejected": self.frames_rejected,
            "skipped": self.frames_skipped,
            "repeated": self.frames_repeated,
            "deadline_misses": self.deadline_misses,
            "time_to_first_frame_ms": None if ttff is None else round(ttff * 1000, 1),
            "first_output_pts": self.first_output_pts,
            "uptime_s": round(now - self.created_at, 2),
        }
