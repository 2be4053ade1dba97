"""``SinkPump``: frames reach every sink in order, off the caller's thread; failures end it cleanly."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from av import VideoFrame

from streamgen.outputs.pump import SinkPump
from streamgen.outputs.sink import OutputError, Picture, SinkClosed


class RecordingSink:
    """A sink that keeps what it is given (and, told to, fails on the nth picture)."""

    name = "recording"

    def __init__(self, *, realtime: bool = False, fail_at: int | None = None, error: Exception | None = None) -> None:
        self.realtime = realtime
        self.fail_at = fail_at
        self.error = error
        self.pictures: list[Picture] = []
        self.written_at: list[float] = []
        self.threads: set[str] = set()
        self.closed = 0
        self.frames_written = 0

    def write(self, picture: Picture) -> None:
        if self.fail_at is not None and len(self.pictures) == self.fail_at:
            raise self.error
        self.threads.add(threading.current_thread().name)
        self.pictures.append(picture)
        self.written_at.append(time.monotonic())
        self.frames_written += 1

    def close(self) -> None:
        self.closed += 1

    def describe(self) -> str:
        return f"recording ({self.frames_written} frames)"


def frame(index: int, seconds: float) -> VideoFrame:
    image = np.full((8, 8, 3), index, np.uint8)
    made = VideoFrame.from_ndarray(image, format="rgb24")
    made.pts, made.time_base = round(seconds * 90000), Fraction(1, 90000)
    return made


def test_every_sink_gets_every_frame_in_order_then_closes():
    stops: list[BaseException] = []
    sinks = [RecordingSink(), RecordingSink()]
    pump = SinkPump(sinks, stops.append)
    pump.start()
    pump.push_batch([frame(1, 0.0)])
    pump.push_batch([frame(2, 0.04), frame(3, 0.08)])
    pump.stop()
    assert pump.join(10)
    for sink in sinks:
        assert [int(p.image[0, 0, 0]) for p in sink.pictures] == [1, 2, 3]
        assert [p.seconds for p in sink.pictures] == pytest.approx([0.0, 0.04, 0.08])
        assert sink.threads == {"streamgen-sinks"} and sink.closed == 1
    assert stops == [] and pump.error is None


def test_a_full_hand_off_drops_the_oldest():
    sink = RecordingSink()
    pump = SinkPump([sink], lambda error: None, max_waiting=2)
    pump.push_batch([frame(i, i / 30) for i in range(5)])  # before the thread starts: nothing is taken yet
    pump.start()
    pump.stop()
    assert pump.join(10)
    assert [int(p.image[0, 0, 0]) for p in sink.pictures] == [3, 4]
    assert pump.frames_dropped == 3


@pytest.mark.parametrize("error", [OutputError("disk full"), SinkClosed("the preview window was closed")])
def test_a_failing_sink_stops_the_pump_and_every_sink_is_closed(error):
    stops: list[BaseException] = []
    failing, other = RecordingSink(fail_at=1, error=error), RecordingSink()
    pump = SinkPump([other, failing], stops.append)
    pump.start()
    pump.push_batch([frame(1, 0.0), frame(2, 0.1), frame(3, 0.2)])
    assert pump.join(10), "a failure ends the pump without stop()"
    assert stops == [error] and pump.error is error
    assert failing.closed == 1 and other.closed == 1
    pump.push_batch([frame(4, 0.3)])  # ignored after the end
    assert len(other.pictures) == 2


def test_a_chunk_is_spaced_for_realtime_sinks():
    """A video model's chunk of three frames 50 ms apart is shown over time, not at once."""
    sink = RecordingSink(realtime=True)
    pump = SinkPump([sink], lambda error: None)
    pump.start()
    pump.push_batch([frame(i, i * 0.05) for i in range(3)])
    pump.stop()
    assert pump.join(10)
    gaps = np.diff(sink.written_at)
    assert all(gap >= 0.05 * 0.9 - 0.002 for gap in gaps), gaps
