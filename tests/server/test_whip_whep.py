"""WHIP ingest + WHEP playback with aiortc, the way OBS publishes: H.264 only, no candidates in the offer."""

from __future__ import annotations

import pytest

from streamgen.client.webrtc import ServerError, strip_candidates, whep_view, whip_publish
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import ADMIN_TOKEN, bearer, poll, running_server


@pytest.mark.parametrize("token", [None, "s3cret-token"])
async def test_whip_publish_and_whep_watch_round_trip(identity_pipeline, token):
    async with running_server(identity_pipeline, token=token) as server:
        track = MarkerVideoTrack(first_marker=7000)
        publisher = await whip_publish(server.base_url, track, token=token, codecs=["H264"], without_candidates=True)
        viewer = None
        try:
            assert publisher.resource == f"{server.base_url}/whip/{publisher.session_id}"
            session = server.context.manager.get(publisher.session_id)
            assert publisher.secret == session.secret and len(publisher.secret) >= 32, "the 201 carries the session's secret"
            assert session.kind == "whip"
            await poll(lambda: session.stats.frames_received >= 3, 20, "the server to receive WHIP frames")

            viewer = await whep_view(server.base_url, publisher.session_id, secret=publisher.secret)
            frames = await viewer.wait_for_frames(10)
            assert all(f.marker is not None and 7000 <= f.marker < 7000 + track.frames_sent for f in frames)
            assert list(session.viewers) == [viewer.resource.rsplit("/", 1)[-1]]

            await viewer.close()  # DELETE /whep/{session}/{viewer}
            await poll(lambda: not session.viewers, 10, "the viewer to be removed")
            viewer = None
        finally:
            if viewer is not None:
                await viewer.close()
            await publisher.close()  # DELETE /whip/{session}, with the session's secret
        assert publisher.session_id not in server.context.manager.sessions
        assert session.close_reason == "ended by the publisher (WHIP DELETE)"


async def test_whip_answer_is_h264_and_carries_candidates(identity_pipeline):
    async with running_server(identity_pipeline) as server:
        publisher = await whip_publish(server.base_url, MarkerVideoTrack(), codecs=["H264"])
        try:
            answer = publisher.pc.remoteDescription.sdp
            assert "a=candidate:" in answer
            video = answer[answer.index("m=video") :]
            assert "H264/90000" in video and "VP8/90000" not in video
        finally:
            await publisher.close()


async def test_whip_and_whep_need_the_token_when_the_server_has_one(identity_pipeline):
    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server:
        for token in (None, "wrong"):
            with pytest.raises(ServerError) as error:
                await whip_publish(server.base_url, MarkerVideoTrack(), token=token)
            assert error.value.status == 401 and "bearer token" in error.value.body["error"]
        publisher = await whip_publish(server.base_url, MarkerVideoTrack(), token=ADMIN_TOKEN)
        try:
            with pytest.raises(ServerError) as error:
                await whep_view(server.base_url, publisher.session_id, token="wrong")
            assert error.value.status == 401
            status, body, headers = await server.request("DELETE", f"/whip/{publisher.session_id}")
            assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")
            viewer = await whep_view(server.base_url, publisher.session_id, token=ADMIN_TOKEN)  # the operator watches any session
            await viewer.wait_for_frames(2)
            await viewer.close()
        finally:
            await publisher.close()


async def test_whip_does_not_take_trickled_candidates(identity_pipeline):
    async with running_server(identity_pipeline) as server:
        publisher = await whip_publish(server.base_url, MarkerVideoTrack())
        try:
            status, body, _ = await server.request(
                "PATCH",
                f"/whip/{publisher.session_id}",
                data=b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host",
                headers={"Content-Type": "application/trickle-ice-sdpfrag", **bearer(publisher.secret)},
            )
            assert status == 405 and "error" in body
        finally:
            await publisher.close()


def test_strip_candidates_removes_only_candidate_lines():
    sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\na=end-of-candidates\r\na=mid:0\r\n"
    assert strip_candidates(sdp) == "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"


async def test_whep_viewers_that_never_connect_are_reaped(identity_pipeline):
    """Ghost viewers (offer sent, ICE never finished) would hold every viewer slot; they are dropped after the connect timeout."""
    from aiortc import RTCPeerConnection

    # The timeout is the publisher's too: 4 s leaves its own ICE time to finish on a loaded machine (at 1 s a
    # busy CI box reaped the publisher before the ghosts could post).
    async with running_server(identity_pipeline, connect_timeout=4.0, max_viewers_per_session=2) as server:
        publisher = await whip_publish(server.base_url, MarkerVideoTrack(), codecs=["H264"])
        ghosts = []
        try:
            session = server.context.manager.get(publisher.session_id)
            await poll(lambda: session.connected, 4, "the publisher to connect")
            for _ in range(2):
                pc = RTCPeerConnection()  # posts an offer, never applies the answer: ICE never completes
                ghosts.append(pc)
                pc.addTransceiver("video", direction="recvonly")
                await pc.setLocalDescription(await pc.createOffer())
                status, _, _ = await server.request(
                    "POST", f"/whep/{publisher.session_id}", data=pc.localDescription.sdp,
                    headers={"Content-Type": "application/sdp", **bearer(publisher.secret)},
                )
                assert status == 201
            assert len(session.viewers) == 2
            await poll(lambda: not session.viewers, 20, "the ghost viewers to be dropped")
            viewer = await whep_view(server.base_url, publisher.session_id, secret=publisher.secret)
            await viewer.wait_for_frames(3)
            await viewer.close()
        finally:
            for pc in ghosts:
                await pc.close()
            await publisher.close()


async def test_concurrent_whep_offers_never_exceed_the_viewer_cap(identity_pipeline):
    """30 viewers offering at once against a cap of 3: the place is taken before the answer is awaited, so 3 get in."""
    import asyncio

    from aiortc import RTCPeerConnection

    async with running_server(identity_pipeline, max_viewers_per_session=3) as server:
        publisher = await whip_publish(server.base_url, MarkerVideoTrack(), codecs=["H264"])
        peers = []
        try:
            offers = []
            for _ in range(30):
                pc = RTCPeerConnection()
                peers.append(pc)
                pc.addTransceiver("video", direction="recvonly")
                await pc.setLocalDescription(await pc.createOffer())
                offers.append(pc.localDescription.sdp)
            answers = await asyncio.gather(*(
                server.request("POST", f"/whep/{publisher.session_id}", data=sdp, headers={"Content-Type": "application/sdp", **bearer(publisher.secret)})
                for sdp in offers
            ))
            statuses = sorted(status for status, _, _ in answers)
            assert statuses.count(201) == 3 and set(statuses) == {201, 503}, statuses
            session = server.context.manager.get(publisher.session_id)
            assert len(session.viewers) == 3 and session.viewers_joining == 0
        finally:
            for pc in peers:
                await pc.close()
            await publisher.close()
