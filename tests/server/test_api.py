"""The session API, /health and /metrics against a live session."""

from __future__ import annotations

from streamgen.client.webrtc import connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import ADMIN_TOKEN, bearer, poll, running_server


async def test_sessions_can_be_listed_read_patched_and_deleted(identity_pipeline):
    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack(), {"prompt": "a lighthouse", "strength": 0.6}, token=ADMIN_TOKEN)
        own = bearer(peer.secret)  # the creator's own calls carry the session's secret
        try:
            await peer.wait_for_frames(3)
            status, listing, _ = await server.request("GET", "/api/sessions", headers=bearer(ADMIN_TOKEN))
            assert status == 200 and [s["id"] for s in listing["sessions"]] == [peer.session_id]
            assert peer.secret not in str(listing), "a session's secret is never listed"

            status, session, _ = await server.request("GET", f"/api/sessions/{peer.session_id}", headers=own)
            assert status == 200 and session["kind"] == "webrtc" and session["connection"] == "connected"
            assert session["params"]["prompt"] == [["a lighthouse", 1.0]] and session["params"]["strength"] == 0.6
            assert session["stats"]["frames_out"] >= 3

            patch = {"prompt": [["a storm", 0.7], ["a calm sea", 0.3]], "guidance_scale": 2.0}
            status, body, _ = await server.request("PATCH", f"/api/sessions/{peer.session_id}/params", json=patch, headers=own)
            assert status == 200 and body["params"]["prompt"] == [["a storm", 0.7], ["a calm sea", 0.3]]
            status, session, _ = await server.request("GET", f"/api/sessions/{peer.session_id}", headers=own)
            assert session["params"]["guidance_scale"] == 2.0 and session["params"]["strength"] == 0.6

            status, body, _ = await server.request("DELETE", f"/api/sessions/{peer.session_id}", headers=own)
            assert status == 200 and body == {"id": peer.session_id, "closed": True}
            await peer.wait_until(lambda: any(m.get("type") == "closed" for m in peer.messages) or peer.pc.connectionState == "closed", 10, "the closed notice")
            for credential in (peer.secret, ADMIN_TOKEN):  # the owner learns the session ended; so does the operator
                status, body, _ = await server.request("GET", f"/api/sessions/{peer.session_id}", headers=bearer(credential))
                assert status == 404 and "no session" in body["error"]
        finally:
            await peer.close()


async def test_health_and_metrics(identity_pipeline):
    async with running_server(identity_pipeline, metrics_session_labels=True) as server:
        status, health, _ = await server.request("GET", "/health")
        assert status == 200 and health["status"] == "ok" and health["model"] == "identity" and health["sessions"] == 0

        peer = await connect_offer(server.base_url, MarkerVideoTrack())
        try:
            await peer.wait_for_frames(5)
            await poll(lambda: server.context.manager.get(peer.session_id).stats.frames_output >= 5, 10, "server-side output count")
            status, text, headers = await server.request("GET", "/metrics")
            assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
            label = f'{{session="{peer.session_id}",kind="webrtc"}}'
            for family in (
                "streamgen_sessions_active 1",
                f"streamgen_session_input_fps{label}",
                f"streamgen_session_output_fps{label}",
                f"streamgen_session_time_to_first_frame_seconds{label}",
                f"streamgen_session_frames_dropped_total{label}",
                f"streamgen_session_frames_skipped_total{label}",
                'streamgen_frame_latency_seconds_bucket{le="+Inf"}',
                "streamgen_time_to_first_frame_seconds_count 1",
                "streamgen_frames_received_total ",
                "streamgen_output_fps ",
                'streamgen_model_step_seconds_count{replica="replica-0"}',
            ):
                assert family in text, family
            for line in text.splitlines():  # every sample line is "name{labels} number"
                if line and not line.startswith("#"):
                    float(line.rsplit(" ", 1)[1])
        finally:
            await peer.close()
