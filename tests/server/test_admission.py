"""Admission control and caps on a real server: no single request can take the server down.

An offer that asks for far more than the server allows is refused at once
(caps), an offer that the latency model says cannot meet its deadline is
refused with 503 and the numbers (admission control), and a session that
was already streaming keeps streaming through all of it.
"""

from __future__ import annotations

import time

from streamgen.client.webrtc import ServerError, connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import bearer, real_offer_sdp, running_server

OVERSIZED = {"width": 2048, "height": 2048, "frame_buffer_size": 8, "t_index_list": list(range(0, 48, 3))}


async def test_oversized_offer_is_refused_quickly_and_a_bystander_keeps_streaming(shared_tiny_pipeline):
    async with running_server(shared_tiny_pipeline) as server:
        status, health, _ = await server.request("GET", "/health")
        assert health["caps"] == {"max_width": 512, "max_height": 512, "max_frames_per_call": 4, "max_steps": 8}
        bystander = await connect_offer(server.base_url, MarkerVideoTrack(first_marker=0), {"width": 64, "height": 64})
        try:
            await bystander.wait_for_frames(3, timeout=30)
            for settings, words in [
                (OVERSIZED, "over this server's limit of 512x512"),
                ({"width": 512, "height": 512, "frame_buffer_size": 8}, "frame_buffer_size 8 is over"),
                ({"t_index_list": list(range(0, 48, 3))}, "16 denoising steps are over"),
            ]:
                started = time.monotonic()
                try:
                    await connect_offer(server.base_url, MarkerVideoTrack(), settings)
                    raise AssertionError("the offer was accepted")
                except ServerError as error:
                    assert error.status == 400 and words in str(error), error
                assert time.monotonic() - started < 5
            status, _, _ = await server.request(
                "PATCH", f"/api/sessions/{bystander.session_id}/params", json={"t_index_list": list(range(0, 48, 3))}, headers=bearer(bystander.secret)
            )
            assert status == 400, "a live update cannot get round the caps"
            seen = len(bystander.frames)
            await bystander.wait_for_frames(seen + 3, timeout=30)
        finally:
            await bystander.close()


async def test_admission_refuses_what_would_miss_its_deadline_with_the_numbers(shared_tiny_pipeline):
    async with running_server(shared_tiny_pipeline, min_slo_ms=1.0) as server:
        bystander = await connect_offer(server.base_url, MarkerVideoTrack(first_marker=0), {"width": 64, "height": 64})
        try:
            await bystander.wait_for_frames(2, timeout=30)
            body = {"type": "offer", "sdp": "v=0", "params": {"width": 512, "height": 512, "frame_buffer_size": 4, "num_inference_steps": 4}, "slo": {"deadline_ms": 2}}
            status, answer, headers = await _post_offer(server, body)
            assert status == 503, answer
            assert "deadline" in answer["error"]
            assert answer["admission"]["admitted"] is False
            assert answer["admission"]["predicted_step_ms"] > 2
            assert headers["Retry-After"]
            status, metrics, _ = await server.request("GET", "/metrics")
            assert "streamgen_admission_refusals_total 1" in metrics
            seen = len(bystander.frames)
            await bystander.wait_for_frames(seen + 3, timeout=30)
        finally:
            await bystander.close()


async def test_session_slo_is_validated_and_reported(shared_tiny_pipeline):
    async with running_server(shared_tiny_pipeline, metrics_session_labels=True) as server:
        status, answer, _ = await _post_offer(server, {"type": "offer", "sdp": "v=0", "slo": {"deadline_ms": 5}})
        assert status == 400 and "slo.deadline_ms must be a number between 30 and 5000" in answer["error"]
        peer = await connect_offer(server.base_url, MarkerVideoTrack(), {"width": 64, "height": 64}, slo={"deadline_ms": 800, "fps": 10, "min_fps": 2})
        try:
            await peer.wait_for_frames(2, timeout=30)
            described = await peer.describe()
            assert described["slo"] == {"deadline_ms": 800.0, "fps": 10.0, "min_fps": 2.0}
            assert "deadline_misses" in described["stats"]
            status, metrics, _ = await server.request("GET", "/metrics")
            assert f'streamgen_session_deadline_milliseconds{{session="{peer.session_id}",kind="webrtc"}} 800' in metrics
        finally:
            await peer.close()


async def _post_offer(server, body):
    """POST /offer with a real (aiortc) offer SDP and ``body``'s other fields."""
    body = {**body, "sdp": await real_offer_sdp()}
    async with server.http.post(server.base_url + "/offer", json=body) as response:
        return response.status, await response.json(content_type=None), response.headers
