"""Two streamgen servers behind real nginx and HAProxy, configured by deploy/: a refused newcomer is retried on the
next server, each session's later calls reach the server that holds it, and one server's death spares the other's."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from streamgen.client.synthetic import MarkerVideoTrack
from streamgen.client.webrtc import connect_offer
from streamgen.pipeline.identity import IdentityPipeline

from .helpers import real_offer_sdp, running_server

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _proxy_command(kind: str, ports: list[int], proxy_port: int, workdir: Path) -> list[str]:
    """The shipped config with only the ports (and nginx's pid and temp paths) swapped, and how to run it in the foreground."""
    if kind == "nginx":
        text = (DEPLOY / "nginx" / "streamgen.conf").read_text()
        temp = "".join(f"    {name}_temp_path {workdir / name};\n" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        text = text.replace("pid /run/streamgen-nginx.pid;", f"pid {workdir / 'nginx.pid'};").replace("http {\n", "http {\n" + temp, 1)
    else:
        text = (DEPLOY / "haproxy" / "streamgen.cfg").read_text()
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{proxy_port}")
    text = text.replace("127.0.0.1:8001", f"127.0.0.1:{ports[0]}").replace("127.0.0.1:8002", f"127.0.0.1:{ports[1]}")
    config = workdir / ("nginx.conf" if kind == "nginx" else "haproxy.cfg")
    config.write_text(text)
    if kind == "nginx":
        return ["nginx", "-c", str(config), "-p", str(workdir), "-g", "daemon off;"]
    return ["haproxy", "-f", str(config), "-db"]


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
async def test_two_servers_behind_a_standard_proxy(kind, tmp_path):
    if shutil.which(kind) is None:
        pytest.skip(f"{kind} is not installed (scripts/test.sh installs it with apt-get when run as root)")
    proxy_port = _free_port()
    proxy = f"http://127.0.0.1:{proxy_port}"
    stack = AsyncExitStack()
    process = None
    peers = []
    try:
        servers = [
            await stack.enter_async_context(running_server(
                IdentityPipeline(), max_sessions=1, public_url=f"{proxy}/s{i}", trusted_proxies=("127.0.0.1",)
            ))
            for i in (1, 2)
        ]
        ports = [int(s.base_url.rsplit(":", 1)[1]) for s in servers]
        process = subprocess.Popen(_proxy_command(kind, ports, proxy_port, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"{proxy}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert process.poll() is None, process.stdout.read().decode()
                await asyncio.sleep(0.1)

            for _ in range(2):  # each server takes one session: the second newcomer is refused by one and retried on the other
                peer = await connect_offer(proxy, MarkerVideoTrack())
                peers.append(peer)
                await peer.wait_for_frames(3, timeout=30)
            holders = [next(i for i, s in enumerate(servers) if p.session_id in s.context.manager.sessions) for p in peers]
            assert sorted(holders) == [0, 1], "the two sessions landed on different servers"
            for peer, holder in zip(peers, holders):
                assert peer.session_path == f"/s{holder + 1}/api/sessions/{peer.session_id}"

            async with http.post(f"{proxy}/offer", json={"sdp": await real_offer_sdp(), "type": "offer"}) as response:
                body = await response.json()
                assert response.status == 503 and "full" in body["error"] and int(response.headers["Retry-After"]) >= 1

            for i, (peer, holder) in enumerate(zip(peers, holders)):
                answer = await peer.update({"seed": 40 + i})  # PATCH through the proxy's /sN/ path
                assert answer["params"]["seed"] == [[40 + i, 1.0]]
                assert servers[holder].context.manager.get(peer.session_id).params["seed"] == [[40 + i, 1.0]], "its own server applied it"

            # free server 1: every newcomer must now end up there, and round robin sends some to server 2 first
            await peers[holders.index(0)].end()
            refused_before = servers[1].context.metrics.sessions_rejected
            for _ in range(4):
                async with http.post(f"{proxy}/offer", json={"sdp": await real_offer_sdp(), "type": "offer"}) as response:
                    assert response.status == 200, await response.text()
                    answer = await response.json()
                assert answer["urls"]["session"].startswith("/s1/") and answer["session_id"] in servers[0].context.manager.sessions
                headers = {"Authorization": f"Bearer {answer['session_secret']}"}
                async with http.delete(proxy + answer["urls"]["session"], headers=headers) as response:
                    assert response.status == 200
            assert servers[1].context.metrics.sessions_rejected > refused_before, "some newcomers were refused by server 2 and retried"

        survivor = peers[holders.index(1)]
        await servers[0].app.shutdown()  # server 1 dies (its sessions close); server 2 goes on
        await survivor.wait_for_frames(5, timeout=30)
    finally:
        for peer in peers:
            await peer.close(delete=False)
        if process is not None:
            process.terminate()
            process.communicate(timeout=10)
        await stack.aclose()
