"""``LatestFrames``: where a session's input waits for the worker, keeping only the newest.

A queue between a 30 fps camera and a model that may run slower grows without
bound and so does latency. The slot holds at most the frames of ONE step
(``frames_per_step``, usually 1); a new frame pushes the oldest out, and the
push is counted as a drop. The event-loop side ``put``s, the worker thread
``take``s; a lock keeps them apart and is held only for a few list operations.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FrameTag:
    """What the worker carries through the pipeline with each frame.

    ``pts``/``time_base`` are the input frame's timing, given to the output
    frame it becomes; ``received_at`` (``time.monotonic()``) measures the
    server's own latency; ``index`` counts the session's accepted frames.
    """

    pts: int | None
    time_base: Any
    received_at: float
    index: int


class LatestFrames:
    """Holds the newest ``capacity`` frames of one session (see module docstring)."""

    def __init__(self, capacity: int = 1) -> None:
        self._lock = threading.Lock()
        self._items: deque[tuple[Any, FrameTag]] = deque()
        self._capacity = max(1, capacity)
        self.dropped = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def set_capacity(self, capacity: int) -> None:
        with self._lock:
            self._capacity = max(1, capacity)
            self._trim()

    def put(self, frame: Any, tag: FrameTag) -> bool:
        """Store a frame; returns True when an older frame was dropped to make room."""
        with self._lock:
            self._items.append((frame, tag))
            return self._trim() > 0

    def ready(self) -> bool:
        with self._lock:
            return len(self._items) >= self._capacity

    def waiting(self) -> int:
        """How many frames wait (fewer than ``capacity``: a step's call is not complete yet)."""
        with self._lock:
            return len(self._items)

    def take(self) -> list[tuple[Any, FrameTag]] | None:
        """All frames of one step, oldest first, or None when fewer are waiting."""
        with self._lock:
            if len(self._items) < self._capacity:
                return None
            items = list(self._items)
            self._items.clear()
            return items

    def arrivals(self) -> tuple[float, ...]:
        """When each waiting frame arrived (``time.monotonic()``), oldest first: the scheduler's input."""
        with self._lock:
            return tuple(tag.received_at for _, tag in self._items)

    def drop_oldest(self, count: int) -> int:
        """Drop up to ``count`` of the oldest waiting frames (the scheduler found them too late to use)."""
        with self._lock:
            removed = 0
            while removed < count and self._items:
                self._items.popleft()
                removed += 1
            self.dropped += removed
            return removed

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _trim(self) -> int:
        removed = 0
        while len(self._items) > self._capacity:
            self._items.popleft()
            removed += 1
        self.dropped += removed
        return removed
