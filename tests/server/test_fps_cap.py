"""FpsCap keeps a session's model input at most at --max-fps, whatever the camera sends."""

from __future__ import annotations

import random

import pytest

from streamgen.server.webrtc.fps_cap import FpsCap


def admitted_per_second(cap: FpsCap, times: list[float], seconds: float) -> float:
    return sum(cap.admit(t) for t in times) / seconds


@pytest.mark.parametrize("camera_fps, expected", [(30, 30), (29.97, 29.9), (24, 24), (36, 30), (60, 30), (120, 30)])
def test_rate_is_capped_and_slower_input_passes_whole(camera_fps, expected):
    times = [i / camera_fps for i in range(int(camera_fps * 10))]
    assert admitted_per_second(FpsCap(30), times, 10) == pytest.approx(expected, abs=0.15)


def test_timestamp_jitter_does_not_drop_frames_at_the_cap():
    rng = random.Random(0)
    times = [i / 30 + rng.uniform(-0.002, 0.002) for i in range(300)]
    assert admitted_per_second(FpsCap(30), times, 10) == 30


def test_a_pause_earns_no_burst():
    cap = FpsCap(10)
    assert cap.admit(0.0)
    assert cap.admit(5.0) and cap.admit(5.03)  # after the pause: at most one extra frame...
    assert not cap.admit(5.06)  # ...then the 10 fps schedule again
    assert cap.admit(5.1) and not cap.admit(5.15) and cap.admit(5.2)
