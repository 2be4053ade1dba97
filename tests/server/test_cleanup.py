"""A session the client closes is cleaned up: gone from the list, its objects freed."""

from __future__ import annotations

import gc
import threading
import weakref

from streamgen.client.webrtc import connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import ADMIN_TOKEN, bearer, poll, running_server


async def test_client_close_frees_the_session(shared_tiny_pipeline):
    async with running_server(shared_tiny_pipeline, token=ADMIN_TOKEN) as server:
        status, before, _ = await server.request("GET", "/api/sessions", headers=bearer(ADMIN_TOKEN))
        assert status == 200 and before == {"sessions": []}
        decoders_before = _decoder_threads()

        peer = await connect_offer(server.base_url, MarkerVideoTrack(), token=ADMIN_TOKEN)
        await peer.wait_for_frames(2, timeout=30)
        session = server.context.manager.get(peer.session_id)
        session_ref, state_ref, pc_ref = weakref.ref(session), weakref.ref(session.state), weakref.ref(session.pc)
        worker = session.worker
        del session

        await peer.close()
        await poll(lambda: not server.context.manager.sessions, 10, "the server to notice the closed peer")
        status, after, _ = await server.request("GET", "/api/sessions", headers=bearer(ADMIN_TOKEN))
        assert after == before
        assert worker.load == 0

        await poll(lambda: _decoder_threads() <= decoders_before, 10, "aiortc's decoder threads to end")
        def freed() -> bool:
            gc.collect()
            return state_ref() is None and session_ref() is None and pc_ref() is None

        # a step that started before the close may still hold the state until it returns
        await poll(freed, 10, "the session, its peer and its pipeline state (latents, noise, embeddings) to be freed")


def _decoder_threads() -> int:
    """aiortc runs one decoder thread per started receiver ("video-decoder")."""
    return sum(1 for t in threading.enumerate() if t.name.endswith("-decoder"))
