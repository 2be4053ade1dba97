"""Hostile clients for ``python -m bench.soak --adversarial``: they run beside the well-behaved slots and count what they got.

Each is what one ordinary-looking client could do to starve or hijack the
others (the hardening issue's list), from a loopback address of its own
(127.0.0.2-5, so the server's per-client limits see separate clients):

- **thin frames**: a peer streaming 16x1024 frames (refused frame by frame,
  with an error on its control channel) and one streaming 64x1024 (cropped,
  then scaled: the conversion costs what the stream's size costs);
- **bare offers**: ``POST /offer`` once a second with a real SDP, never
  connecting;
- **slow readers**: 40 connections that pipeline requests for the page's
  script and never read an answer (reopened when the server closes them);
- **key churn**: WHIP publishes to a new throw-away stream key twice a
  second, never connecting.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from streamgen.client.webrtc import connect_offer
from streamgen.client.synthetic import MarkerVideoTrack


@dataclass
class Tally:
    """What the adversaries did and what the server answered."""

    counts: Counter = field(default_factory=Counter)

    def add(self, what: str, amount: int = 1) -> None:
        self.counts[what] += amount


async def _offer_sdp(direction: str) -> str:
    from aiortc import RTCPeerConnection  # noqa: PLC0415

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction=direction)
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def _session(address: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0), force_close=True))


async def thin_frames(base: str, token: str, until: float, tally: Tally) -> None:
    async def one(width: int, height: int, name: str) -> None:
        while time.monotonic() < until:
            async with _session("127.0.0.2") as http:
                try:
                    peer = await connect_offer(base, MarkerVideoTrack(width, height, 10.0, marked=False), {"width": 64, "height": 64},
                                               token=token, codecs=["VP8"], http=http)
                except Exception as error:  # noqa: BLE001 - counted, the adversary carries on
                    tally.add(f"{name}: refused ({type(error).__name__})")
                    await asyncio.sleep(1.0)
                    continue
                tally.add(f"{name}: connected")
                try:
                    await asyncio.sleep(max(0.0, min(20.0, until - time.monotonic())))
                    tally.add(f"{name}: frames out", len(peer.frames))
                finally:
                    await peer.close()

    await asyncio.gather(one(16, 1024, "thin 16x1024"), one(64, 1024, "thin 64x1024"))


async def bare_offers(base: str, token: str, until: float, tally: Tally) -> None:
    sdp = await _offer_sdp("sendrecv")
    async with _session("127.0.0.3") as http:
        while time.monotonic() < until:
            try:
                async with http.post(base + "/offer", json={"type": "offer", "sdp": sdp, "params": {"width": 64, "height": 64}},
                                     headers={"Authorization": f"Bearer {token}"}) as response:
                    tally.add(f"bare offer: {response.status}")
            except aiohttp.ClientError as error:
                tally.add(f"bare offer: {type(error).__name__}")
            await asyncio.sleep(1.0)


async def slow_readers(base: str, until: float, tally: Tally, connections: int = 40) -> None:
    host, port = base.removeprefix("http://").split(":")
    request = f"GET /static/app.js HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode() * 50

    async def one() -> None:
        loop = asyncio.get_running_loop()
        while time.monotonic() < until:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.bind(("127.0.0.4", 0))
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (host, int(port)))
                tally.add("slow reader: opened")
                await loop.sock_sendall(sock, request)
                while time.monotonic() < until:  # never read; a send fails once the server has aborted us
                    await asyncio.sleep(0.5)
                    try:
                        sock.send(b"\r\n")
                    except BlockingIOError:
                        continue
                    except OSError:
                        tally.add("slow reader: closed by the server")
                        break
            except OSError:
                tally.add("slow reader: refused")
                await asyncio.sleep(0.5)
            finally:
                sock.close()

    await asyncio.gather(*(one() for _ in range(connections)))


async def key_churn(base: str, token: str, until: float, tally: Tally) -> None:
    sdp = await _offer_sdp("sendonly")
    index = 0
    async with _session("127.0.0.5") as http:
        while time.monotonic() < until:
            index += 1
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
            try:
                async with http.post(f"{base}/whip/streams/junk-{index}", data=sdp, headers=headers) as response:
                    tally.add(f"key churn: {response.status}")
            except aiohttp.ClientError as error:
                tally.add(f"key churn: {type(error).__name__}")
            await asyncio.sleep(0.5)


async def run_adversaries(base: str, token: str, until: float) -> dict[str, Any]:
    """All of them until ``until`` (monotonic); returns their tally."""
    tally = Tally()
    await asyncio.gather(
        thin_frames(base, token, until, tally), bare_offers(base, token, until, tally),
        slow_readers(base, until, tally), key_churn(base, token, until, tally),
        return_exceptions=True,
    )
    return dict(sorted(tally.counts.items()))
