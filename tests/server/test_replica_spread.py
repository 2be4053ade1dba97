"""Several replicas (``--devices`` for an image model, or ``--replicas``): sessions spread over them by predicted load."""

from __future__ import annotations

from streamgen.client.webrtc import connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import running_server


async def test_two_sessions_on_two_replicas_take_one_each_and_both_stream(shared_tiny_pipeline):
    """The second session is predicted to cost a loaded replica more than an idle one.

    Both replicas predict from the same measurements (replica-1 has not run
    this bucket yet: it reads what replica-0 measured, server/shared_latency.py),
    so the comparison does not hang on a guess. (Which replica wins for sessions of different costs is policy, tested without a server in
    tests/sched/test_admission.py: real step times are too noisy to pin it here.)
    """
    async with running_server([shared_tiny_pipeline, shared_tiny_pipeline], slo_ms=5000) as server:
        manager = server.context.manager
        peers = []
        try:
            for _ in range(2):
                peer = await connect_offer(server.base_url, MarkerVideoTrack(), {"width": 128, "height": 128})
                peers.append(peer)
                await peer.wait_for_frames(2, timeout=60)
            replicas = {manager.get(p.session_id).worker.name for p in peers}
            assert replicas == {"replica-0", "replica-1"}
            _, health, _ = await server.request("GET", "/health")
            assert [w["sessions"] for w in health["workers"]] == [1, 1]
            for peer in peers:
                await peer.wait_for_frames(len(peer.frames) + 2, timeout=60)
        finally:
            for peer in peers:
                await peer.close()
