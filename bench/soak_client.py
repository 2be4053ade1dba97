"""A minimal WebRTC publisher for ``bench.soak`` to kill with SIGKILL: the most faithful "vanished" client.

``python -m bench.soak_client BASE_URL SIZE FPS``: sends a ``SIZE`` x
``SIZE`` moving picture at ``FPS`` through ``POST /offer`` (with a
``control`` channel, as the browser page does), prints one JSON line
``{"session_id": ...}`` once the answer is applied, then streams until
killed (it exits by itself after ``LIFETIME_LIMIT`` seconds). The admin
token comes from ``$STREAMGEN_TOKEN`` (never the command line). Plain
aiortc, no streamgen or torch import: it starts in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from fractions import Fraction

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from av import VideoFrame

LIFETIME_LIMIT = 900.0
CLOCK_RATE = 90000


class MovingBar(MediaStreamTrack):
    kind = "video"

    def __init__(self, size: int, fps: float) -> None:
        super().__init__()
        self.size, self.fps, self.index = size, fps, 0
        self.start: float | None = None

    async def recv(self) -> VideoFrame:
        loop = asyncio.get_running_loop()
        if self.start is None:
            self.start = loop.time()
        delay = self.start + self.index / self.fps - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        image = np.full((self.size, self.size, 3), 96, dtype=np.uint8)
        bar = (self.index * 4) % self.size
        image[:, bar : bar + 4] = 255
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = int(self.index * CLOCK_RATE / self.fps), Fraction(1, CLOCK_RATE)
        self.index += 1
        return frame


async def main(base: str, size: int, fps: float) -> int:
    token = os.environ.get("STREAMGEN_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("control")
    pc.addTransceiver(MovingBar(size, fps), direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    body = {"sdp": pc.localDescription.sdp, "type": "offer", "params": {"prompt": "a vanishing soak client"}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/offer", json=body, headers=headers) as response:
            answer = await response.json()
            if response.status != 200:
                print(json.dumps({"status": response.status, "error": answer.get("error")}), flush=True)
                await pc.close()
                return 1
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    print(json.dumps({"session_id": answer["session_id"]}), flush=True)
    await asyncio.sleep(LIFETIME_LIMIT)
    await pc.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
