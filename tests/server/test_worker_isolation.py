"""A step that fails for one session is that session's problem only.

``FailingForPrompts`` is a real StreamPipeline (the identity pipeline) that fails on purpose for
streams whose prompt asks it to: a user error (InputError) is reported on that session's control
channel and the session keeps going; a bug (any other exception) closes that session and is
logged with its traceback. The other session streams on either way.
"""

from __future__ import annotations

import logging

from streamgen.errors import InputError
from streamgen.pipeline.identity import IdentityPipeline
from streamgen.client.webrtc import connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import running_server, tracebacks


class FailingForPrompts(IdentityPipeline):
    def step(self, states, frames, tags=None):
        outputs = super().step(states, frames, tags)  # applies queued parameters first
        for state in states:
            prompt = state.params.prompt[0].text
            if prompt == "unprocessable":
                raise InputError("this stream's frames cannot be processed")
            if prompt == "crash":
                raise RuntimeError("a bug in the model")
        return outputs


async def test_a_failing_session_does_not_stop_the_others(caplog):
    caplog.set_level(logging.INFO)
    async with running_server(FailingForPrompts()) as server:
        steady = await connect_offer(server.base_url, MarkerVideoTrack(first_marker=0))
        troubled = await connect_offer(server.base_url, MarkerVideoTrack(first_marker=90_000))
        try:
            await steady.wait_for_frames(3)
            await troubled.wait_for_frames(3)

            assert (await troubled.control({"type": "params", "params": {"prompt": "unprocessable"}}))["ok"]
            await troubled.wait_until(lambda: any(m.get("type") == "error" for m in troubled.messages), 10, "the error message")
            assert "cannot be processed" in next(m for m in troubled.messages if m.get("type") == "error")["error"]
            await steady.wait_for_frames(5)
            assert tracebacks(caplog.records) == [], "a user error logs no traceback"
            assert troubled.session_id in server.context.manager.sessions

            assert (await troubled.control({"type": "params", "params": {"prompt": "crash"}}))["ok"]
            await troubled.wait_until(lambda: any(m.get("type") == "closed" for m in troubled.messages), 10, "the session to be closed")
            await steady.wait_for_frames(5)
            assert list(server.context.manager.sessions) == [steady.session_id]
            assert all(f.marker < 90_000 for f in steady.frames), "no frame of the other session"
            assert len(tracebacks(caplog.records)) == 1, "a bug is logged, once, with its traceback"
        finally:
            await steady.close()
            await troubled.close()
