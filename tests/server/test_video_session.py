"""``serve --model tiny-video``: the same server and page drive a causal video model through the video schema."""

from __future__ import annotations


from streamgen.pipeline.video_params import VIDEO_PARAM_NAMES
from streamgen.client.webrtc import connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import bearer, running_server



async def test_video_session_streams_chunks_and_takes_video_parameters(tiny_video_pipeline):
    async with running_server(tiny_video_pipeline) as server:
        status, health, _ = await server.request("GET", "/health")
        assert status == 200 and health["kind"] == "video" and health["params"] == list(VIDEO_PARAM_NAMES)

        track = MarkerVideoTrack(marked=False)
        peer = await connect_offer(server.base_url, track, {"prompt": "a watercolor", "seed": 3, "noise_scale": 0.7})
        try:
            frames = await peer.wait_for_frames(6, timeout=60)
            pts = [f.pts for f in frames]
            assert all(b > a for a, b in zip(pts, pts[1:])), "every frame of a chunk goes out once, in order"
            ack = await peer.control({"type": "params", "id": 5, "params": {"prompt": "an oil painting", "noise_scale": 0.6}})
            assert ack == {"type": "ack", "id": 5, "ok": True, "error": None}
            bad = await peer.control({"type": "params", "id": 6, "params": {"guidance_scale": 2}})
            assert bad["ok"] is False and "guidance_scale" in bad["error"]
            status, body, _ = await server.request("PATCH", f"/api/sessions/{peer.session_id}/params", json={"strength": 0.5}, headers=bearer(peer.secret))
            assert status == 400 and "strength" in body["error"], "an image-only parameter is refused by name"
            await peer.wait_for_frames(4, timeout=60)
            params = server.context.manager.get(peer.session_id).describe()["params"]
            assert params["noise_scale"] == 0.6 and params["prompt"] == [["an oil painting", 1.0]]
        finally:
            await peer.close()


async def test_image_server_health_lists_image_parameters(identity_pipeline):
    async with running_server(identity_pipeline) as server:
        _, health, _ = await server.request("GET", "/health")
        assert health["kind"] == "image" and "strength" in health["params"] and "noise_scale" not in health["params"]
