"""Offers whose peer never connects cannot keep a server full: a per-client cap, and newcomers displace them after a grace.

The "attacker" posts bare offers from 127.0.0.2 (another loopback address,
so the per-client cap sees two clients); the newcomer is a real aiortc peer
from 127.0.0.1.
"""

from __future__ import annotations

import asyncio

import aiohttp

from streamgen.client.webrtc import ServerError, connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import poll, real_offer_sdp, running_server


async def _bare_offer(http: aiohttp.ClientSession, base_url: str) -> tuple[int, dict]:
    body = {"type": "offer", "sdp": await real_offer_sdp(), "params": {"width": 64, "height": 64}}
    async with http.post(base_url + "/offer", json=body) as response:
        return response.status, await response.json()


async def test_bare_offers_are_capped_per_client_and_displaced_by_a_real_newcomer(identity_pipeline):
    async with running_server(identity_pipeline, max_sessions=2, connect_grace=0.5, max_pending_per_client=2, connect_timeout=60) as server:
        manager = server.context.manager
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as attacker:
            first = [await _bare_offer(attacker, server.base_url) for _ in range(2)]
            assert [status for status, _ in first] == [200, 200]
            status, body = await _bare_offer(attacker, server.base_url)
            assert status == 503 and "not connected yet" in body["error"], body
        held = [manager.get(answer["session_id"]) for _, answer in first]
        assert all(not s.connected for s in held) and len(manager.sessions) == 2  # the server is "full"

        await asyncio.sleep(0.6)  # past the grace: a real newcomer gets in
        peer = await connect_offer(server.base_url, MarkerVideoTrack(), {"width": 64, "height": 64})
        try:
            await peer.wait_for_frames(3, timeout=30)
            displaced = [s for s in held if s.closed]
            assert len(displaced) == 1 and "had not connected after" in displaced[0].close_reason
            assert held[0].closed  # the oldest goes first
            _, metrics, _ = await server.request("GET", "/metrics")
            assert "streamgen_sessions_displaced_total 1" in metrics
        finally:
            await peer.close()


async def test_within_the_grace_a_full_server_still_refuses(identity_pipeline):
    async with running_server(identity_pipeline, max_sessions=1, connect_grace=30, connect_timeout=60) as server:
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as other:
            status, _ = await _bare_offer(other, server.base_url)
            assert status == 200
        try:
            await connect_offer(server.base_url, MarkerVideoTrack(), {"width": 64, "height": 64})
            raise AssertionError("admitted while the only place was within its grace")
        except ServerError as error:
            assert error.status == 503 and "full" in str(error)
        await poll(lambda: len(server.context.manager.sessions) == 1, 5, "the held session to stay")


async def test_a_client_hoarding_unconnected_offers_is_displaced_before_the_grace(identity_pipeline):
    """Two bare offers from one address fill the server; a second later a newcomer takes one place, well inside a 30 s grace."""
    async with running_server(identity_pipeline, max_sessions=2, connect_grace=30, connect_timeout=60) as server:
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as hoarder:
            held = [await _bare_offer(hoarder, server.base_url) for _ in range(2)]
        assert [status for status, _ in held] == [200, 200]
        await asyncio.sleep(1.1)
        peer = await connect_offer(server.base_url, MarkerVideoTrack(), {"width": 64, "height": 64})
        try:
            await peer.wait_for_frames(2, timeout=30)
            assert sum(answer["session_id"] not in server.context.manager.sessions for _, answer in held) == 1
        finally:
            await peer.close()
