"""``BoundedH264Encoder``: aiortc's H.264 encoder with keyframes sized for a stock receiver's buffers.

aiortc opens libx264 in average-bitrate mode with no VBV, so nothing bounds
a single frame: at 2.5-8 Mbit/s an IDR frame takes 70-170 RTP packets at
512x512 and 130-410 at 1024x1024, sent in one burst. That is the same
trap as VP8's (:mod:`streamgen.server.webrtc.vp8_encoder`): a packet lost early
in such a frame is outside aiortc's 128-packet retransmission history, a
stock aiortc receiver waits for 512 more packets, asks for a keyframe, and
gets one as big as the last.

x264 enforces a VBV (a leaky bucket drained at ``vbv-maxrate`` and holding
``vbv-bufsize``) row by row while it encodes a frame, so no frame can be
bigger than the bucket. Setting the bucket to :data:`KEYFRAME_PACKETS`
RTP payloads bounds keyframes, forced or periodic, without restarting the
encoder; at the bitrate aiortc targets the bucket refills within one or a
few frames, so P-frames of a settled stream, which are near the average
frame, are not touched (measured in ``bench/RESULTS.md``, "Stock client
under loss": keyframes 28-48 packets, steady-state PSNR unchanged at
8 Mbit/s; the frames right after a keyframe start coarser). The drain rate is the target bitrate, which also
stops x264 from spending a long ABR deficit in one burst.

Everything else is aiortc's: packetizer, profile, level, ``tune
zerolatency``, bitrate bounds and the rule for reopening the encoder.
"""

from __future__ import annotations

import fractions
from typing import Any, Iterator

import av
from aiortc.codecs import h264
from aiortc.codecs.h264 import H264Encoder

from .encoder_reopen import needs_new_codec
from .vp8_encoder import KEYFRAME_PACKETS  # one packet budget for both codecs


def vbv_buffer_bits(packets: int = KEYFRAME_PACKETS) -> int:
    """The VBV bucket: ``packets`` full RTP payloads, in bits."""
    return packets * h264.PACKET_MAX * 8


class BoundedH264Encoder(H264Encoder):
    """An H.264 encoder whose frames, keyframes included, stay within a stock receiver's buffers."""

    def _encode_frame(self, frame: av.VideoFrame, force_keyframe: bool) -> Iterator[bytes]:
        # Open our codec whenever aiortc would open its own; its _encode_frame then finds it current.
        if needs_new_codec(self.codec, frame, self.target_bitrate):
            self.buffer_data, self.buffer_pts = b"", None
            self.codec = self._open_codec(frame.width, frame.height)
        return super()._encode_frame(frame, force_keyframe)

    def _open_codec(self, width: int, height: int) -> Any:
        bitrate = self.target_bitrate
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.bit_rate = bitrate
        codec.framerate = fractions.Fraction(h264.MAX_FRAME_RATE, 1)
        codec.time_base = fractions.Fraction(1, h264.MAX_FRAME_RATE)
        codec.options = {
            "level": "31",
            "tune": "zerolatency",
            "maxrate": str(bitrate),  # FFmpeg passes these to x264 as vbv-maxrate / vbv-bufsize
            "bufsize": str(vbv_buffer_bits()),
        }
        codec.profile = "Baseline"
        return codec
