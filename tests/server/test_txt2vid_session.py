"""A txt2vid session on the server: no input, paced by its generation clock, watched by its peer and by WHEP viewers."""

from __future__ import annotations

import asyncio
import time

import pytest

from streamgen.client.webrtc import ServerError, connect_offer, whep_view, whip_publish
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import bearer, poll, running_server

FPS = 8.0



async def test_a_txt2vid_session_streams_without_input_to_its_peer_and_to_a_whep_viewer(tiny_video_pipeline):
    async with running_server(tiny_video_pipeline) as server:
        _, health, _ = await server.request("GET", "/health")
        assert health["no_input"] == {"mode": "txt2vid", "params_not_taken": ["motion_aware", "noise_scale", "motion_scale", "motion_weight", "noise_smoothing"]}, "the page learns it may offer a source with no input"
        peer = await connect_offer(server.base_url, None, {"mode": "txt2vid", "prompt": "a paper boat", "seed": 7}, slo={"fps": FPS})
        viewer = None
        try:
            session = server.context.manager.get(peer.session_id)
            frames = await peer.wait_for_frames(6, timeout=60)
            pts = [f.pts for f in frames]
            assert all(b > a for a, b in zip(pts, pts[1:])), "every generated frame has its own, later time"
            steps = {b - a for a, b in zip(pts, pts[1:])}
            assert round(90000 / FPS) in steps, "frames of one chunk are one frame period of the target rate apart"
            assert session.stats.frames_received == 0, "nothing came in: the frames were generated"

            ack = await peer.control({"type": "params", "id": 3, "params": {"prompt": "a lighthouse at night"}})
            assert ack == {"type": "ack", "id": 3, "ok": True, "error": None}
            bad = await peer.control({"type": "params", "id": 4, "params": {"noise_scale": 0.5}})
            assert bad["ok"] is False and "txt2vid" in bad["error"], "a vid2vid-only parameter is refused, saying why"

            viewer = await whep_view(server.base_url, peer.session_id, secret=peer.secret)
            watched = await viewer.wait_for_frames(4, timeout=60)
            assert len(watched) >= 4
            await poll(lambda: session.describe()["params"]["prompt"] == [["a lighthouse at night", 1.0]], 30, "the prompt change to apply")

            generation = session.describe()["generation"]
            period = generation["chunk_period_ms"] / 1000
            assert period == pytest.approx(session.worker.pipeline.stream_shape(session.state).frames_per_unit / FPS, abs=1e-3)
        finally:
            if viewer is not None:
                await viewer.close()
            await peer.close()


async def test_the_generation_clock_paces_the_model_and_admission_counts_a_chunk_per_chunk_period(tiny_video_pipeline):
    """Paced, not flat out: the model is asked for at most one chunk per chunk period since the peer connected."""
    async with running_server(tiny_video_pipeline) as server:
        peer = await connect_offer(server.base_url, None, {"mode": "txt2vid"}, slo={"fps": FPS})
        try:
            session = server.context.manager.get(peer.session_id)
            await peer.wait_for_frames(3, timeout=60)
            await poll(lambda: session.clock is not None, 10, "the clock to start")
            started = session.clock.started_at
            await asyncio.sleep(1.0)
            generation = session.describe()["generation"]
            asked = generation["chunks_requested"] + generation["chunks_skipped"]
            elapsed = time.monotonic() - started
            assert asked <= elapsed / (generation["chunk_period_ms"] / 1000) + 1, "never more requests than chunk periods"

            reservation = session.worker.admitted(session)
            frames_per_chunk = reservation.shape.frames_per_unit
            assert reservation.shape.generates and frames_per_chunk > 1
            assert reservation.demand.steps_per_second == pytest.approx(FPS / frames_per_chunk), "a step per chunk period"
        finally:
            await peer.close()


async def test_a_txt2vid_stream_cannot_be_published_over_whip(tiny_video_pipeline):
    async with running_server(tiny_video_pipeline, default_params={"mode": "txt2vid"}) as server:
        with pytest.raises(ServerError) as refused:
            await whip_publish(server.base_url, MarkerVideoTrack())
        assert refused.value.status == 400
        assert "nothing to publish over WHIP" in str(refused.value.body) and "POST /offer" in str(refused.value.body)
        assert not server.context.manager.sessions


async def test_a_camera_offer_for_a_txt2vid_stream_is_answered_send_only(tiny_video_pipeline):
    """A page that offers its camera anyway gets frames back; its input is never read."""
    async with running_server(tiny_video_pipeline) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack(), {"mode": "txt2vid"}, slo={"fps": FPS})
        try:
            await peer.wait_for_frames(3, timeout=60)
            session = server.context.manager.get(peer.session_id)
            assert session.stats.frames_received == 0
            status, body, _ = await server.request("GET", f"/api/sessions/{peer.session_id}", headers=bearer(peer.secret))
            assert status == 200 and body["generation"]["chunks_requested"] >= 1
        finally:
            await peer.close()
