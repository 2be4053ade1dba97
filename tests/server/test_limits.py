"""Server limits: max sessions, idle and connect timeouts, input resolution, fps cap, scaling."""

from __future__ import annotations

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from streamgen.client.webrtc import ServerError, connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import poll, running_server


async def test_max_sessions_gives_503_until_a_place_frees_up(identity_pipeline):
    async with running_server(identity_pipeline, max_sessions=1) as server:
        first = await connect_offer(server.base_url, MarkerVideoTrack())
        try:
            await first.wait_for_frames(1)
            with pytest.raises(ServerError) as error:
                await connect_offer(server.base_url, MarkerVideoTrack())
            assert error.value.status == 503 and "full" in error.value.body["error"]
        finally:
            await first.close()
        await poll(lambda: not server.context.manager.sessions, 10, "the first session to close")
        second = await connect_offer(server.base_url, MarkerVideoTrack())
        try:
            await second.wait_for_frames(2)
        finally:
            await second.close()


async def test_a_session_without_input_is_closed_after_the_idle_timeout(identity_pipeline):
    async with running_server(identity_pipeline, idle_timeout=1.0) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack(hold_after=3))  # then the source goes quiet
        try:
            await peer.wait_until(lambda: any(m.get("type") == "closed" for m in peer.messages), 15, "the idle session to be closed")
            assert "no input" in next(m for m in peer.messages if m.get("type") == "closed")["reason"]
            assert peer.session_id not in server.context.manager.sessions
        finally:
            await peer.close()


async def test_the_idle_clock_starts_when_the_peer_connects(identity_pipeline):
    """Before the peer connects, only the connect timeout applies: a slow ICE is not idleness (and a session
    closed before its control channel opens could not tell its peer why)."""
    async with running_server(identity_pipeline, idle_timeout=0.5, connect_timeout=30.0) as server:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        status, body, _ = await server.request("POST", "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        await pc.close()  # never connects
        manager = server.context.manager
        session = manager.get(body["session_id"])
        await manager.sweep(session.stats.created_at + 10.0)  # far past the idle timeout, well within the connect timeout
        assert not session.closed and body["session_id"] in manager.sessions
        await manager.sweep(session.stats.created_at + 31.0)
        assert session.closed and "did not connect" in session.close_reason


async def test_a_peer_that_never_connects_is_cleaned_up(identity_pipeline):
    """ICE never completes (the client vanished after sending its offer)."""
    async with running_server(identity_pipeline, connect_timeout=1.0) as server:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        status, body, _ = await server.request("POST", "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        await pc.close()  # never applies the answer
        assert status == 200 and body["session_id"] in server.context.manager.sessions
        await poll(lambda: not server.context.manager.sessions, 15, "the unconnected session to be closed")


async def test_frames_over_the_input_resolution_limit_are_refused_with_a_message(identity_pipeline):
    async with running_server(identity_pipeline, max_input_width=200, max_input_height=200) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack(width=256, height=256))
        try:
            await peer.wait_until(lambda: any(m.get("type") == "error" for m in peer.messages), 15, "an error message")
            error = next(m for m in peer.messages if m.get("type") == "error")["error"]
            assert "256x256" in error and "200x200" in error
            session = server.context.manager.get(peer.session_id)
            assert session.stats.frames_rejected > 0 and session.stats.frames_output == 0
        finally:
            await peer.close()


async def test_input_is_scaled_to_the_stream_resolution(identity_pipeline):
    async with running_server(identity_pipeline) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack(width=320, height=240, marked=False), {"width": 128, "height": 96})
        try:
            frames = await peer.wait_for_frames(3)
            assert {(f.width, f.height) for f in frames} == {(128, 96)}
        finally:
            await peer.close()


async def test_the_fps_cap_drops_extra_input_frames(identity_pipeline):
    async with running_server(identity_pipeline, max_fps=10) as server:
        # 60 frames sent, 45 awaited: on a loaded machine the first frames can be lost before a keyframe decodes
        # (with 30 sent and 28 awaited, three lost frames left the test waiting for frames that never came).
        track = MarkerVideoTrack(fps=30, hold_after=60)
        peer = await connect_offer(server.base_url, track)
        try:
            session = server.context.manager.get(peer.session_id)
            await poll(lambda: session.stats.frames_received >= 45 and session.stats.frames_output >= 5, 20, "the input frames to arrive")
            assert session.stats.frames_output <= session.stats.frames_received // 3 + 2
            assert session.stats.frames_dropped >= session.stats.frames_received - session.stats.frames_output - 2
        finally:
            await peer.close()
