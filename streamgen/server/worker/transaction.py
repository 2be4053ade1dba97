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

from ...pipeline.contract import Checkpointable


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


@dataclass
class StepReport:
    """The outcomes, and whether the batch ran as one clean step (only such a step's time is a fair latency sample)."""

    outcomes: list[Outcome]
    clean: bool


def step_transactionally(pipeline: Any, entries: Sequence[StepEntry]) -> list[Outcome]:
    """Step ``entries`` in one batch; on failure restore all and find the failing sessions (see module docstring)."""
    return step_with_report(pipeline, entries).outcomes


def step_with_report(pipeline: Any, entries: Sequence[StepEntry], *, checkpoints: bool | None = None) -> StepReport:
    """:func:`step_transactionally`, saying whether the step ran once, cleanly, for every session.

    ``checkpoints``: whether the pipeline is :class:`~streamgen.pipeline.contract.Checkpointable`
    (the worker knows it from load; None: find out now). Checkpointing and
    restoring run inside the isolation too: a session whose checkpoint or
    restore raises fails alone (its state cannot be trusted, so it is not
    stepped), and the others are served.
    """
    transactional = isinstance(pipeline, Checkpointable) if checkpoints is None else checkpoints
    checkpoint = pipeline.checkpoint if transactional else None
    restore = pipeline.restore if transactional else None
    failed: dict[int, Exception] = {}
    saved: dict[int, Any] = {}
    if transactional:
        for index, entry in enumerate(entries):
            try:
                saved[index] = checkpoint(entry.state)
            except Exception as error:  # noqa: BLE001 - this session fails alone; nothing was stepped yet
                failed[index] = error
    batch = [i for i in range(len(entries)) if i not in failed]
    if not failed and batch:
        try:
            outputs = pipeline.step([entries[i].state for i in batch], [entries[i].frames for i in batch], [entries[i].tags for i in batch])
            return StepReport([Outcome(output=o) for o in outputs], clean=True)
        except Exception as error:  # noqa: BLE001 - which session it belongs to is found below
            for index in batch:
                _restore(restore, entries[index].state, saved.get(index), failed, index)
            if len(entries) == 1 and not failed:
                return StepReport([Outcome(error=error)], clean=False)
    outcomes = []
    for index, entry in enumerate(entries):
        if index in failed:
            outcomes.append(Outcome(error=failed[index]))
            continue
        outcomes.append(_solo(pipeline, entry, checkpoint if transactional else None, restore))
    return StepReport(outcomes, clean=False)


def _solo(pipeline: Any, entry: StepEntry, checkpoint: Any, restore: Any) -> Outcome:
    """One session stepped alone, from a fresh checkpoint (restoring hands the saved objects back, which may then change)."""
    try:
        snapshot = checkpoint(entry.state) if checkpoint is not None else None
    except Exception as error:  # noqa: BLE001
        return Outcome(error=error)
    try:
        return Outcome(output=pipeline.step([entry.state], [entry.frames], [entry.tags])[0])
    except Exception as error:  # noqa: BLE001
        if snapshot is not None:
            try:
                restore(entry.state, snapshot)
            except Exception as restore_error:  # noqa: BLE001 - the state is lost; the session's error says both
                return Outcome(error=RuntimeError(f"{error}; restoring the stream after it failed too: {restore_error}"))
        return Outcome(error=error)


def _restore(restore: Any, state: Any, snapshot: Any, failed: dict[int, Exception], index: int) -> None:
    if snapshot is None:
        return
    try:
        restore(state, snapshot)
    except Exception as error:  # noqa: BLE001 - a state that could not be put back is not stepped again
        failed[index] = RuntimeError(f"restoring the stream after a failed step failed: {error}")
