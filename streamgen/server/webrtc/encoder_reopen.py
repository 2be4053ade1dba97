"""When aiortc's encoders open a new codec: the rule both bounded encoders must follow.

streamgen's :mod:`~streamgen.server.webrtc.vp8_encoder` and
:mod:`~streamgen.server.webrtc.h264_encoder` open their own codec (with frame-size
bounds) exactly when aiortc would open its own, so that aiortc's encode then
finds the codec current and keeps it: on the first frame, a new frame size,
or a bitrate change of more than :data:`RESTART_CHANGE`.
"""

from __future__ import annotations

from typing import Any

RESTART_CHANGE = 0.1  # a bitrate change beyond this fraction opens a new codec (aiortc's rule)


def needs_new_codec(codec: Any, frame: Any, target_bitrate: int) -> bool:
    """Whether aiortc would (re)open its codec for ``frame`` at ``target_bitrate``."""
    if codec is None:
        return True
    if (frame.width, frame.height) != (codec.width, codec.height):
        return True
    return abs(target_bitrate - codec.bit_rate) / codec.bit_rate > RESTART_CHANGE
