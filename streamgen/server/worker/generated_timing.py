"""Timestamps for the frames of a generated chunk (txt2vid), which have no input frames to take theirs from.

A session that takes no input is paced by ticks (one per chunk period,
:mod:`streamgen.server.sessions.generation_clock`); the pipeline gives every
frame of the chunk a tick asked for that tick's tag. Encoders and receivers
need strictly increasing timestamps, and the output track spaces a chunk's
frames by them, so each frame gets its own: the tick's time plus its place in
the chunk at the stream's frame rate. A chunk has at most a chunk period's
frames, so one chunk's times never reach the next tick's.
"""

from __future__ import annotations

from dataclasses import replace

from ...pipeline.output import StepOutput
from ..sessions.slot import FrameTag


def spread_chunk_times(output: StepOutput, fps: float) -> StepOutput:
    """``output`` with each run of frames that share one :class:`FrameTag` given times ``1/fps`` apart from it."""
    tags = list(output.tags)
    if not tags or fps <= 0:
        return output
    spread: list[object] = []
    place = 0
    for j, tag in enumerate(tags):
        place = place + 1 if j > 0 and tag is tags[j - 1] else 0
        spread.append(_later(tag, place, fps) if isinstance(tag, FrameTag) and place else tag)
    return StepOutput(output.frames, tuple(spread), output.skipped)


def _later(tag: FrameTag, place: int, fps: float) -> FrameTag:
    """``tag`` moved ``place`` frames of ``fps`` later (its time only: arrival and index stay the tick's)."""
    if tag.pts is None or tag.time_base is None:
        return tag
    return replace(tag, pts=tag.pts + round(place / (fps * tag.time_base)))
