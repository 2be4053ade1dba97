"""The preview process's frame protocol: what the window sink writes, the window reads back, newest only."""

from __future__ import annotations

import io

from streamgen.outputs.preview import LatestFrame, encode_frame, read_frames


def test_frames_round_trip_and_only_the_newest_waits():
    stream = io.BytesIO(encode_frame(2, 1, b"abcdef") + encode_frame(1, 2, b"ghijkl"))
    latest = LatestFrame()
    read_frames(stream, latest)
    assert latest.ended
    assert latest.take() == (1, 2, b"ghijkl")
    assert latest.take() is None


def test_a_truncated_or_absurd_frame_ends_reading():
    latest = LatestFrame()
    read_frames(io.BytesIO(encode_frame(4, 4, b"short")), latest)
    assert latest.ended and latest.take() is None
    latest = LatestFrame()
    read_frames(io.BytesIO(encode_frame(100000, 1, b"")), latest)
    assert latest.ended and latest.take() is None
