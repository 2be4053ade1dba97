"""Converting an input frame costs what the stream's size costs, whatever arrives; frames too thin are refused with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from av import VideoFrame
from hypothesis import given
from hypothesis import strategies as st

from streamgen.errors import InputError
from streamgen.server.worker.frame_convert import COVER_AREA_LIMIT, MAX_ASPECT, frame_to_rgb, plan_conversion

SIDES = st.integers(1, 4096)
STREAM_SIDES = st.integers(8, 1024).map(lambda n: n - n % 8 or 8)


@given(src_w=SIDES, src_h=SIDES, width=STREAM_SIDES, height=STREAM_SIDES)
def test_no_intermediate_image_is_bigger_than_a_few_streams(src_w, src_h, width, height):
    try:
        plan = plan_conversion((src_w, src_h), (width, height))
    except InputError as error:
        assert max(src_w, src_h) / min(src_w, src_h) > MAX_ASPECT and f"{src_w}x{src_h}" in str(error)
        return
    assert plan.largest_pixels <= COVER_AREA_LIMIT * width * height
    assert plan.scaled[0] >= width and plan.scaled[1] >= height
    if plan.crop is not None:
        left, top, crop_w, crop_h = plan.crop
        assert 0 <= left and left + crop_w <= src_w and 0 <= top and top + crop_h <= src_h


def test_a_thin_strip_is_cropped_before_it_is_scaled():
    plan = plan_conversion((4096, 256), (512, 512))  # covering would be 8192x512: 16x the stream
    assert plan.crop == (1920, 0, 256, 256) and plan.scaled == (512, 512)
    strip = np.zeros((256, 4096, 3), np.uint8)
    strip[:, 1920:2176] = 200  # the centred square is bright, the rest dark
    out = frame_to_rgb(VideoFrame.from_ndarray(strip, format="rgb24"), (512, 512))
    assert out.shape == (512, 512, 3) and out.mean() > 190


@pytest.mark.parametrize("shape", [(2, 2160), (3840, 2)])
def test_frames_thinner_than_the_limit_are_refused_naming_their_size(shape):
    width, height = shape
    frame = VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
    with pytest.raises(InputError, match=f"a {width}x{height} frame was dropped"):
        frame_to_rgb(frame, (512, 512))


def test_ordinary_frames_convert_as_before_in_one_pass():
    plan = plan_conversion((640, 480), (512, 512))
    assert plan.crop is None and plan.scaled == (683, 512)
