"""The jitter-buffer fix: a video frame leaves the buffer on its marker packet, not one frame later."""

from __future__ import annotations

import aiortc.rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from streamgen.server.webrtc.aiortc_patches import MarkerJitterBuffer, install_marker_jitter_buffer, marker_jitter_buffer_installed
from streamgen.client.webrtc import connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import running_server


def packet(seq: int, timestamp: int, marker: bool = False, data: bytes | None = None) -> RtpPacket:
    p = RtpPacket(payload_type=96, marker=int(marker), sequence_number=seq, timestamp=timestamp, ssrc=1)
    p._data = data if data is not None else bytes([seq % 256])  # what aiortc's depayloader leaves on a packet
    return p


def feed(buffer: JitterBuffer, packets: list[RtpPacket]) -> list:
    return [buffer.add(p)[1] for p in packets]


def test_stock_buffer_holds_a_complete_frame_until_the_next_one_starts():
    """The behaviour being fixed: aiortc returns nothing on the marker packet."""
    out = feed(JitterBuffer(capacity=128, is_video=True), [packet(10, 1000), packet(11, 1000), packet(12, 1000, marker=True)])
    assert out == [None, None, None]


def test_frame_is_released_on_its_marker_packet():
    out = feed(MarkerJitterBuffer(capacity=128, is_video=True), [packet(10, 1000), packet(11, 1000), packet(12, 1000, marker=True)])
    assert out[:2] == [None, None]
    assert out[2] is not None and out[2].timestamp == 1000 and out[2].data == bytes([10, 11, 12])


def test_consecutive_frames_each_come_out_on_their_own_marker():
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    first = feed(buffer, [packet(1, 0), packet(2, 0, marker=True)])
    second = feed(buffer, [packet(3, 3000, marker=True)])
    third = feed(buffer, [packet(4, 6000), packet(5, 6000), packet(6, 6000, marker=True)])
    assert [f.timestamp for f in first + second + third if f is not None] == [0, 3000, 6000]
    assert third[-1].data == bytes([4, 5, 6])


def test_out_of_order_packets_complete_the_frame_when_the_gap_fills():
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    out = feed(buffer, [packet(10, 1000), packet(12, 1000, marker=True), packet(11, 1000)])
    assert out[:2] == [None, None]
    assert out[2].data == bytes([10, 11, 12])


def test_a_frame_with_a_gap_is_not_released_on_the_marker():
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    assert feed(buffer, [packet(10, 1000), packet(12, 1000, marker=True)]) == [None, None]


def test_a_frame_whose_marker_was_lost_is_released_when_the_next_frame_starts():
    """The timestamp-change rule stays as a fallback, as in aiortc."""
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    out = feed(buffer, [packet(10, 1000), packet(11, 1000), packet(12, 4000)])
    assert out[:2] == [None, None]
    assert out[2].timestamp == 1000 and out[2].data == bytes([10, 11])


def test_audio_buffers_keep_aiortcs_behaviour():
    audio = MarkerJitterBuffer(capacity=16, prefetch=4)
    stock = JitterBuffer(capacity=16, prefetch=4)
    packets = [packet(i, i * 960, marker=True) for i in range(1, 8)]
    assert [f and f.timestamp for f in feed(audio, packets)] == [f and f.timestamp for f in feed(stock, [packet(i, i * 960, marker=True) for i in range(1, 8)])]


def test_install_replaces_the_buffer_aiortcs_receivers_build():
    install_marker_jitter_buffer()
    assert marker_jitter_buffer_installed()
    assert aiortc.rtcrtpreceiver.JitterBuffer is MarkerJitterBuffer


async def test_last_frame_before_a_pause_arrives_during_the_pause(identity_pipeline):
    """End to end, client → server → client: with the stock buffer the last frame would wait
    (on each hop) for the next frame's first packet, which never comes while the source is paused."""
    async with running_server(identity_pipeline) as server:
        track = MarkerVideoTrack(first_marker=100, hold_after=6)
        peer = await connect_offer(server.base_url, track)
        try:
            await peer.wait_until(lambda: any(f.marker == 105 for f in peer.frames), 20, "the last frame before the pause")
            assert track.frames_sent == 6
            receiver = server.context.manager.get(peer.session_id).pc.getTransceivers()[0].receiver
            assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, MarkerJitterBuffer)
        finally:
            await peer.close()
