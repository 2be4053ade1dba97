"""The server raises aiortc's encoder bitrates in one place, at start-up, and bounds VP8 and H.264 keyframes."""

from __future__ import annotations

import aiortc.codecs
import aiortc.rtcrtpsender
from aiortc.codecs import h264, vpx
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from streamgen.server.webrtc import vp8_encoder
from streamgen.server.webrtc.aiortc_patches import RETRANSMISSION_HISTORY
from streamgen.server.webrtc.h264_encoder import BoundedH264Encoder
from streamgen.server.webrtc.vp8_encoder import BoundedVp8Encoder

from .helpers import running_server


async def test_server_start_sets_bitrate_and_ceiling_for_new_encoders(identity_pipeline):
    async with running_server(identity_pipeline, bitrate=3_000_000, max_bitrate=9_000_000, max_fps=60):
        for module, encoder in ((vpx, Vp8Encoder()), (h264, H264Encoder())):
            assert module.DEFAULT_BITRATE == 3_000_000 and module.MAX_BITRATE == 9_000_000
            assert encoder.target_bitrate == 3_000_000
            encoder.target_bitrate = 50_000_000  # receiver feedback asking for more is capped at the ceiling
            assert encoder.target_bitrate == 9_000_000
        assert h264.MAX_FRAME_RATE == 60


async def test_server_start_bounds_vp8_and_h264_frames_and_keeps_a_longer_retransmission_history(identity_pipeline):
    async with running_server(identity_pipeline, max_fps=24):
        codecs = {c.mimeType: c for c in aiortc.rtcrtpsender.RTCRtpSender.getCapabilities("video").codecs}
        assert type(aiortc.codecs.get_encoder(codecs["video/VP8"])) is BoundedVp8Encoder
        assert type(aiortc.codecs.get_encoder(codecs["video/H264"])) is BoundedH264Encoder
        assert aiortc.rtcrtpsender.RTP_HISTORY_SIZE >= RETRANSMISSION_HISTORY >= 512  # a stock receiver's jitter buffer
        assert vp8_encoder.frame_rate == 24
