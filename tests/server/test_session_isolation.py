"""Two simultaneous sessions each get their own output, never the other's frames."""

from __future__ import annotations

import asyncio

from streamgen.server.client import connect_offer
from streamgen.server.synthetic import MarkerVideoTrack

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
    """Same still input, different prompts and seeds: each output stream is steady (no frame of
    the other session slips in) and the two differ."""
    async with running_server(shared_tiny_pipeline) as server:
        tracks = [MarkerVideoTrack(marked=False, moving=False) for _ in range(2)]
        peers = await asyncio.gather(
            connect_offer(server.base_url, tracks[0], {"prompt": "a red fox", "seed": 3}, keep_images=40),
            connect_offer(server.base_url, tracks[1], {"prompt": "a blue whale", "seed": 4}, keep_images=40),
        )
        try:
            await asyncio.gather(*(p.wait_for_frames(12, timeout=40) for p in peers))
            # References: each stream's latest frame. A capped keyframe starts coarse and sharpens within
            # a second (streamgen.server.vp8_encoder), so early frames are compared by which stream they
            # are closer to: a frame of the other session would be far closer to the other's reference.
            last_a, last_b = peers[0].images[-1], peers[1].images[-1]
            between = mean_abs_diff(last_a, last_b)
            assert between > 10
            for peer, own, other in ((peers[0], last_a, last_b), (peers[1], last_b, last_a)):
                images = list(peer.images)
                for image in images:
                    assert mean_abs_diff(image, own) < mean_abs_diff(image, other) / 2
                for image in images[-4:]:  # steady state: the same picture
                    assert mean_abs_diff(image, own) < between / 4
        finally:
            await asyncio.gather(*(p.close() for p in peers))
