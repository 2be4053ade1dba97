"""A batched step that fails leaves every session exactly as it was.

``pipeline.step`` mutates each state as it goes (buffers, caches, counters,
random streams, queued updates). If it raised half-way and the sessions were
simply stepped again one by one, the sessions before the failing one would
be advanced twice (a frame fed twice, a chunk dropped, an accepted update
lost). So before a batched step every state is checkpointed
(``pipeline.checkpoint``: cheap copies of what a step changes); when the
step raises, all are restored, then each session is stepped alone from its
checkpoint. A session whose solo step raises is restored once more and
reported; the others' results equal their solo runs.

A pipeline without checkpoints must be stateless across a failed step (the
identity model is); it is retried session by session as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepEntry:
    state: Any
    frames: Any
    tags: tuple[Any, ...]


@dataclass(frozen=True)
class Outcome:
    """One session's result of a step: its output, or the error its own step raised."""

    output: Any = None
    error: Exception | None = None


def step_transactionally(pipeline: Any, entries: Sequence[StepEntry]) -> list[Outcome]:
    """Step ``entries`` in one batch; on failure restore all and find the failing sessions (see module docstring)."""
    checkpoint = getattr(pipeline, "checkpoint", None)
    restore = getattr(pipeline, "restore", None)
    saved = [checkpoint(e.state) for e in entries] if callable(checkpoint) and callable(restore) else None
    try:
        outputs = pipeline.step([e.state for e in entries], [e.frames for e in entries], [e.tags for e in entries])
        return [Outcome(output=o) for o in outputs]
    except Exception as error:  # noqa: BLE001 - which session it belongs to is found below
        if saved is not None:
            for entry, snapshot in zip(entries, saved):
                restore(entry.state, snapshot)
        if len(entries) == 1:
            return [Outcome(error=error)]
    outcomes = []
    for entry in entries:
        # A fresh checkpoint: restoring hands the saved objects back to the state, which may then change them.
        snapshot = checkpoint(entry.state) if saved is not None else None
        try:
            outcomes.append(Outcome(output=pipeline.step([entry.state], [entry.frames], [entry.tags])[0]))
        except Exception as error:  # noqa: BLE001
            if snapshot is not None:
                restore(entry.state, snapshot)
            outcomes.append(Outcome(error=error))
    return outcomes
