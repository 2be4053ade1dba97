"""A rank that dies or hangs: clear errors for the streams, a server that stays up, no process left behind."""

from __future__ import annotations

import os
import signal

import pytest

from streamgen.parallel.errors import StageFailure
from streamgen.pipeline.video_loading import video_pipeline_for
from streamgen.server.app import close_pipeline_stages
from streamgen.client.webrtc import connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from ..server.helpers import bearer, poll, real_offer_sdp, running_server
from .staging import SIZE, input_frames, staged_tiny


def _all_exited(model) -> bool:
    return all(process.poll() is not None for process in model.stages.group.processes)


def test_a_killed_rank_fails_the_streams_with_its_reason_and_no_rank_survives() -> None:
    with staged_tiny(3, 3) as model:
        pipeline = video_pipeline_for(model)
        state = pipeline.create_state({"width": SIZE, "height": SIZE}, {"prompt": "a fox"})
        frames = input_frames(9)
        for frame in frames[:5]:
            pipeline.step([state], [frame])
        model.stages.group.processes[1].kill()  # rank 2
        model.stages.group.processes[1].wait(10)
        with pytest.raises(StageFailure, match=r"stage rank 2 on cpu exited with code -9"):
            for frame in frames[5:]:
                pipeline.step([state], [frame])
        with pytest.raises(StageFailure, match="rank 2"):
            pipeline.create_state({"width": SIZE, "height": SIZE}, {"prompt": "a new stream"})
    assert _all_exited(model)


def test_a_hung_rank_is_reported_after_the_timeout_and_killed_at_close() -> None:
    with staged_tiny(2, 2, result_timeout=3.0) as model:
        pipeline = video_pipeline_for(model)
        state = pipeline.create_state({"width": SIZE, "height": SIZE, "use_denoising_batch": False}, {"prompt": "a fox"})
        rank1 = model.stages.group.processes[0]
        os.kill(rank1.pid, signal.SIGSTOP)
        try:
            for frame in input_frames(9):  # steps hand chunks over without waiting for them
                pipeline.step([state], [frame])
            with pytest.raises(StageFailure, match=r"no answer from the pipeline stages within 3 s"):
                pipeline.flush(state)  # waits for the stream's chunks
        finally:
            model.stages.close()  # a stopped process cannot exit by itself: close kills it
    assert _all_exited(model)


async def test_the_server_ends_the_sessions_of_a_dead_stage_refuses_new_ones_and_stays_up() -> None:
    with staged_tiny(2, 2) as model:
        pipeline = video_pipeline_for(model)
        async with running_server(pipeline) as server:
            _, health, _ = await server.request("GET", "/health")
            assert health["workers"][0]["stages"]["split"] == [0, 1, 2]
            peer = await connect_offer(server.base_url, MarkerVideoTrack(marked=False), {"prompt": "a fox", "width": SIZE, "height": SIZE})
            try:
                await peer.wait_for_frames(5, timeout=60)
                model.stages.group.processes[0].kill()
                await poll(lambda: any(m.get("type") == "closed" for m in peer.messages), timeout=30, what="the session's close message")
                closed = next(m for m in peer.messages if m.get("type") == "closed")
                assert "stage rank 1 on cpu exited" in closed["reason"]
                status, body, _ = await server.request("GET", "/health")
                assert status == 200 and "exited" in body["workers"][0]["stages"]["failure"]
                status, body, _ = await server.request("POST", "/offer", json={"type": "offer", "sdp": await real_offer_sdp(), "params": {"prompt": "again"}})
                assert status == 503 and "stage rank 1" in body["error"], body
                status, body, _ = await server.request("GET", "/api/sessions", headers=bearer(None))
                assert status in (401, 403)  # the server still answers its API
            finally:
                await peer.close()
        close_pipeline_stages([pipeline])
    assert _all_exited(model)
