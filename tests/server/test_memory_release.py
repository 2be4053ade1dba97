"""Sessions leave nothing behind, whichever way their client leaves; the heap is trimmed after they end.

The soak's memory growth (``bench/RESULTS.md``, "Soak") turned out to be
glibc keeping freed pages, not objects kept alive. This test guards the
"not a leak" half: after sessions that end (DELETE), close (the peer says
goodbye) and vanish (a client process killed with SIGKILL, reaped by the
peer timeout), no session, peer connection, sender, receiver, encoder,
output track or pipeline state is reachable any more. It holds only weak
references, so it measures reachability, not RSS.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
import weakref
from pathlib import Path

import aiortc.rtcrtpsender
import pytest

from streamgen.server.sessions import memory
from streamgen.client.webrtc import connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import poll, running_server

REPO = Path(__file__).resolve().parents[2]


def track_encoders(monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref]:
    """Weak references to every encoder this process's senders create."""
    refs: list[weakref.ref] = []
    make_encoder = aiortc.rtcrtpsender.get_encoder

    def get_encoder(codec):
        encoder = make_encoder(codec)
        refs.append(weakref.ref(encoder))
        return encoder

    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", get_encoder)
    return refs


def session_parts(server, session_id: str) -> dict[str, weakref.ref]:
    """Weak references to what a live session owns."""
    session = server.context.manager.get(session_id)
    parts = {"session": session, "peer": session.pc, "state": session.state, "slot": session.slot, "output": session.output}
    parts.update({f"sender {i}": s for i, s in enumerate(session.pc.getSenders())})
    parts.update({f"receiver {i}": r for i, r in enumerate(session.pc.getReceivers())})
    return {name: weakref.ref(obj) for name, obj in parts.items() if obj is not None}


async def vanishing_client(base_url: str) -> tuple[asyncio.subprocess.Process, str]:
    """A plain aiortc publisher in its own process (bench.soak_client); returns it and its session id."""
    env = {k: v for k, v in os.environ.items() if k != "STREAMGEN_TOKEN"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.soak_client", base_url, "64", "10", cwd=str(REPO), env=env, stdout=asyncio.subprocess.PIPE,
    )
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    return process, json.loads(line)["session_id"]


async def test_ended_closed_and_vanished_sessions_are_freed(identity_pipeline, monkeypatch):
    encoders = track_encoders(monkeypatch)
    parts: dict[str, weakref.ref] = {}
    async with running_server(identity_pipeline, peer_timeout=1.0) as server:
        manager = server.context.manager
        for round_ in range(2):
            ending = await connect_offer(server.base_url, MarkerVideoTrack(64, 64, 10))
            closing = await connect_offer(server.base_url, MarkerVideoTrack(64, 64, 10))
            killed, killed_id = await vanishing_client(server.base_url)
            try:
                await ending.wait_for_frames(2, timeout=30)
                await closing.wait_for_frames(2, timeout=30)
                await poll(lambda: manager.get(killed_id).connected, 30, "the vanishing client to connect")
                for peer_name, sid in (("ended", ending.session_id), ("closed", closing.session_id), ("vanished", killed_id)):
                    parts.update({f"{peer_name} {round_} {name}": ref for name, ref in session_parts(server, sid).items()})
                await ending.end()
            finally:
                await ending.close(delete=False)
                await closing.close(delete=False)
                if killed.returncode is None:
                    killed.send_signal(signal.SIGKILL)
                await killed.wait()
            await poll(lambda: not manager.sessions, 30, "every session to be closed (the killed one by the peer timeout)")

        def alive() -> list[str]:
            gc.collect()
            return [name for name, ref in parts.items() if ref() is not None] + [f"encoder {i}" for i, ref in enumerate(encoders) if ref() is not None]

        # a model step or an encode that started before the close may hold its objects until it returns
        try:
            await poll(lambda: not alive(), 15, "the sessions' objects to be freed")
        except AssertionError:
            raise AssertionError(f"still reachable: {alive()}") from None
    assert len(parts) >= 6 * 5 and encoders


async def test_a_session_end_schedules_a_heap_trim(identity_pipeline, monkeypatch):
    trims: list[float] = []
    monkeypatch.setattr(memory, "_trimmer", memory.HeapTrimmer(delay=0.05, interval=0.0, trim=lambda: trims.append(1)))
    async with running_server(identity_pipeline) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack(64, 64, 10))
        try:
            await peer.wait_for_frames(1, timeout=30)
            await peer.end()
        finally:
            await peer.close(delete=False)
        await poll(lambda: bool(trims), 10, "a heap trim after the session ended")


async def test_trims_coalesce_and_keep_their_distance():
    trims: list[float] = []
    loop = asyncio.get_running_loop()
    trimmer = memory.HeapTrimmer(delay=0.05, interval=1.0, trim=lambda: trims.append(loop.time()))
    for _ in range(5):  # a burst of session ends: one trim, after the last of them
        trimmer.schedule()
    await poll(lambda: len(trims) == 1, 5, "the first trim")
    trimmer.schedule()  # soon after: waits for the interval
    await asyncio.sleep(0.3)
    assert len(trims) == 1
    await poll(lambda: len(trims) == 2, 5, "the second trim")
    assert trims[1] - trims[0] >= 0.95
    trimmer.schedule(idle=True)  # the last session ended: no waiting for the interval
    await poll(lambda: len(trims) == 3, 5, "the idle trim")
    assert trims[2] - trims[1] < 0.9  # margin for a loaded machine; the interval would make it >= 1


@pytest.mark.skipif(memory._malloc_trim is None, reason="no glibc malloc_trim on this platform")
def test_trim_heap_runs_on_glibc():
    assert memory.trim_heap() is True
