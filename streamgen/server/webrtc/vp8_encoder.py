"""``BoundedVp8Encoder``: aiortc's VP8 encoder with keyframes sized for a stock receiver's buffers.

aiortc's VP8 encoder puts no limit on keyframes, so at the bitrates
streamgen uses (2.5 Mbit/s at start, up to 8 by receiver feedback) a
keyframe takes 70-100 RTP packets at 512x512 and 200-350 at 1024x1024 or
1080p, sent in one burst. aiortc's sender keeps its last 128 packets for
retransmission and reads the receiver's NACK only after the burst, so a
packet lost early in a bigger frame cannot be repaired; a receiver built on
aiortc's own jitter buffer (any stock aiortc client) then holds every later
frame until 512 more packets have arrived (seconds at these rates) and asks
for a new keyframe, which is as large and as exposed to a bottleneck queue
or a full socket buffer as the last one. That is how a lossy moment turns
into seconds of frozen video (``bench/RESULTS.md``, "Stock client under
loss"); the server's longer retransmission history
(:func:`streamgen.server.webrtc.aiortc_patches.configure_video_encoders`) is the
other half of the fix.

Two changes keep keyframes small:

- ``max-intra-rate`` caps a keyframe at :data:`KEYFRAME_PACKETS` packets'
  worth of bytes at the encoder's bitrate and the server's frame rate
  (libvpx takes the cap as a percentage of the average frame);
- every keyframe a receiver asks for (PLI/FIR) starts a new libvpx stream.
  libvpx sizes a keyframe from rate factors it learns while encoding: a
  new stream's first frame honours the cap, but a keyframe forced into a
  running stream came out at 3-5 times it (200+ packets at 1024x1024).
  aiortc already starts a new stream when the size or bitrate changes.

Measured (``bench/RESULTS.md``): keyframes at 8 Mbit/s go from 99 to 12
packets at 512x512 and from 308 to 44 at 1024x1024; steady-state quality is
what the bitrate buys, as before (the first frames after a keyframe are
coarser and sharpen within a second). A P-frame at a scene cut can still
be large (libvpx's real-time mode plans a frame from the frames before it);
the longer retransmission history covers those.

Everything else is aiortc's: packetizer, RTP payload descriptor, bitrate
bounds, rate-control settings.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import av
from aiortc.codecs import vpx
from aiortc.codecs.vpx import Vp8Encoder

from .encoder_reopen import needs_new_codec

KEYFRAME_PACKETS = 48  # fits a 10 Mbit/s link's 50 ms queue and is well inside aiortc's 128-packet NACK window
MIN_QUANTIZER, MAX_QUANTIZER = 2, 56

frame_rate = 30.0  # frames per second the server's encoders plan for (set with the bitrates at server start)


def keyframe_cap_percent(bitrate: int, fps: float, packets: int = KEYFRAME_PACKETS) -> int:
    """libvpx's ``max-intra-rate``: ``packets`` full RTP payloads as a percentage of an average frame."""
    average_frame_bytes = bitrate / 8 / max(fps, 1.0)
    return max(100, int(100 * packets * vpx.PACKET_MAX / average_frame_bytes))


class BoundedVp8Encoder(Vp8Encoder):
    """A VP8 encoder whose keyframes stay within a stock receiver's buffers (see the module docstring)."""

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        # Open our codec whenever aiortc would open its own (its encode then finds it current and
        # keeps it), and for every keyframe asked for.
        if force_keyframe or needs_new_codec(self.codec, frame, self.target_bitrate):
            self.codec = self._open_codec(frame.width, frame.height)
        return super().encode(frame, force_keyframe)

    def _open_codec(self, width: int, height: int) -> Any:
        bitrate = self.target_bitrate
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.bit_rate = bitrate
        codec.gop_size = 3000  # no periodic keyframes: a receiver asks (PLI) when it needs one
        codec.qmin, codec.qmax = MIN_QUANTIZER, MAX_QUANTIZER
        codec.options = {
            "deadline": "realtime",
            "cpu-used": "-6",
            "lag-in-frames": "0",  # no look-ahead: every frame leaves as soon as it is encoded
            "minrate": str(bitrate),  # minrate = maxrate = bitrate: constant bitrate
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),  # FFmpeg turns this into libvpx's rc_buf_sz: one second
            "max-intra-rate": str(keyframe_cap_percent(bitrate, frame_rate)),
            "overshoot-pct": "15",
            "undershoot-pct": "100",
            "noise-sensitivity": "4",
            "static-thresh": "1",
            "partitions": "0",  # one token partition
        }
        codec.thread_count = vpx.number_of_threads(width * height, multiprocessing.cpu_count())
        return codec
