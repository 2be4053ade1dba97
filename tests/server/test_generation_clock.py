"""The generation clock and the times of a generated chunk's frames: pure functions, no server."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from streamgen.pipeline.output import StepOutput
from streamgen.server.sessions.generation_clock import GenerationClock
from streamgen.server.sessions.slot import FrameTag
from streamgen.server.worker.generated_timing import spread_chunk_times


def test_ticks_come_one_per_period_with_the_clock_time_as_pts():
    clock = GenerationClock(0.5, started_at=100.0)
    assert clock.due(100.0) and clock.sleep_for(100.0) == 0.0
    first = clock.tick(100.0, waiting=0)
    assert first.pts == 0 and first.time_base == Fraction(1, 90000) and first.index == 1
    assert not clock.due(100.2) and clock.sleep_for(100.2) == pytest.approx(0.3)
    second = clock.tick(100.5, waiting=0)
    assert second.pts == 45000 and second.received_at == 100.5 and second.index == 2


def test_a_tick_is_skipped_while_the_last_one_waits_and_a_late_clock_jumps_instead_of_bursting():
    clock = GenerationClock(0.5, started_at=0.0)
    clock.tick(0.0, waiting=0)
    assert clock.tick(0.5, waiting=1) is None and clock.skipped == 1
    late = clock.tick(2.2, waiting=0)  # the loop was busy for 1.7 s: one tick, at the latest due place
    assert late.pts == round(2.0 * 90000) and clock.ticks == 2
    assert not clock.due(2.4) and clock.due(2.5)


def test_a_clock_needs_a_positive_period():
    with pytest.raises(ValueError):
        GenerationClock(0.0, 0.0)


def test_frames_sharing_a_tick_get_times_one_frame_apart_and_other_tags_are_kept():
    tick = FrameTag(9000, Fraction(1, 90000), 5.0, 3)
    other = FrameTag(20000, Fraction(1, 90000), 6.0, 4)
    output = StepOutput(torch.zeros(5, 2, 2, 3, dtype=torch.uint8), (tick, tick, tick, other, "x"))
    spread = spread_chunk_times(output, fps=10.0)
    assert [t.pts for t in spread.tags[:4]] == [9000, 18000, 27000, 20000]
    assert all(t.received_at == 5.0 and t.index == 3 for t in spread.tags[:3]), "arrival and index stay the tick's"
    assert spread.tags[4] == "x" and spread.frames is output.frames
