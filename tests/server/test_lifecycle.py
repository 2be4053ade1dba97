"""Liveness, readiness and the drain a SIGTERM starts: newcomers are refused at once, running streams go on."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from streamgen.client.synthetic import MarkerVideoTrack
from streamgen.client.webrtc import ServerError, connect_offer

from .helpers import poll, real_offer_sdp, running_server


async def test_livez_readyz_and_the_capacity_health_shows(identity_pipeline):
    async with running_server(identity_pipeline, max_sessions=1) as server:
        status, body, _ = await server.request("GET", "/livez")
        assert (status, body) == (200, {"status": "alive"})
        status, ready, _ = await server.request("GET", "/readyz")
        assert status == 200 and ready["status"] == "ready" and ready["reasons"] == []
        _, health, _ = await server.request("GET", "/health")
        capacity = health["capacity"]
        assert capacity["sessions"] == 0 and capacity["max_sessions"] == 1 and capacity["draining"] is False
        assert len(capacity["admitted_load"]) == len(capacity["predicted_headroom"]) == 1 and capacity["admitted_load"][0] == 0.0

        peer = await connect_offer(server.base_url, MarkerVideoTrack())
        try:
            await peer.wait_for_frames(2)
            status, ready, headers = await server.request("GET", "/readyz")
            assert status == 503 and ready["reasons"] == ["full: 1 of 1 sessions"] and headers["Retry-After"] == "5"
            _, health, _ = await server.request("GET", "/health")
            assert health["capacity"]["sessions"] == 1 and health["capacity"]["admitted_load"][0] > 0
            status, _, _ = await server.request("GET", "/livez")
            assert status == 200, "a full server is alive: liveness must not restart it"
        finally:
            await peer.close()


async def test_a_drain_refuses_newcomers_at_once_and_running_sessions_go_on_until_they_end(identity_pipeline):
    async with running_server(identity_pipeline, drain_seconds=60) as server:
        peers = [await connect_offer(server.base_url, MarkerVideoTrack()) for _ in range(2)]
        try:
            for peer in peers:
                await peer.wait_for_frames(2)
            drain = server.context.drain
            drain.request()  # what SIGTERM does in `streamgen serve`
            status, ready, _ = await server.request("GET", "/readyz")
            assert status == 503 and "draining for a restart" in ready["reasons"] and ready["capacity"]["draining"] is True
            status, body, headers = await server.request("POST", "/offer", json={"sdp": await real_offer_sdp(), "type": "offer"})
            assert status == 503 and "draining" in body["error"] and int(headers["Retry-After"]) >= 1
            for peer in peers:
                await peer.wait_for_frames(5)  # still streaming
            await peers[0].close()
            await asyncio.sleep(0.5)
            assert not drain.finished.is_set(), "one session still runs"
            await peers[1].wait_for_frames(2)
            await peers[1].close()
            await asyncio.wait_for(drain.finished.wait(), 5)
        finally:
            for peer in peers:
                await peer.close()


async def test_sessions_left_when_the_drain_runs_out_are_closed_with_a_reason_and_a_second_request_stops_at_once(identity_pipeline):
    async with running_server(identity_pipeline, drain_seconds=1) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack())
        try:
            await peer.wait_for_frames(2)
            drain = server.context.drain
            drain.request()
            await asyncio.wait_for(drain.finished.wait(), 10)
            await poll(lambda: any(m.get("type") == "closed" for m in peer.messages), 10, "the closed notice")
            closed = next(m for m in peer.messages if m.get("type") == "closed")
            assert "restarting" in closed["reason"] and "reconnect" in closed["reason"]
            assert not server.context.manager.sessions
        finally:
            await peer.close(delete=False)

    async with running_server(identity_pipeline, drain_seconds=60) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack())
        try:
            await peer.wait_for_frames(2)
            drain = server.context.drain
            drain.request()
            assert not drain.finished.is_set()
            drain.request()  # a second SIGTERM
            assert drain.finished.is_set()
        finally:
            await peer.close()


def test_drain_seconds_must_be_a_sane_number():
    from streamgen.errors import ConfigError
    from streamgen.server.config import ServerConfig

    assert ServerConfig(drain_seconds=0).drain_seconds == 0
    for bad in (-1, float("nan"), 1e9, True):
        with pytest.raises(ConfigError, match="drain_seconds"):
            ServerConfig(drain_seconds=bad)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wait_ready(base: str, process: subprocess.Popen) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(900):  # a cold import of torch on a busy machine
            if process.poll() is not None:
                raise AssertionError(process.stdout.read().decode())
            try:
                async with http.get(base + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the server never became ready")


async def test_sigterm_drains_a_real_server_and_it_exits_after_the_last_session_leaves():
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamgen", "serve", "--model", "identity", "--port", str(port), "--drain-seconds", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    peers = []
    try:
        await _wait_ready(base, process)
        peers = [await connect_offer(base, MarkerVideoTrack()) for _ in range(2)]
        for peer in peers:
            await peer.wait_for_frames(2, timeout=30)
        process.send_signal(signal.SIGTERM)
        async with aiohttp.ClientSession() as http:
            for _ in range(50):
                async with http.get(base + "/readyz") as response:
                    if response.status == 503:
                        break
                await asyncio.sleep(0.1)
            assert response.status == 503
        with pytest.raises(ServerError) as refused:
            await connect_offer(base, MarkerVideoTrack())
        assert refused.value.status == 503 and "draining" in str(refused.value.body)
        for peer in peers:
            await peer.wait_for_frames(5, timeout=30)
        assert process.poll() is None, "running sessions keep the server up"
        for peer in peers:
            await peer.close()
        started = time.monotonic()
        output = await asyncio.get_running_loop().run_in_executor(None, lambda: process.communicate(timeout=30)[0].decode())
        assert time.monotonic() - started < 10
    finally:
        if process.poll() is None:
            process.kill()
        for peer in peers:
            await peer.close(delete=False)
    assert process.returncode == 0, output
    assert "draining" in output and "Traceback" not in output
