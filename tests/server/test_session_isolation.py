"""Two simultaneous sessions each get their own output, never the other's frames."""

from __future__ import annotations

import asyncio

from streamgen.client.webrtc import connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import mean_abs_diff, running_server


async def test_two_sessions_receive_only_their_own_frames(identity_pipeline):
    async with running_server(identity_pipeline) as server:
        track_a, track_b = MarkerVideoTrack(first_marker=10_000), MarkerVideoTrack(first_marker=50_000)
        peer_a, peer_b = await asyncio.gather(
            connect_offer(server.base_url, track_a, {"prompt": "a red fox"}),
            connect_offer(server.base_url, track_b, {"prompt": "a blue whale"}),
        )
        try:
            await asyncio.gather(peer_a.wait_for_frames(20), peer_b.wait_for_frames(20))
            markers_a = [f.marker for f in peer_a.frames]
            markers_b = [f.marker for f in peer_b.frames]
            assert all(m is not None and 10_000 <= m < 10_000 + track_a.frames_sent for m in markers_a)
            assert all(m is not None and 50_000 <= m < 50_000 + track_b.frames_sent for m in markers_b)
            manager = server.context.manager
            assert manager.get(peer_a.session_id).params["prompt"] == [["a red fox", 1.0]]
            assert manager.get(peer_b.session_id).params["prompt"] == [["a blue whale", 1.0]]
        finally:
            await asyncio.gather(peer_a.close(), peer_b.close())


async def test_two_tiny_model_sessions_with_different_prompts_stay_apart(shared_tiny_pipeline):
    """Same still input, different prompts and seeds: the two outputs differ, and every frame a
    session receives is its own (no frame of the other session slips in)."""
    async with running_server(shared_tiny_pipeline, slo_ms=5000) as server:  # isolation, not admission, is tested: a loaded machine must not refuse the second
        tracks = [MarkerVideoTrack(marked=False, moving=False) for _ in range(2)]
        peers = await asyncio.gather(
            connect_offer(server.base_url, tracks[0], {"prompt": "a red fox", "seed": 3}, keep_images=40),
            connect_offer(server.base_url, tracks[1], {"prompt": "a blue whale", "seed": 4}, keep_images=40),
        )
        try:
            await asyncio.gather(*(p.wait_for_frames(20, timeout=60) for p in peers))
            # References: each stream's latest frame. The picture is not constant frame to frame: a capped
            # keyframe starts coarse and sharpens, and a bitrate step starts a new VP8 stream with a new
            # keyframe (streamgen.server.webrtc.vp8_encoder). So each frame is judged by which stream it is closer
            # to: a frame of the other session would sit at ~0 from the other's picture, ~`between` from its own.
            last_a, last_b = peers[0].images[-1], peers[1].images[-1]
            between = mean_abs_diff(last_a, last_b)
            assert between > 10
            for peer, own, other in ((peers[0], last_a, last_b), (peers[1], last_b, last_a)):
                for image in peer.images:
                    assert mean_abs_diff(image, own) < mean_abs_diff(image, other)
        finally:
            await asyncio.gather(*(p.close() for p in peers))
