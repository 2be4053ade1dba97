"""TURN with a real coturn on loopback (TURN REST credentials from a shared secret): relay-only clients, an aiortc
one and headless Chromium, stream through it; wrong credentials end in a clear failed state, not a hang."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from streamgen.client.synthetic import MarkerVideoTrack
from streamgen.client.webrtc import NoRelayError, connect_offer, fetch_ice
from streamgen.errors import ConfigError
from streamgen.server.config import ServerConfig
from streamgen.server.webrtc.ice_servers import IcePolicy, turn_rest_credentials

from .helpers import running_server
from .test_browser import CHROMIUM, CHROMIUM_FLAGS

SECRET = "turn-shared-s3cret"
TURNSERVER = shutil.which("turnserver") or ("/usr/bin/turnserver" if shutil.os.path.exists("/usr/bin/turnserver") else None)


def test_turn_rest_credentials_are_coturns_scheme():
    username, credential = turn_rest_credentials("secret", "alice", 600, now=1_700_000_000)
    assert username == "1700000600:alice" and credential == "5PrY1fcLQr5jls8N4ZU7fEnmVNE="  # openssl dgst -sha1 -hmac secret -binary | base64


def test_ice_settings_are_checked_together():
    with pytest.raises(ConfigError, match="needs credentials"):
        ServerConfig(ice_servers=("turn:turn.example.org:3478",))
    with pytest.raises(ConfigError, match="not a STUN/TURN URL"):
        ServerConfig(ice_servers=("http://turn.example.org",))
    with pytest.raises(ConfigError, match="transport= applies"):
        ServerConfig(ice_servers=("stun:h:3478?transport=udp",))
    with pytest.raises(ConfigError, match="not both"):
        ServerConfig(ice_servers=("turn:h",), ice_username="u", ice_credential="p", turn_secret="s")
    with pytest.raises(ConfigError, match="needs a TURN server"):
        ServerConfig(ice_transport_policy="relay")
    policy = IcePolicy(("stun:s.example.org", "turns:t.example.org:443?transport=tcp"), "u", 'p"q')
    assert policy.client_config() == {
        "iceServers": [{"urls": ["stun:s.example.org"]}, {"urls": ["turns:t.example.org:443?transport=tcp"], "username": "u", "credential": 'p"q'}],
        "iceTransportPolicy": "all",
    }
    assert policy.link_headers()[1] == '<turns:t.example.org:443?transport=tcp>; rel="ice-server"; username="u"; credential="p\\"q"; credential-type="password"'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def coturn() -> AsyncIterator[tuple[str, list[str]]]:
    """A coturn on loopback with TURN REST auth; yields its URL and, once stopped, its log lines."""
    if TURNSERVER is None:
        pytest.skip("coturn is not installed (scripts/test.sh installs it with apt-get when run as root)")
    port = _free_port()
    process = subprocess.Popen(
        [TURNSERVER, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}", "--relay-ip=127.0.0.1",
         "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=streamgen.test", "--no-tls", "--no-dtls",
         "--allow-loopback-peers", "--no-cli", "--log-file=stdout", "--simple-log", "-v"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    log: list[str] = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # listening once it answers a UDP binding request... or simply after its start line
            await asyncio.sleep(0.2)
            if process.poll() is not None:
                raise AssertionError(process.stdout.read().decode())
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    break  # taken: coturn listens
        yield f"turn:127.0.0.1:{port}?transport=udp", log
    finally:
        process.terminate()
        log.extend(process.communicate(timeout=15)[0].decode(errors="replace").splitlines())


async def test_a_relay_only_aiortc_client_streams_through_turn_and_bad_credentials_fail_clearly(identity_pipeline):
    async with coturn() as (url, log):
        async with running_server(identity_pipeline, ice_servers=(url,), turn_secret=SECRET, ice_transport_policy="relay") as server:
            ice = await fetch_ice(server.base_url)
            assert ice["iceTransportPolicy"] == "relay" and ice["iceServers"][0]["urls"] == [url]
            username = ice["iceServers"][0]["username"]
            assert int(username.split(":")[0]) > time.time(), "a credential that expires, TURN REST style"
            other = await fetch_ice(server.base_url)
            assert other["iceServers"][0]["username"] != username, "every client its own credential"

            peer = await connect_offer(server.base_url, MarkerVideoTrack(), ice=ice)
            try:
                frames = await peer.wait_for_frames(10, timeout=60)
                assert len(frames) == 10
                local = peer.pc.getTransceivers()[0].sender.transport.transport.iceGatherer.getLocalCandidates()
                assert local and {c.type for c in local} == {"relay"}, "relay-only: no host candidate was offered"
            finally:
                await peer.close(delete=False)

            wrong = {**ice, "iceServers": [{**ice["iceServers"][0], "credential": "not-the-secret="}]}
            started = time.monotonic()
            with pytest.raises(NoRelayError, match="refused the credentials"):
                await connect_offer(server.base_url, MarkerVideoTrack(), ice=wrong)
            assert time.monotonic() - started < 30, "a clear failure, not a hang"
            await asyncio.sleep(0.5)
            assert not server.context.manager.sessions, "nothing was offered: no session waits for a peer that cannot come"
    # the client offered relayed candidates only and received frames: its media can only have gone through this relay
    allocations = [line for line in log if "ALLOCATE processed, success" in line and f"<{username}>" in line]
    assert allocations, "the client's allocation on the TURN server"
    assert any("ALLOCATE" in line and "401" in line or "Unauthorized" in line for line in log), "coturn refused the wrong credential"


async def test_whip_and_whep_answers_announce_the_ice_servers(identity_pipeline):
    from .helpers import real_offer_sdp

    async with running_server(identity_pipeline, ice_servers=("stun:stun.example.org", "turn:turn.example.org:3478"), turn_secret="s") as server:
        status, _, headers = await server.request(
            "POST", "/whip", data=await real_offer_sdp(), headers={"Content-Type": "application/sdp"}
        )
        assert status == 201
        links = headers.getall("Link")
        assert '<stun:stun.example.org>; rel="ice-server"' in links
        turn = next(link for link in links if link.startswith("<turn:turn.example.org:3478>"))
        assert 'rel="ice-server"' in turn and 'username="' in turn and 'credential-type="password"' in turn


async def test_ice_servers_need_a_credential_on_a_server_with_a_token(identity_pipeline):
    async with running_server(identity_pipeline, token="admin-t0ken", ice_servers=("turn:turn.example.org",), turn_secret="s") as server:
        status, _, _ = await server.request("GET", "/api/ice")
        assert status == 401
        status, body, _ = await server.request("GET", "/api/ice", headers={"Authorization": "Bearer admin-t0ken"})
        assert status == 200 and body["iceServers"][0]["username"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium")
async def test_headless_chromium_relay_only_streams_through_turn(identity_pipeline, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright Python package is not installed")
    async with coturn() as (url, log):
        async with running_server(identity_pipeline, ice_servers=(url,), turn_secret=SECRET, ice_transport_policy="relay") as server, \
                playwright_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
            )
            try:
                page = browser.pages[0] if browser.pages else await browser.new_page()
                await page.goto(server.base_url + "/")
                await page.click("#start")
                await page.wait_for_function("window.streamgen.outputFrames > 5", timeout=60_000)
                assert await page.evaluate("window.streamgen.iceTransportPolicy") == "relay"
                await page.click("#stop")
            finally:
                await browser.close()
    relayed = [line for line in log if "ALLOCATE processed, success" in line and "client-" in line]
    assert relayed, "the browser allocated a relay on the TURN server"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium")
async def test_the_page_says_so_when_no_relay_can_be_opened(identity_pipeline, tmp_path):
    """Relay-only with credentials the TURN server refuses: the page shows why at once instead of waiting to connect."""
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright Python package is not installed")
    async with coturn() as (url, _log):
        async with running_server(identity_pipeline, ice_servers=(url,), turn_secret="not-the-turn-servers-secret", ice_transport_policy="relay") as server, \
                playwright_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
            )
            try:
                page = browser.pages[0] if browser.pages else await browser.new_page()
                await page.goto(server.base_url + "/")
                started = time.monotonic()
                await page.click("#start")
                await page.wait_for_selector("#error:not([hidden])", timeout=60_000)
                assert "no relay could be opened" in await page.text_content("#error")
                assert time.monotonic() - started < 45 and not server.context.manager.sessions
            finally:
                await browser.close()
