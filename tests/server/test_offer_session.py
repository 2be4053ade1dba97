"""POST /offer end to end with an aiortc client: frames go through the model and come back."""

from __future__ import annotations

import pytest

from streamgen.client.webrtc import connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import mean_abs_diff, running_server


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_marked_frames_come_back_in_order_with_their_timing(identity_pipeline, codec):
    async with running_server(identity_pipeline, codecs=(codec,)) as server:
        track = MarkerVideoTrack(first_marker=1000)
        peer = await connect_offer(server.base_url, track, {"prompt": "unused by identity"}, codecs=[codec])
        try:
            frames = await peer.wait_for_frames(20)
            markers = [f.marker for f in frames]
            assert None not in markers, "every output frame carries a readable input marker"
            assert markers == sorted(markers) and len(set(markers)) == len(markers)
            assert all(1000 <= m < 1000 + track.frames_sent for m in markers)
            first = frames[0]
            for frame in frames[1:]:  # output frames keep the input frame's timing
                sent = track.sent_pts[frame.marker] - track.sent_pts[first.marker]
                assert abs((frame.pts - first.pts) - sent) <= 4, "equal up to the encoders' microsecond rounding (1 tick of 90 kHz per hop)"
            assert (frames[0].width, frames[0].height) == (256, 256)
        finally:
            await peer.close()


async def test_tiny_model_output_comes_back_and_a_control_message_changes_it(shared_tiny_pipeline):
    async with running_server(shared_tiny_pipeline) as server:
        track = MarkerVideoTrack(marked=False, moving=False)  # a still picture: only parameters change the output
        peer = await connect_offer(server.base_url, track, {"prompt": "a watercolor", "seed": 1}, keep_images=50)
        try:
            await peer.wait_for_frames(6, timeout=30)
            before, steady = peer.images[-1], mean_abs_diff(peer.images[-1], peer.images[-2])
            ack = await peer.control({"type": "params", "id": 41, "params": {"seed": 12345, "prompt": "an oil painting"}})
            assert ack == {"type": "ack", "id": 41, "ok": True, "error": None}
            await peer.wait_for_frames(3, timeout=30)
            assert mean_abs_diff(before, peer.images[-1]) > 3 * steady + 10, "the new seed and prompt change the output"
            pts = [f.pts for f in peer.frames]
            assert all(b > a for a, b in zip(pts, pts[1:])), "output timestamps strictly increase (stream-batch repeats are left out)"
            session = server.context.manager.get(peer.session_id).describe()
            assert session["params"]["seed"] == [[12345, 1.0]] and session["params"]["prompt"] == [["an oil painting", 1.0]]
            await peer.wait_until(lambda: any(m.get("type") == "stats" for m in peer.messages), 10, "a stats message")
            stats = next(m for m in peer.messages if m["type"] == "stats")
            assert {"fps_in", "fps_out", "latency_ms_p50", "dropped", "frames_out"} <= set(stats)
        finally:
            await peer.close()


async def test_every_control_message_is_acknowledged(identity_pipeline):
    async with running_server(identity_pipeline) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack())
        try:
            assert (await peer.control({"type": "ping", "id": "p1"}))["ok"] is True
            assert (await peer.control({"type": "reset", "id": 2}))["ok"] is True
            bad = await peer.control({"type": "params", "id": 3, "params": {"strength": 2}})
            assert bad["ok"] is False and bad["id"] == 3 and "strength" in bad["error"]
            unknown = await peer.control({"type": "params", "id": 4, "params": {"colour": "red"}})
            assert unknown["ok"] is False and "colour" in unknown["error"]
        finally:
            await peer.close()
