"""The places where streamgen changes aiortc's behaviour, applied by explicit calls.

1. **Video frames leave the jitter buffer as soon as they are complete.**
   aiortc's ``JitterBuffer`` releases a video frame only when the first
   packet of the NEXT frame arrives (a timestamp change), which adds one
   frame interval (~33 ms at 30 fps) of latency on every receiving hop, and
   holds the last frame before a pause until the stream resumes. The RTP
   marker bit already says "this is the last packet of the frame" (RFC 7741
   for VP8, RFC 6184 for H.264), so :class:`MarkerJitterBuffer` releases a
   frame when its packets, from the frame's first one up to the marker packet,
   are all present. It keeps aiortc's timestamp-change rule as a fallback
   (a lost marker packet must not stall the stream).
   :func:`install_marker_jitter_buffer` makes every video receiver created
   afterwards use it; the server calls it at start and the Python client
   helper (:mod:`streamgen.client.webrtc`) before it connects.

2. **Encoder bitrate and frame rate.** aiortc starts VP8 at 500 kbps (at most
   1.5 Mbps) and H.264 at 1 Mbps (at most 3 Mbps) and tells x264 the stream
   runs at 30 fps. Those are module constants in ``aiortc.codecs``;
   :func:`configure_video_encoders` sets them from the server's settings.
   The values are process-wide: every encoder created afterwards uses them.

3. **Keyframes a stock receiver can reassemble.** At those higher bitrates
   aiortc's VP8 keyframes span up to a few hundred RTP packets, more than
   aiortc keeps for retransmission (128); a packet lost early in one cannot
   be resent, and a receiver using aiortc's own jitter buffer then freezes
   for a second or more and asks for another keyframe, as big as the last.
   :func:`configure_video_encoders` also makes new VP8 encoders
   :class:`~streamgen.server.webrtc.vp8_encoder.BoundedVp8Encoder` (keyframes
   near :data:`~streamgen.server.webrtc.vp8_encoder.KEYFRAME_PACKETS` packets),
   new H.264 encoders
   :class:`~streamgen.server.webrtc.h264_encoder.BoundedH264Encoder` (aiortc's
   x264 keyframes are as large; a VBV bucket of the same packet budget
   bounds every frame) and has every sender keep :data:`RETRANSMISSION_HISTORY` packets (under
   1 MB each), so a NACK for any packet of a frame such a receiver can
   still reassemble (its buffer holds 512) is answered.

Nothing here runs at import time.
"""

from __future__ import annotations

import math
from typing import Optional

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

RETRANSMISSION_HISTORY = 512  # packets each sender keeps for NACKs (aiortc: 128); a stock receiver's jitter buffer holds 512


class MarkerJitterBuffer(JitterBuffer):
    """A video jitter buffer that hands over a frame as soon as its marker packet is in.

    A frame is complete when every packet from the buffer's origin (the first
    packet not yet handed over) up to a packet carrying the marker bit is
    present and they share one RTP timestamp. Audio buffers (not video) keep
    aiortc's behaviour.
    """

    def _remove_frame(self, sequence_number: int) -> Optional[JitterFrame]:
        if not self._is_video:
            return super()._remove_frame(sequence_number)
        packets: list[RtpPacket] = []
        timestamp: int | None = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None:
                return None  # a gap: wait for the missing packet (or a retransmission)
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:
                # The next frame started without a marker on this one (lost
                # marker packet): release what we have, as aiortc would.
                return self._release(packets, timestamp, count)
            packets.append(packet)
            if packet.marker:
                return self._release(packets, timestamp, count + 1)
        return None

    def _release(self, packets: list[RtpPacket], timestamp: int, count: int) -> JitterFrame:
        frame = JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)  # type: ignore[attr-defined]
        self.remove(count)
        return frame


def install_marker_jitter_buffer() -> None:
    """Make video receivers created from now on use :class:`MarkerJitterBuffer`.

    aiortc's ``RTCRtpReceiver`` builds its buffer from the ``JitterBuffer``
    name in its own module, so replacing that name is enough; receivers that
    already exist keep theirs. Calling it again is harmless.
    """
    import aiortc.rtcrtpreceiver as receiver_module  # noqa: PLC0415

    receiver_module.JitterBuffer = MarkerJitterBuffer  # type: ignore[misc]


def marker_jitter_buffer_installed() -> bool:
    import aiortc.rtcrtpreceiver as receiver_module  # noqa: PLC0415

    return receiver_module.JitterBuffer is MarkerJitterBuffer


def configure_video_encoders(bitrate: int, max_bitrate: int, max_fps: float) -> None:
    """Set aiortc's VP8 and H.264 starting bitrate, bitrate ceiling and frame rate; bound their keyframe sizes.

    ``bitrate`` is where a new encoder starts; receiver feedback (REMB) then
    moves it between aiortc's minimum and ``max_bitrate``. ``max_fps`` is the
    frame rate x264 plans its rate control for, and the one the VP8 keyframe
    cap is computed at. See item 3 of the module docstring for the rest.
    """
    import aiortc.codecs as codecs  # noqa: PLC0415
    import aiortc.rtcrtpsender as sender_module  # noqa: PLC0415
    from aiortc.codecs import h264, vpx  # noqa: PLC0415

    from . import h264_encoder, vp8_encoder  # noqa: PLC0415

    for module in (vpx, h264):
        module.DEFAULT_BITRATE = int(bitrate)
        module.MAX_BITRATE = int(max_bitrate)
        module.MIN_BITRATE = min(module.MIN_BITRATE, int(bitrate))
    h264.MAX_FRAME_RATE = max(1, int(math.ceil(max_fps)))
    vp8_encoder.frame_rate = float(max_fps)
    codecs.Vp8Encoder = vp8_encoder.BoundedVp8Encoder  # get_encoder() looks the classes up here on every call
    codecs.H264Encoder = h264_encoder.BoundedH264Encoder
    sender_module.RTP_HISTORY_SIZE = max(sender_module.RTP_HISTORY_SIZE, RETRANSMISSION_HISTORY)
