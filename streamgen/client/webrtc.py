"""A Python WebRTC client for a streamgen server (aiortc), used by the tests and ``bench.server``.

- :func:`connect_offer`: the browser's path, ``POST /offer`` with a
  ``control`` data channel; the processed video comes back on the same peer.
- :func:`whip_publish`: WHIP ingest the way OBS does it (H.264 only, offer
  without candidates by default).
- :func:`whep_view`: watch a session's output through WHEP.

Each returns a :class:`ClientPeer` that collects the received frames (with
the marker read from each, see :mod:`streamgen.server.webrtc.markers`) and answers
``await peer.control({...})`` with the server's ack. A publishing peer keeps
its session's secret (``peer.secret``, from ``/offer``'s ``session_secret``
or WHIP's ``X-Session-Secret``) and sends it on its own calls
(:meth:`ClientPeer.describe`, :meth:`ClientPeer.update`,
:meth:`ClientPeer.end`, the WHIP ``DELETE``); give it to :func:`whep_view`
as ``secret=`` to watch that session. The client installs the
jitter-buffer fix of :mod:`streamgen.server.webrtc.aiortc_patches` before it
connects, so its receiver does not add a frame interval of latency either.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..server.http.access import SESSION_SECRET_HEADER
from ..server.webrtc.aiortc_patches import install_marker_jitter_buffer
from ..server.webrtc.markers import read_marker
from ..server.webrtc.peer import video_codec_preferences


class ServerError(Exception):
    """The server answered a signalling request with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


@dataclass
class ReceivedFrame:
    """One decoded output frame as the client saw it."""

    received_at: float
    pts: int | None
    marker: int | None
    width: int
    height: int
    image: np.ndarray | None = None


@dataclass
class ClientPeer:
    """A connected client peer (see module docstring)."""

    pc: RTCPeerConnection
    http: aiohttp.ClientSession
    owns_http: bool
    base_url: str = ""
    session_id: str | None = None
    secret: str | None = None
    resource: str | None = None
    relay_only: bool = False  # ICE with relayed candidates only (iceTransportPolicy relay)
    session_path: str | None = None  # the session's URL path from the /offer answer (behind a proxy: the path to its server)
    headers: dict[str, str] = field(default_factory=dict)  # the Authorization of this peer's own calls
    keep_images: int = 0
    frames: list[ReceivedFrame] = field(default_factory=list)
    images: deque = field(default_factory=deque)
    messages: list[dict[str, Any]] = field(default_factory=list)
    channel: Any = None
    on_frame: Callable[[ReceivedFrame], None] | None = None
    _acks: dict[Any, asyncio.Future] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _tasks: list[asyncio.Task] = field(default_factory=list)

    # ------------------------------------------------------------------ frames
    def start_reading(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            image = frame.to_ndarray(format="rgb24")
            received = ReceivedFrame(now, frame.pts, read_marker(image), frame.width, frame.height)
            if self.keep_images:
                received.image = image
                self.images.append(image)
                while len(self.images) > self.keep_images:
                    self.images.popleft()
            self.frames.append(received)
            if self.on_frame is not None:
                self.on_frame(received)

    async def wait_until(self, condition: Callable[[], bool], timeout: float, what: str = "condition") -> None:
        """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.pc.connectionState in ("failed", "closed"):
                raise ConnectionError(f"peer connection {self.pc.connectionState} while waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            await asyncio.sleep(0.02)

    async def wait_for_frames(self, count: int, timeout: float = 20.0) -> list[ReceivedFrame]:
        target = len(self.frames) + count
        await self.wait_until(lambda: len(self.frames) >= target, timeout, f"{count} more output frames")
        return self.frames[target - count : target]

    # ----------------------------------------------------------------- control
    def attach_channel(self, channel: Any) -> None:
        self.channel = channel

        @channel.on("message")
        def on_message(raw: Any) -> None:
            message = json.loads(raw)
            if message.get("type") == "ack" and message.get("id") in self._acks:
                future = self._acks.pop(message["id"])
                if not future.done():
                    future.set_result(message)
            else:
                self.messages.append(message)

    async def control(self, message: Mapping[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send a control message (an ``id`` is added) and return the server's ack."""
        message_id = message.get("id", f"c{next(self._ids)}")
        await self.send_raw(json.dumps({**message, "id": message_id}), timeout)
        future = asyncio.get_running_loop().create_future()
        self._acks[message_id] = future
        return await asyncio.wait_for(future, timeout)

    async def send_raw(self, data: str | bytes, timeout: float = 10.0) -> None:
        """Send anything on the control channel (tests send garbage this way)."""
        if self.channel is None:
            raise RuntimeError("this peer has no control channel")
        await self.wait_until(lambda: self.channel.readyState == "open", timeout, "the control channel to open")
        self.channel.send(data)

    # ------------------------------------------------------------- session API
    async def describe(self) -> dict[str, Any]:
        """``GET /api/sessions/{id}``: the session's parameters and counters (sent with the session's secret)."""
        async with self.http.get(self._session_url(), headers=self.headers) as response:
            return await _read_json(response)

    async def update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``PATCH /api/sessions/{id}/params`` (the HTTP twin of ``control({"type": "params", ...})``)."""
        async with self.http.patch(self._session_url() + "/params", json=dict(params), headers=self.headers) as response:
            return await _read_json(response)

    async def end(self) -> None:
        """``DELETE /api/sessions/{id}``: end the session on the server (the peer closes when the server says so)."""
        async with self.http.delete(self._session_url(), headers=self.headers) as response:
            await _read_json(response)

    def _session_url(self) -> str:
        if self.session_id is None:
            raise RuntimeError("this peer has no session")
        if self.session_path is not None:
            return urljoin(self.base_url, self.session_path)
        return f"{self.base_url}/api/sessions/{self.session_id}"

    # ------------------------------------------------------------------- close
    async def close(self, delete: bool = True) -> None:
        """Close the peer; with ``delete``, also DELETE the WHIP/WHEP resource."""
        for task in self._tasks:
            task.cancel()
        if delete and self.resource is not None:
            async with self.http.delete(self.resource, headers=self.headers):
                pass
        await self.pc.close()
        if self.owns_http:
            await self.http.close()


def _auth(credential: str | None) -> dict[str, str]:
    """``Authorization`` for the admin token or a session's secret."""
    return {"Authorization": f"Bearer {credential}"} if credential else {}


def strip_candidates(sdp: str) -> str:
    """The offer without candidate lines, as OBS sends it (it cannot trickle either)."""
    lines = [line for line in sdp.splitlines() if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
    return "\r\n".join(lines) + "\r\n"


def rtc_configuration(ice: Mapping[str, Any] | None) -> RTCConfiguration:
    """aiortc's configuration from a ``GET /api/ice`` answer (None: no ICE servers, host candidates only)."""
    if not ice:
        return RTCConfiguration(iceServers=[])
    servers = [RTCIceServer(s["urls"], s.get("username"), s.get("credential")) for s in ice.get("iceServers", [])]
    policy = RTCIceTransportPolicy.RELAY if ice.get("iceTransportPolicy") == "relay" else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


async def fetch_ice(base_url: str, credential: str | None = None, http: aiohttp.ClientSession | None = None) -> dict[str, Any]:
    """``GET /api/ice``: the STUN/TURN servers the server hands its clients, with this client's TURN credentials."""
    owns = http is None
    http = http or aiohttp.ClientSession()
    try:
        async with http.get(f"{base_url}/api/ice", headers=_auth(credential)) as response:
            return await _read_json(response)
    finally:
        if owns:
            await http.close()


async def _new_peer(
    base_url: str, http: aiohttp.ClientSession | None, token: str | None, keep_images: int, ice: Mapping[str, Any] | None = None
) -> ClientPeer:
    install_marker_jitter_buffer()
    pc = RTCPeerConnection(rtc_configuration(ice))
    owns = http is None
    session = http or aiohttp.ClientSession()
    peer = ClientPeer(pc=pc, http=session, owns_http=owns, base_url=base_url, headers=_auth(token), keep_images=keep_images)
    peer.relay_only = bool(ice) and ice.get("iceTransportPolicy") == "relay"

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video":
            peer.start_reading(track)

    return peer


class NoRelayError(ConnectionError):
    """Relay-only ICE gathered no relayed candidate: the TURN server refused the credentials or cannot be reached."""


async def _local_offer(pc: RTCPeerConnection, relay_only: bool = False) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    if relay_only and " typ relay" not in sdp:
        raise NoRelayError(
            "relay-only ICE, but no relay could be allocated: the TURN server refused the credentials or cannot be reached"
        )
    return sdp


async def connect_offer(
    base_url: str,
    track: MediaStreamTrack | None,
    params: Mapping[str, Any] | None = None,
    *,
    token: str | None = None,
    codecs: Sequence[str] | None = None,
    control: bool = True,
    keep_images: int = 0,
    http: aiohttp.ClientSession | None = None,
    slo: Mapping[str, Any] | None = None,
    ice: Mapping[str, Any] | None = None,
) -> ClientPeer:
    """Publish ``track`` through ``POST /offer`` and receive the processed video back.

    ``slo`` (optional): ``{"deadline_ms", "fps", "min_fps"}``, what this
    stream needs; the server refuses it (503, with its reasons) if it cannot
    give that without breaking the sessions it already serves. ``token``: the
    server's admin token, if it has one (needed to create a session); the
    peer's own calls afterwards use the session's secret. ``track`` None:
    nothing goes up (a recvonly video section), for a stream that generates
    without input (``params={"mode": "txt2vid"}``). ``ice``: a ``GET /api/ice``
    answer (:func:`fetch_ice`): its STUN/TURN servers and transport policy.
    """
    peer = await _new_peer(base_url, http, token, keep_images, ice)
    try:
        if control:
            peer.attach_channel(peer.pc.createDataChannel("control"))
        transceiver = peer.pc.addTransceiver(track, direction="sendrecv") if track is not None else peer.pc.addTransceiver("video", direction="recvonly")
        if codecs:
            transceiver.setCodecPreferences(video_codec_preferences(codecs))
        offer = await _local_offer(peer.pc, peer.relay_only)
        body = {"sdp": offer, "type": "offer", "params": dict(params or {})}
        if slo is not None:
            body["slo"] = dict(slo)
        async with peer.http.post(f"{base_url}/offer", json=body, headers=peer.headers) as response:
            answer = await _read_json(response)
        peer.session_id = answer["session_id"]
        peer.session_path = (answer.get("urls") or {}).get("session")
        peer.secret = answer.get("session_secret")
        peer.headers = _auth(peer.secret or token)
        await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    except BaseException:
        await peer.close(delete=False)
        raise
    return peer


async def whip_publish(
    base_url: str,
    track: MediaStreamTrack,
    *,
    token: str | None = None,
    codecs: Sequence[str] = ("H264",),
    without_candidates: bool = True,
    http: aiohttp.ClientSession | None = None,
) -> ClientPeer:
    """Publish ``track`` with WHIP; the returned peer's ``resource`` is the session URL, ``secret`` the session's secret."""
    peer = await _new_peer(base_url, http, token, 0)
    try:
        transceiver = peer.pc.addTransceiver(track, direction="sendonly")
        transceiver.setCodecPreferences(video_codec_preferences(codecs))
        offer = await _local_offer(peer.pc, peer.relay_only)
        if without_candidates:
            offer = strip_candidates(offer)
        answer, location, headers = await _post_sdp(peer, f"{base_url}/whip", offer)
        peer.resource = urljoin(base_url + "/", location)
        peer.session_id = location.rstrip("/").rsplit("/", 1)[-1]
        peer.secret = headers.get(SESSION_SECRET_HEADER)
        peer.headers = _auth(peer.secret or token)
        await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    except BaseException:
        await peer.close(delete=False)
        raise
    return peer


async def whep_view(
    base_url: str,
    session_id: str,
    *,
    secret: str | None = None,
    token: str | None = None,
    codecs: Sequence[str] | None = None,
    without_candidates: bool = True,
    keep_images: int = 0,
    http: aiohttp.ClientSession | None = None,
    ice: Mapping[str, Any] | None = None,
) -> ClientPeer:
    """Watch ``session_id``'s output with WHEP, with the session's ``secret`` (or the admin ``token``); ``ice`` as for :func:`connect_offer`."""
    peer = await _new_peer(base_url, http, secret or token, keep_images, ice)
    try:
        transceiver = peer.pc.addTransceiver("video", direction="recvonly")
        if codecs:
            transceiver.setCodecPreferences(video_codec_preferences(codecs))
        offer = await _local_offer(peer.pc, peer.relay_only)
        if without_candidates:
            offer = strip_candidates(offer)
        answer, location, _ = await _post_sdp(peer, f"{base_url}/whep/{session_id}", offer)
        peer.resource = urljoin(base_url + "/", location)
        peer.session_id = session_id
        peer.secret = secret
        await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    except BaseException:
        await peer.close(delete=False)
        raise
    return peer


async def _post_sdp(peer: ClientPeer, url: str, offer: str) -> tuple[str, str, Mapping[str, str]]:
    """(answer SDP, Location, response headers) of a WHIP/WHEP offer."""
    headers = {**peer.headers, "Content-Type": "application/sdp"}
    async with peer.http.post(url, data=offer.encode(), headers=headers) as response:
        if response.status != 201:
            raise ServerError(response.status, await _body(response))
        return await response.text(), response.headers["Location"], response.headers


async def _read_json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    if response.status != 200:
        raise ServerError(response.status, await _body(response))
    return await response.json()


async def _body(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    try:
        return json.loads(text)
    except ValueError:
        return text
