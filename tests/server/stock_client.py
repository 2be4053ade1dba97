"""A stock aiortc client for a streamgen server, run as its own process.

Usage: ``python stock_client.py BASE_URL --size 512 --seconds 4``; prints one
JSON line with what it saw.

It imports nothing from streamgen on purpose: streamgen's fixes to aiortc
(:mod:`streamgen.server.webrtc.aiortc_patches`: the marker jitter buffer, the
encoder bitrates) are process-wide monkeypatches, so a client that must
behave like any aiortc application out there (aiortc's own jitter buffer,
aiortc's own encoder settings) has to live in a process where they were
never applied. It sends a synthetic ``--size`` x ``--size`` camera at
``--fps`` through ``POST /offer`` with a frame counter drawn into each frame
(a row of black/white blocks plus its complement, so a damaged counter reads
as None), reads the counter back from each frame that returns, and reports
frames received and glass-to-glass latency over the last ``--seconds``.

``--loss``, ``--link-kbps`` and ``--queue-ms`` put a bad network between
the server and this client (:mod:`lossy_link`: random loss, a bottleneck
with a drop-tail queue); the report then also says what the link dropped
and how many RTP packets the server's frames took (the largest ones are its
keyframes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from fractions import Fraction

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

try:
    from lossy_link import Downlink  # run as a script: its folder is on sys.path
except ImportError:  # imported by a test as tests.server.stock_client
    from .lossy_link import Downlink

BITS = 16
CLOCK_RATE = 90000


def stamp(image: np.ndarray, value: int) -> None:
    """``value`` as 16 blocks in the top quarter, its complement in the second quarter."""
    height, width = image.shape[:2]
    cell = width // BITS
    for row, word in ((0, value), (1, ~value)):
        for i in range(BITS):
            bit = (word >> (BITS - 1 - i)) & 1
            image[row * height // 4 : (row + 1) * height // 4, i * cell : (i + 1) * cell] = 235 if bit else 16


def read(image: np.ndarray) -> int | None:
    height, width = image.shape[:2]
    cell = width // BITS
    words = []
    for row in (0, 1):
        top, bottom = row * height // 4, (row + 1) * height // 4
        word = 0
        for i in range(BITS):
            inner = image[top + (bottom - top) // 4 : bottom - (bottom - top) // 4, i * cell + cell // 4 : (i + 1) * cell - cell // 4]
            word = (word << 1) | (1 if float(inner.mean()) >= 128 else 0)
        words.append(word)
    value, check = words
    return value if value ^ check == (1 << BITS) - 1 else None


class Camera(MediaStreamTrack):
    kind = "video"

    def __init__(self, size: int, fps: float, texture: bool = False) -> None:
        super().__init__()
        self.texture = np.random.default_rng(0).integers(0, 256, (size, 2 * size, 3), dtype=np.uint8) if texture else None
        self.size, self.fps = size, fps
        self.sent_at: dict[int, float] = {}
        self.count = 0
        self.start: float | None = None
        y = np.linspace(0, 255, size, dtype=np.float32)[:, None]
        x = np.linspace(0, 255, size, dtype=np.float32)[None, :]
        self.background = np.stack(np.broadcast_arrays(x, y, (x + y) / 2), axis=-1).astype(np.uint8)

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = self.count
        if self.start is None:
            self.start = time.monotonic()
        delay = self.start + index / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        image = self.background.copy()
        if self.texture is not None:  # detail that moves: what a real camera's frames cost the encoder
            shift = (index * 8) % self.size
            image[self.size // 2 :] = self.texture[self.size // 2 :, shift : shift + self.size]
        bar = (index * 4) % self.size
        image[self.size // 2 :, bar : bar + max(2, self.size // 16)] = 255
        stamp(image, index % (1 << BITS))
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(index * CLOCK_RATE / self.fps)
        frame.time_base = Fraction(1, CLOCK_RATE)
        self.sent_at[index % (1 << BITS)] = time.monotonic()
        self.count += 1
        return frame


async def run(base_url: str, size: int, fps: float, warmup: float, seconds: float, timeout: float, texture: bool = False, codec_name: str | None = None, link: Downlink | None = None) -> dict:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    camera = Camera(size, fps, texture)
    received: list[tuple[float, float | None, int]] = []  # (arrival, latency, width)

    async def consume(track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            marker = read(frame.to_ndarray(format="rgb24"))
            sent = camera.sent_at.get(marker) if marker is not None else None
            received.append((now, None if sent is None else now - sent, frame.width))

    tasks: list[asyncio.Task] = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))) if track.kind == "video" else None)
    pc.createDataChannel("control")
    transceiver = pc.addTransceiver(camera, direction="sendrecv")
    if codec_name:
        capabilities = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences([c for c in capabilities if c.mimeType.lower() in (f"video/{codec_name.lower()}", "video/rtx")])
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with aiohttp.ClientSession() as http:
            body = {"sdp": pc.localDescription.sdp, "type": "offer", "params": {"width": size, "height": size}}
            async with http.post(f"{base_url}/offer", json=body) as response:
                if response.status != 200:
                    return {"error": f"HTTP {response.status}: {await response.text()}"}
                answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        deadline = time.monotonic() + timeout
        while not received and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        first = time.monotonic()
        await asyncio.sleep(warmup)
        start = time.monotonic()
        await asyncio.sleep(seconds)
        end = time.monotonic()
        inbound = [v for v in (await pc.getStats()).values() if v.type == "inbound-rtp" and v.kind == "video"]
    finally:
        for task in tasks:
            task.cancel()
        await pc.close()
    window = [r for r in received if start <= r[0] <= end]
    latencies = sorted(r[1] for r in window if r[1] is not None)
    arrivals = [start] + [r[0] for r in window] + [end]
    return {
        "size": size,
        "frames_total": len(received),
        "first_frame": bool(received),
        "time_to_first_frame_s": None if not received else round(first - (deadline - timeout), 2),
        "frames": len(window),
        "fps": round(len(window) / (end - start), 1),
        "marked": len(latencies),
        "latency_ms_p50": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "latency_ms_max": round(1000 * latencies[-1], 1) if latencies else None,
        "widths": sorted({r[2] for r in window}),
        "packets_lost": sum(v.packetsLost for v in inbound),
        "packets_received": sum(v.packetsReceived for v in inbound),
        "longest_gap_ms": round(1000 * max(b - a for a, b in zip(arrivals, arrivals[1:])), 1),
        **(link.report() if link is not None else {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--timeout", type=float, default=15.0)
    parser.add_argument("--codec", default=None, help="offer only this codec (VP8 or H264); default: aiortc's offer")
    parser.add_argument("--uplink-kbps", type=int, default=None, help="this client's own encoder bitrate (aiortc's default otherwise)")
    parser.add_argument("--texture", action="store_true", help="moving noise in the bottom half (frames that are expensive to encode)")
    parser.add_argument("--loss", type=float, default=0.0, help="percent of the server's packets lost at random on the way here")
    parser.add_argument("--link-kbps", type=float, default=None, help="a bottleneck of this rate between server and client (default: none)")
    parser.add_argument("--queue-ms", type=float, default=50.0, help="the bottleneck's drop-tail queue, in milliseconds of traffic (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random loss")
    args = parser.parse_args()
    if "streamgen" in sys.modules:  # pragma: no cover - the point of this process
        raise SystemExit("the stock client must not import streamgen")
    if args.uplink_kbps:  # the client's own choice, like any aiortc application may make
        from aiortc.codecs import h264, vpx

        for module in (vpx, h264):
            module.DEFAULT_BITRATE = module.MIN_BITRATE = module.MAX_BITRATE = args.uplink_kbps * 1000
    link = Downlink(args.loss / 100, args.link_kbps, args.queue_ms, args.seed)
    link.install()
    result = asyncio.run(run(args.base_url, args.size, args.fps, args.warmup, args.seconds, args.timeout, args.texture, args.codec, link))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
