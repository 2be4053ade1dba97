"""Two streamgen servers behind real nginx and HAProxy, configured by deploy/: a refused newcomer is retried on the
next server, each session's later calls reach the server that holds it, and one server's death spares the other's."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from streamgen.client.synthetic import MarkerVideoTrack
from streamgen.client.webrtc import connect_offer
from streamgen.pipeline.identity import IdentityPipeline

from .helpers import poll, real_offer_sdp, running_server
from .test_browser import CHROMIUM, CHROMIUM_FLAGS

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


@asynccontextmanager
async def proxied_servers(kind: str, workdir: Path, max_sessions: int = 1) -> AsyncIterator[tuple[str, list]]:
    """Two identity servers behind the shipped ``kind`` config: yields the proxy's URL and the servers."""
    if shutil.which(kind) is None:
        pytest.skip(f"{kind} is not installed (scripts/test.sh installs it with apt-get when run as root)")
    proxy_port = _free_port()
    proxy = f"http://127.0.0.1:{proxy_port}"
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(running_server(
                IdentityPipeline(), max_sessions=max_sessions, public_url=f"{proxy}/s{i}", trusted_proxies=("127.0.0.1",)
            ))
            for i in (1, 2)
        ]
        ports = [int(s.base_url.rsplit(":", 1)[1]) for s in servers]
        process = subprocess.Popen(_proxy_command(kind, ports, proxy_port, workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
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
            yield proxy, servers
        finally:
            process.terminate()
            process.communicate(timeout=10)


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
async def test_two_servers_behind_a_standard_proxy(kind, tmp_path):
    peers = []
    async with proxied_servers(kind, tmp_path) as (proxy, servers), aiohttp.ClientSession() as http:
        try:
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


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium")
async def test_the_page_works_through_the_proxy_at_its_root_and_under_a_servers_prefix(tmp_path):
    """Relative page URLs and the session's own URLs: the page streams and stops through nginx, at / and at /s2/."""
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright Python package is not installed")
    async with proxied_servers("nginx", tmp_path, max_sessions=2) as (proxy, servers), playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            for path, expected in (("/", None), ("/s2/", 1)):
                page = await browser.new_page()
                await page.goto(proxy + path)
                await page.wait_for_function("document.getElementById('model').textContent.includes('identity')", timeout=20_000)
                await page.click("#start")
                await page.wait_for_function("window.streamgen.outputFrames > 3", timeout=60_000)
                session_id = await page.evaluate("window.streamgen.sessionId")
                holder = next(i for i, s in enumerate(servers) if session_id in s.context.manager.sessions)
                assert expected is None or holder == expected, "a page under /s2/ opens its session on server 2"
                watch = await page.get_attribute("#watch-url", "href")
                assert watch.startswith(f"{proxy}/s{holder + 1}/watch?session={session_id}#secret="), "the watch link names the session's server"
                await page.click("#stop")
                await poll(lambda: session_id not in servers[holder].context.manager.sessions, 20, "Stop to end the session on its server")
                await page.close()
        finally:
            await browser.close()
