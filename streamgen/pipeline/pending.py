"""A stream's queued live update: one helper for every kind of state, with one rule for rolling back.

A live update (PATCH, the data channel, ``stream.update``) is validated on
the caller's thread and *queued*; the model thread *takes* it at the start of
its next step and applies it. A step that raises is undone from the
checkpoint taken just before it. Three updates may then exist: the one
queued when the checkpoint was taken, the one the failed step took and
applied, and one queued by another thread after the step took its own (it
was parsed over the latest parameters, so it contains the applied one). The
client was told "accepted" for each, so after the rollback the newest of
them must be queued again: still queued, else applied by the failed step,
else queued at the checkpoint. Nothing accepted is ever lost.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

P = TypeVar("P")


class PendingUpdate(Generic[P]):
    """The queued parameters of one stream (thread-safe; see module docstring)."""

    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._value: P | None = None
        self._lock = threading.Lock()

    def set(self, params: P) -> None:
        """Queue validated parameters (any thread)."""
        with self._lock:
            self._value = params

    def take(self) -> P | None:
        """The queued parameters, unqueued (the model thread, at the start of a step)."""
        with self._lock:
            value, self._value = self._value, None
            return value

    def peek(self) -> P | None:
        with self._lock:
            return self._value

    def latest(self, current: P) -> P:
        """The parameters in force once the queued ones are applied."""
        with self._lock:
            return self._value if self._value is not None else current

    def restore(self, *, at_checkpoint: P | None, applied: P | None) -> None:
        """After a rollback, queue the newest accepted update: still queued, else ``applied``, else ``at_checkpoint``."""
        with self._lock:
            if self._value is None:
                self._value = applied if applied is not None else at_checkpoint
