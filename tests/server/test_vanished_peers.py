"""A peer that vanishes without a goodbye (``kill -9``) is reaped after ``peer_timeout``, not ICE's ~30 s; a quiet live one is not.

The vanishing client is a separate process (plain aiortc, so it starts in
a fraction of a second) killed with SIGKILL once its session streams: its
kernel closes the UDP socket and nothing more is ever sent, exactly what a
crashed browser or a pulled cable looks like to the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time

from streamgen.client.webrtc import connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import poll, running_server, tracebacks

CLIENT = r"""
import asyncio, json, sys
import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

async def main(base):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("control")
    pc.addTransceiver(VideoStreamTrack(), direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as response:
            answer = await response.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    print(json.dumps({"session_id": answer["session_id"]}), flush=True)
    await asyncio.sleep(60)  # the test kills it long before; never outlives a minute

asyncio.run(main(sys.argv[1]))
"""


async def test_a_client_killed_with_sigkill_is_reaped_after_the_peer_timeout(identity_pipeline, caplog):
    caplog.set_level(logging.INFO)
    peer_timeout = 2.0
    async with running_server(identity_pipeline, peer_timeout=peer_timeout, idle_timeout=60.0) as server:
        process = subprocess.Popen([sys.executable, "-c", CLIENT, server.base_url], stdout=subprocess.PIPE, text=True)
        try:
            line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, process.stdout.readline), 20)
            session_id = json.loads(line)["session_id"]
            manager = server.context.manager
            await poll(lambda: session_id in manager.sessions and manager.sessions[session_id].stats.frames_received > 5, 20, "the client's frames")
            session = manager.sessions[session_id]
            process.send_signal(signal.SIGKILL)
            process.wait(5)
            killed_at = time.monotonic()
            await poll(lambda: session.closed, 20, "the vanished peer's session to be closed")
            reaped_after = time.monotonic() - killed_at
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5)
            process.stdout.close()
        print(f"reaped {reaped_after:.2f} s after SIGKILL (peer_timeout {peer_timeout:g} s)")
        assert "vanished" in session.close_reason
        assert peer_timeout - 0.5 <= reaped_after < peer_timeout + 2.5  # its last packets left just before the kill; + the sweep interval and slack
    assert not tracebacks(caplog.records)


async def test_a_live_client_whose_video_goes_quiet_is_not_taken_for_vanished(identity_pipeline):
    """No input, no output, but the control channel still acknowledges the stats: alive, closed later by the idle timeout."""
    async with running_server(identity_pipeline, peer_timeout=1.0, idle_timeout=4.0, stats_interval=0.5) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack(hold_after=3))
        try:
            await peer.wait_until(lambda: any(m.get("type") == "closed" for m in peer.messages), 20, "the idle session to be closed")
            assert "no input" in next(m for m in peer.messages if m.get("type") == "closed")["reason"]
        finally:
            await peer.close()
