"""A WHIP publisher that behaves as OBS 30 does, and a flat-colour camera to tell two streams apart.

OBS offers H.264 only, sends its offer once without candidates (it cannot
trickle), authenticates with the bearer token of its stream settings, reads
nothing but the answer and ``Location``, and on Stop sends ``DELETE`` to
that ``Location`` with the same bearer token. This client does exactly that
with plain aiortc (streamgen's own client keeps the session's secret, which
OBS never sees), and also keeps the ``Link`` header a user would read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from fractions import Fraction

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from streamgen.client.webrtc import strip_candidates
from streamgen.server.webrtc.peer import video_codec_preferences

CLOCK_RATE = 90000


class ColourTrack(MediaStreamTrack):
    """``fps`` frames per second of one flat colour, with a moving white bar along the bottom edge (so frames differ)."""

    kind = "video"

    def __init__(self, colour: tuple[int, int, int], width: int = 160, height: int = 120, fps: float = 15.0) -> None:
        super().__init__()
        self.colour, self.width, self.height, self.fps = colour, width, height, fps
        self.frames_sent = 0
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.frames_sent / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        image = np.empty((self.height, self.width, 3), dtype=np.uint8)
        image[:] = self.colour
        bar = (self.frames_sent * 4) % self.width
        image[-8:, bar : bar + 8] = 255
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(self.frames_sent * CLOCK_RATE / self.fps)
        frame.time_base = Fraction(1, CLOCK_RATE)
        self.frames_sent += 1
        return frame


@dataclass
class ObsPublisher:
    """One Start Streaming of OBS: its peer, the session resource, and what the 201 said."""

    pc: RTCPeerConnection
    http: aiohttp.ClientSession
    token: str | None
    resource: str
    link: str | None
    stream_secret: str | None

    @property
    def session_id(self) -> str:
        return self.resource.rstrip("/").rsplit("/", 1)[-1]

    @property
    def browser_source(self) -> str:
        """The URL of the ``Link`` header (``<url>; rel=...``)."""
        assert self.link is not None and self.link.startswith("<"), self.link
        return self.link[1 : self.link.index(">")]

    async def stop(self) -> int:
        """OBS's Stop Streaming: ``DELETE`` the resource with the stream's bearer token, close the peer; returns the status."""
        try:
            async with self.http.delete(self.resource, headers=_bearer(self.token)) as response:
                return response.status
        finally:
            await self.close()

    async def close(self) -> None:
        """Go away without a word (OBS crashing, a cable pulled)."""
        await self.pc.close()
        await self.http.close()


async def obs_publish(whip_url: str, track: MediaStreamTrack, token: str | None) -> ObsPublisher:
    """Start streaming ``track`` to ``whip_url`` as OBS does (see module docstring); raises AssertionError on a non-201."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    http = aiohttp.ClientSession()
    try:
        transceiver = pc.addTransceiver(track, direction="sendonly")
        transceiver.setCodecPreferences(video_codec_preferences(["H264"]))
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers every candidate here: no trickling
        offer = strip_candidates(pc.localDescription.sdp)
        headers = {"Content-Type": "application/sdp", **_bearer(token)}
        async with http.post(whip_url, data=offer.encode(), headers=headers) as response:
            text = await response.text()
            assert response.status == 201, (response.status, text)
            location = response.headers["Location"]
            link, secret = response.headers.get("Link"), response.headers.get("X-Stream-Secret")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
    except BaseException:
        await pc.close()
        await http.close()
        raise
    base = whip_url[: whip_url.index("/", len("http://"))]
    return ObsPublisher(pc, http, token, base + location, link, secret)


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
