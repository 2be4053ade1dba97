"""``GenerationClock``: what paces a session that takes no input (txt2vid).

A restyling session is paced by its input: each frame that arrives is a
request for the frames it becomes, and the scheduler plans steps from the
frames' arrival times. A generating session has no input, so this clock
makes the requests: one tick per chunk period (a chunk's frames at the
session's target fps), put in the session's latest-frame slot like a frame
would be. Everything downstream stays the same: the scheduler sees arrivals,
admission counts a chunk per chunk period, a step that was asked for makes
one chunk, a slow model skips ticks instead of queueing them.

A tick is only put when none is waiting: while the model is behind, the
stream runs as fast as the model can, and catches up to no backlog.
A tick's time (its ``pts``) is its place on the clock since the session
started generating, so the output's timestamps follow real time, with a gap
where ticks were skipped.
"""

from __future__ import annotations

import math
from fractions import Fraction

from .slot import FrameTag

TIME_BASE = Fraction(1, 90000)


class GenerationClock:
    """Ticks every ``period_s`` seconds from ``started_at`` (``time.monotonic()``); pure: the session's task sleeps and asks."""

    def __init__(self, period_s: float, started_at: float) -> None:
        if not period_s > 0 or not math.isfinite(period_s):
            raise ValueError(f"a generation clock needs a positive period, got {period_s!r}")
        self.period_s = period_s
        self.started_at = started_at
        self.ticks = 0  # ticks handed out
        self.skipped = 0  # ticks not handed out: the previous one was still waiting (the model is behind)
        self._next = 0  # the place on the clock of the next tick

    def due(self, now: float) -> bool:
        return now >= self.started_at + self._next * self.period_s

    def tick(self, now: float, waiting: int) -> FrameTag | None:
        """The tick due at ``now`` (None when ``waiting`` says the last one has not been taken; it counts as skipped).

        A clock that fell behind (the event loop was busy) jumps to the
        latest due place instead of handing out a burst.
        """
        place = max(self._next, math.floor((now - self.started_at) / self.period_s))
        self._next = place + 1
        if waiting:
            self.skipped += 1
            return None
        self.ticks += 1
        return FrameTag(round(place * self.period_s / TIME_BASE), TIME_BASE, now, self.ticks)

    def sleep_for(self, now: float) -> float:
        """Seconds until the next tick is due."""
        return max(0.0, self.started_at + self._next * self.period_s - now)
