"""A stock aiortc client (none of streamgen's patches, aiortc's own jitter buffer and encoder settings) is served at every size.

streamgen's aiortc changes (:mod:`streamgen.server.webrtc.aiortc_patches`) are
process-wide, and this test process has them (the server applies them at
start). The client therefore runs in a subprocess (``stock_client.py``, which
imports nothing from streamgen) against a server started here, sending a
marked synthetic camera through ``POST /offer`` and asking for output of its
own size. The check is behaviour, not tight timing: frames keep coming
(a sane frame rate), their counters are readable and the latency stays far
from the seconds a stalled jitter buffer produces.

Under packet loss (the client drops 2 % of what the server sends, see
``lossy_link.py``) at the highest bitrate, the server's VP8 keyframes must
stay small: aiortc's own encoder made keyframes of ~100 packets at 512x512
and 150-300 at 1024x1024 there, more than aiortc's 128-packet
retransmission history, and the stock receiver then froze for up to a
second at a time and asked for keyframe after keyframe. aiortc's H.264
(x264) keyframes are as large, so a client that negotiates H.264 is checked
the same way at 512x512 (at 1024x1024 two x264 encoders and decoders on two
cores make the run too slow for this suite).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiortc.rtcrtpsender
import pytest
from aiortc.codecs.h264 import H264Encoder, H264PayloadDescriptor
from aiortc.codecs.vpx import VpxPayloadDescriptor

from streamgen.server.webrtc.vp8_encoder import KEYFRAME_PACKETS

from .helpers import running_server

STOCK_CLIENT = Path(__file__).with_name("stock_client.py")
SIZES = (256, 512)
MIN_FPS = 10.0
MAX_P50_MS = 500.0
LOSSY_MIN_FPS = {512: 10.0, 1024: 4.0}  # 1024x1024 is CPU-bound on 2 cores: encode and decode, both ways
KEYFRAME_BOUND = KEYFRAME_PACKETS * 4 // 3


async def run_stock_client(base_url: str, size: int, seconds: float = 3.0, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(STOCK_CLIENT), base_url, "--size", str(size), "--warmup", "1", "--seconds", str(seconds), "--texture", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode()[-2000:]
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("size", SIZES)
async def test_stock_aiortc_client_gets_a_steady_stream(identity_pipeline, size):
    async with running_server(identity_pipeline) as server:
        result = await run_stock_client(server.base_url, size)
    assert "error" not in result, result
    assert result["widths"] == [size], result
    assert result["fps"] >= MIN_FPS, result
    assert result["marked"] >= 0.9 * result["frames"], result  # frames arrive whole, not as decoder garbage
    assert result["latency_ms_p50"] is not None and result["latency_ms_p50"] < MAX_P50_MS, result


def is_keyframe(mime_type: str, payloads: list[bytes]) -> bool | None:
    """Whether an encoded video frame is a keyframe (VP8: the key bit; H.264: an IDR slice); None for other codecs."""
    if mime_type == "video/vp8":
        _, data = VpxPayloadDescriptor.parse(payloads[0])
        return not data[0] & 0x01
    if mime_type == "video/h264":
        data = b"".join(H264PayloadDescriptor.parse(p)[1] for p in payloads)
        return any(nal[0] & 0x1F == 5 for nal in H264Encoder._split_bitstream(data))
    return None


def record_server_frames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(RTP packets, keyframe?) of every VP8 or H.264 frame this process's senders encode, in order."""
    frames: list[tuple[int, bool]] = []
    make_encoder = aiortc.rtcrtpsender.get_encoder

    def get_encoder(codec):
        encoder = make_encoder(codec)
        encode = encoder.encode

        def recording_encode(frame, force_keyframe=False):
            payloads, timestamp = encode(frame, force_keyframe)
            key = is_keyframe(codec.mimeType.lower(), payloads) if payloads else None
            if key is not None:
                frames.append((len(payloads), key))
            return payloads, timestamp

        encoder.encode = recording_encode
        return encoder

    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", get_encoder)
    return frames


@pytest.mark.parametrize(("codec", "size"), (("VP8", 512), ("VP8", 1024), ("H264", 512)))
async def test_stock_client_under_packet_loss_gets_small_keyframes_and_a_stream(identity_pipeline, monkeypatch, codec, size):
    sent = record_server_frames(monkeypatch)
    async with running_server(identity_pipeline, codecs=(codec,), bitrate=8_000_000, max_bitrate=8_000_000) as server:
        # --uplink-kbps: a sharp input, so the server's frames carry detail, as a model's output does
        result = await run_stock_client(server.base_url, size, 4.0, "--loss", "2", "--uplink-kbps", "6000", "--codec", codec)
    assert "error" not in result, result
    assert result["link_dropped_random"] > 0, result  # the loss did happen
    keyframes = [packets for packets, key in sent if key]
    assert keyframes and max(keyframes) <= KEYFRAME_BOUND, keyframes
    assert result["fps"] >= LOSSY_MIN_FPS[size], result
    assert result["marked"] >= 0.9 * result["frames"], result
    if size == 512:
        assert result["latency_ms_p50"] is not None and result["latency_ms_p50"] < MAX_P50_MS, result
