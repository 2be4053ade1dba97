"""``FpsCap``: the server's maximum input frame rate per session (``--max-fps``).

Frames over the cap are dropped before they reach the model's slot (and
counted as dropped), so a 60 fps camera costs a 30 fps model no more than a
30 fps camera does. Time is the frames' own media time (pts), not arrival
time, so network jitter does not decide which frames survive.
"""

from __future__ import annotations


class FpsCap:
    """Admits at most ``fps`` frames per second of media time.

    Senders' timestamps jitter (a 30 fps camera's frames are 32-34 ms apart),
    so a frame up to a fifth of an interval early is still admitted; the
    schedule advances by whole intervals, so the long-run rate stays capped.
    A pause earns no credit beyond one frame: right after it at most one
    extra frame passes (and the latest-frame slot absorbs it anyway).
    """

    EARLY_TOLERANCE = 0.2

    def __init__(self, fps: float) -> None:
        self._interval = 1.0 / fps
        self._next_due: float | None = None

    def admit(self, frame_time: float) -> bool:
        if self._next_due is not None and frame_time < self._next_due - self.EARLY_TOLERANCE * self._interval:
            return False
        base = frame_time if self._next_due is None else max(self._next_due, frame_time - self._interval)
        self._next_due = base + self._interval
        return True
