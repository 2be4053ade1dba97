"""OutputTrack: newest step wins, a chunk's frames all go out in order, stop ends the track."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from streamgen.server.webrtc.tracks import OutputTrack


def frame(pts: int) -> VideoFrame:
    f = VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
    f.pts, f.time_base = pts, Fraction(1, 90000)
    return f


async def test_a_new_step_replaces_unsent_frames_of_the_previous_one():
    track = OutputTrack()
    track.push_batch([frame(0)])
    track.push_batch([frame(3000)])
    assert (await track.recv()).pts == 3000
    assert track.frames_replaced == 1


async def test_every_frame_of_a_video_chunk_is_sent_in_order():
    track = OutputTrack()
    track.push_batch([frame(0), frame(300), frame(600), frame(900)])
    assert [(await track.recv()).pts for _ in range(4)] == [0, 300, 600, 900]


async def test_empty_steps_change_nothing_and_stop_ends_the_track():
    track = OutputTrack()
    track.push_batch([frame(0)])
    track.push_batch([])  # a video step that produced no frame
    assert (await track.recv()).pts == 0
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()
