"""Compiled engines with fixed shape ranges: the server refuses streams they cannot run and plans within their rows.

The limits are set by hand here (what the TensorRT backend sets after
building its engines, runtime/engine_limits.py); the model itself runs eagerly.
"""

from __future__ import annotations

import pytest

import streamgen
from streamgen.errors import ConfigError
from streamgen.models.image.tiny import build_tiny_image_model
from streamgen.pipeline import ImagePipeline
from streamgen.runtime.engine_limits import EngineLimits
from streamgen.client.webrtc import ServerError, connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import running_server

LIMITS = EngineLimits("tensorrt", max_rows=4, side_range=(96, 256))


@pytest.fixture(scope="module")
def limited_pipeline():
    model = build_tiny_image_model(seed=0)
    model.engine_limits = LIMITS
    return ImagePipeline(model)


async def test_an_offer_no_engine_covers_is_refused_with_the_range_and_one_that_fits_streams(limited_pipeline):
    async with running_server(limited_pipeline) as server:
        assert server.context.workers[0].max_rows == 4
        for settings, words in [
            ({"width": 64, "height": 64}, "each side from 96 to 256 pixels"),
            ({"width": 128, "height": 128, "frame_buffer_size": 3}, "more than the tensorrt engines take (4)"),
        ]:
            with pytest.raises(ServerError) as refused:
                await connect_offer(server.base_url, MarkerVideoTrack(), settings)
            assert refused.value.status == 400 and words in str(refused.value)
        peer = await connect_offer(server.base_url, MarkerVideoTrack(), {"width": 128, "height": 128})
        try:
            await peer.wait_for_frames(2, timeout=60)
        finally:
            await peer.close()


def test_the_python_api_refuses_a_size_no_engine_covers(limited_pipeline):
    with pytest.raises(ConfigError, match="each side from 96 to 256"):
        streamgen.ImageStream(limited_pipeline, width=320, height=320)
