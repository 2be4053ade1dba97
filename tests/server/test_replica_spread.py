"""Several replicas (``--devices`` for an image model, or ``--replicas``): sessions go where they cost least."""

from __future__ import annotations

from streamgen.server.client import connect_offer
from streamgen.server.synthetic import MarkerVideoTrack

from .helpers import running_server


async def test_a_new_session_goes_to_the_replica_with_the_least_predicted_load_not_the_fewest_sessions(shared_tiny_pipeline):
    async with running_server([shared_tiny_pipeline, shared_tiny_pipeline], slo_ms=5000) as server:
        manager = server.context.manager
        peers = []
        try:
            for size in (256, 64, 64):  # one costly stream, then two cheap ones
                peer = await connect_offer(server.base_url, MarkerVideoTrack(), {"width": size, "height": size})
                peers.append(peer)
                await peer.wait_for_frames(1, timeout=60)
            replicas = [manager.get(p.session_id).worker.name for p in peers]
            # the 256x256 stream costs the tiny model ~16x a 64x64 one: both cheap streams share the other replica,
            # although by count the third would have gone back to the first (one session each at that point)
            assert replicas[0] != replicas[1] and replicas[2] == replicas[1], replicas
            _, health, _ = await server.request("GET", "/health")
            assert sorted(w["sessions"] for w in health["workers"]) == [1, 2]
        finally:
            for peer in peers:
                await peer.close()
