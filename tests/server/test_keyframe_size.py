"""The server's VP8 and H.264 keyframes fit a stock receiver's buffers, at any size and at the highest bitrate.

aiortc's own encoders make keyframes of 200-400 RTP packets at 1024x1024
at 8 Mbit/s (more than aiortc's 128-packet retransmission history);
:class:`~streamgen.server.webrtc.vp8_encoder.BoundedVp8Encoder` and
:class:`~streamgen.server.webrtc.h264_encoder.BoundedH264Encoder` keep them near
``KEYFRAME_PACKETS``, including keyframes a receiver asks for in the
middle of a stream, and the frames stay decodable.
"""

from __future__ import annotations

import asyncio

import av
import pytest
from aiortc.codecs import h264, vpx
from aiortc.codecs.h264 import H264Encoder, H264PayloadDescriptor
from aiortc.codecs.vpx import VpxPayloadDescriptor

from streamgen.server.webrtc import vp8_encoder
from streamgen.server.webrtc.h264_encoder import BoundedH264Encoder
from streamgen.server.webrtc.vp8_encoder import KEYFRAME_PACKETS, BoundedVp8Encoder, keyframe_cap_percent

from .stock_client import Camera

KEYFRAME_BOUND = KEYFRAME_PACKETS * 4 // 3  # libvpx plans a keyframe's size; it does not enforce it
FORCED = (0, 8, 14)


def camera_frames(size: int, count: int) -> list:
    """A textured, moving test picture (noise in the bottom half): the hardest kind to keep small."""
    camera = Camera(size, 30.0, texture=True)
    camera.start = float("-inf")  # no pacing
    loop = asyncio.new_event_loop()
    try:
        return [loop.run_until_complete(camera.recv()) for _ in range(count)]
    finally:
        loop.close()


def is_keyframe(payload: bytes) -> bool:
    _, data = VpxPayloadDescriptor.parse(payload)
    return not data[0] & 0x01


@pytest.mark.parametrize("size", (512, 1024))
def test_keyframes_stay_small_and_every_frame_decodes(monkeypatch, size):
    monkeypatch.setattr(vpx, "MAX_BITRATE", 8_000_000)
    monkeypatch.setattr(vp8_encoder, "frame_rate", 30.0)  # the camera's rate (a server test may have left another)
    encoder = BoundedVp8Encoder()
    encoder.target_bitrate = 8_000_000
    decoder = av.CodecContext.create("libvpx", "r")
    keyframes, decoded = [], 0
    for index, frame in enumerate(camera_frames(size, 20)):
        payloads, _ = encoder.encode(frame, force_keyframe=index in FORCED)
        assert payloads, f"frame {index} was not encoded"
        if is_keyframe(payloads[0]):
            keyframes.append(len(payloads))
        decoded += len(decoder.decode(av.Packet(b"".join(VpxPayloadDescriptor.parse(p)[1] for p in payloads))))
    assert len(keyframes) == len(FORCED), keyframes
    assert max(keyframes) <= KEYFRAME_BOUND, keyframes  # aiortc's own encoder: 99 at 512, 308 at 1024
    assert decoded == 20


def test_the_cap_is_a_packet_budget_at_the_encoders_bitrate():
    average_frame = 2_500_000 / 8 / 30
    assert keyframe_cap_percent(2_500_000, 30) == int(100 * KEYFRAME_PACKETS * vpx.PACKET_MAX / average_frame)
    assert keyframe_cap_percent(8_000_000, 30) < keyframe_cap_percent(2_500_000, 30)
    assert keyframe_cap_percent(100_000_000, 30) == 100  # never below one average frame


def test_a_bitrate_change_or_a_keyframe_request_opens_a_new_stream(monkeypatch):
    monkeypatch.setattr(vp8_encoder, "frame_rate", 30.0)
    monkeypatch.setattr(vpx, "MAX_BITRATE", 8_000_000)
    encoder = BoundedVp8Encoder()
    encoder.target_bitrate = 1_000_000
    frames = camera_frames(256, 4)
    encoder.encode(frames[0])
    first = encoder.codec
    encoder.encode(frames[1])
    assert encoder.codec is first  # a plain P-frame keeps the stream
    encoder.encode(frames[2], force_keyframe=True)
    assert encoder.codec is not first
    second = encoder.codec
    encoder.target_bitrate = 1_500_000
    encoder.encode(frames[3])
    assert encoder.codec is not second and encoder.codec.bit_rate == encoder.target_bitrate


NAL_IDR = 5


@pytest.mark.parametrize("size", (512, 1024))
def test_h264_keyframes_stay_small_and_every_frame_decodes(monkeypatch, size):
    monkeypatch.setattr(h264, "MAX_BITRATE", 8_000_000)
    monkeypatch.setattr(h264, "MAX_FRAME_RATE", 30)  # the camera's rate (a server test may have left another)
    encoder = BoundedH264Encoder()
    encoder.target_bitrate = 8_000_000
    decoder = av.CodecContext.create("h264", "r")
    keyframes, decoded = [], 0
    for index, frame in enumerate(camera_frames(size, 20)):
        payloads, _ = encoder.encode(frame, force_keyframe=index in FORCED)
        assert payloads, f"frame {index} was not encoded"
        data = b"".join(H264PayloadDescriptor.parse(p)[1] for p in payloads)
        if any(nal[0] & 0x1F == NAL_IDR for nal in H264Encoder._split_bitstream(data)):
            keyframes.append(len(payloads))
        decoded += len(decoder.decode(av.Packet(data)))
    assert len(keyframes) == len(FORCED), keyframes
    assert max(keyframes) <= KEYFRAME_BOUND, keyframes  # aiortc's own encoder: 108-172 at 512, 265-408 at 1024
    assert decoded == 20
