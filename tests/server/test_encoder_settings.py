"""The server raises aiortc's encoder bitrates in one place, at start-up."""

from __future__ import annotations

from aiortc.codecs import h264, vpx
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from .helpers import running_server


async def test_server_start_sets_bitrate_and_ceiling_for_new_encoders(identity_pipeline):
    async with running_server(identity_pipeline, bitrate=3_000_000, max_bitrate=9_000_000, max_fps=60):
        for module, encoder in ((vpx, Vp8Encoder()), (h264, H264Encoder())):
            assert module.DEFAULT_BITRATE == 3_000_000 and module.MAX_BITRATE == 9_000_000
            assert encoder.target_bitrate == 3_000_000
            encoder.target_bitrate = 50_000_000  # receiver feedback asking for more is capped at the ceiling
            assert encoder.target_bitrate == 9_000_000
        assert h264.MAX_FRAME_RATE == 60
