"""What the server shows, and to whom: the Host check (DNS rebinding), CORS, and /metrics without session ids."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from streamgen.errors import ConfigError
from streamgen.client.webrtc import connect_offer, whip_publish
from streamgen.server.http.cors import CorsPolicy, parse_origin
from streamgen.server.http.host_check import HostRules, parse_host
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import bearer, poll, raw_request, running_server

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
HOST_NAMES = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
PORTS = st.integers(1, 65535)


def with_port(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


# ------------------------------------------------------------------ Host rules
@given(name=HOST_NAMES, port=st.none() | PORTS)
def test_a_loopback_server_answers_loopback_names_on_any_port_and_nothing_else(name, port):
    rules = HostRules.for_server("127.0.0.1", ())
    for served in ("localhost", "127.0.0.1", "[::1]", "LocalHost", "localhost."):
        assert rules.allows(with_port(served, port)), served
    assume(name not in ("localhost", "127.0.0.1"))
    assert not rules.allows(with_port(name, port))
    assert not rules.allows(with_port(f"localhost.{name}", port))


@given(address=st.ip_addresses(), port=st.none() | PORTS, name=HOST_NAMES)
def test_a_server_on_every_interface_answers_ip_literals_and_listed_names_only(address, port, name):
    literal = f"[{address}]" if address.version == 6 else str(address)
    for bind in ("0.0.0.0", "::"):
        rules = HostRules.for_server(bind, ("studio.lan",))
        assert rules.allows(with_port(literal, port))
        assert rules.allows(with_port("localhost", port)) and rules.allows(with_port("studio.lan", port))
        assume(name not in ("localhost", "studio.lan") and not _is_ip(name))
        assert not rules.allows(with_port(name, port)), "a name (what DNS rebinding needs) must be listed"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


@given(port=PORTS)
def test_allowed_hosts_with_and_without_a_port(port):
    rules = HostRules.for_server("192.168.1.5", ("studio.lan", "example.org:8443", "::1"))
    assert rules.allows(with_port("192.168.1.5", port)) and rules.allows(with_port("studio.lan", port))
    assert rules.allows(with_port("[::1]", port))
    assert rules.allows("example.org:8443") and (port == 8443) == rules.allows(f"example.org:{port}")
    assert not rules.allows("localhost") and not rules.allows("127.0.0.1"), "not bound to loopback"
    assert not rules.allows("10.0.0.1"), "a specific bind does not answer other addresses"


@pytest.mark.parametrize("header", ["", " ", "localhost:abc", "localhost:0", "localhost:65536", "[::1", "[::1]x", "::1", "[nonsense]", "a b", "evil.example/x", "user@localhost", "localhost:80:80"])
def test_malformed_hosts_are_refused(header):
    assert not HostRules.for_server("127.0.0.1", ()).allows(header)
    with pytest.raises(ValueError):
        parse_host(header)


@given(header=st.text(max_size=40))
def test_star_answers_every_host(header):
    assert HostRules.for_server("127.0.0.1", ("*",)).allows(header)


def test_ipv6_hosts_are_compared_as_addresses():
    rules = HostRules.for_server("::1", ())
    assert rules.allows("[::1]:8000") and rules.allows("[0:0:0:0:0:0:0:1]") and rules.allows("localhost:8000")
    assert HostRules.for_server("fe80::1", ()).allows("[fe80::1%25eth0]:8000")
    assert not rules.allows("[::2]:8000")


async def test_requests_to_another_host_get_421_naming_allowed_hosts(identity_pipeline):
    async with running_server(identity_pipeline, allowed_hosts=("studio.lan",)) as server:
        port = server.base_url.rsplit(":", 1)[1]
        for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "studio.lan:9999", "STUDIO.LAN"):
            status, body, _ = await server.request("GET", "/health", headers={"Host": host})
            assert status == 200 and body["status"] == "ok", host
        for host, hint in (("evil.example", "--allowed-hosts evil.example"), (f"evil.example:{port}", "--allowed-hosts evil.example"), ("localhost:x", "malformed")):
            for path in ("/health", "/", "/metrics", "/api/sessions", "/offer"):
                status, body, headers = await server.request("GET", path, headers={"Host": host})
                assert status == 421 and headers["Content-Type"].startswith("application/json"), (host, path)
                assert hint in body["error"], body
        assert (await raw_request(server.base_url, b"GET /health HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 421"), "no Host at all"


# ------------------------------------------------------------------------ CORS
STUDIO = "https://studio.example.org"


async def test_cors_answers_an_allowed_origin_and_nobody_else(identity_pipeline):
    async with running_server(identity_pipeline, cors_origins=(STUDIO,)) as server:
        publisher = await whip_publish(server.base_url, MarkerVideoTrack())
        try:
            for path, method in (("/whip", "POST"), (f"/whip/{publisher.session_id}", "DELETE"), (f"/whip/{publisher.session_id}", "PATCH"), ("/whep/x", "POST"), ("/api/sessions/x/params", "PATCH"), ("/api/sessions", "GET")):
                preflight = {"Origin": STUDIO, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": "authorization,content-type"}
                status, _, headers = await server.request("OPTIONS", path, headers=preflight)
                assert status == 204, (path, method)
                assert headers["Access-Control-Allow-Origin"] == STUDIO and "Origin" in headers["Vary"]
                assert method in headers["Access-Control-Allow-Methods"]
                assert {"authorization", "content-type"} <= {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
                assert int(headers["Access-Control-Max-Age"]) > 0

                status, body, headers = await server.request("OPTIONS", path, headers={**preflight, "Origin": "https://evil.example"})
                assert status == 403 and "--cors-origins" in body["error"] and "Access-Control-Allow-Origin" not in headers

            # the real requests: answers (errors too) carry the headers for the allowed origin only
            secret = bearer(publisher.secret)
            status, body, headers = await server.request("PATCH", f"/whip/{publisher.session_id}", data=b"a=end-of-candidates", headers={"Origin": STUDIO, "Content-Type": "application/trickle-ice-sdpfrag", **secret})
            assert status == 405 and headers["Access-Control-Allow-Origin"] == STUDIO, "the page can read the 405"
            status, body, headers = await server.request("GET", f"/api/sessions/{publisher.session_id}", headers={"Origin": STUDIO})
            assert status == 401 and headers["Access-Control-Allow-Origin"] == STUDIO
            for origin in ("https://evil.example", "null", "http://studio.example.org"):
                status, _, headers = await server.request("GET", "/health", headers={"Origin": origin})
                assert status == 200 and "Access-Control-Allow-Origin" not in headers and "Access-Control-Expose-Headers" not in headers
                assert "Origin" in headers["Vary"]
        finally:
            await publisher.close()

        # a WHIP publisher in a page of the allowed origin reads Location and its secret
        offer_track = MarkerVideoTrack()
        async with server.http.post(server.base_url + "/whip", data=(await _whip_offer(offer_track)).encode(), headers={"Origin": STUDIO, "Content-Type": "application/sdp"}) as response:
            assert response.status == 201
            exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
            assert {"Location", "X-Session-Secret", "Link"} <= exposed and response.headers["Access-Control-Allow-Origin"] == STUDIO
            session_id = response.headers["Location"].rsplit("/", 1)[1]
        await server.context.manager.get(session_id).close("test over")


async def _whip_offer(track) -> str:
    from aiortc import RTCPeerConnection  # noqa: PLC0415

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver(track, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def test_without_cors_origins_cross_origin_preflights_are_refused(identity_pipeline):
    async with running_server(identity_pipeline) as server:
        status, body, headers = await server.request("OPTIONS", "/offer", headers={"Origin": STUDIO, "Access-Control-Request-Method": "POST"})
        assert status == 403 and f"--cors-origins {STUDIO}" in body["error"] and "Access-Control-Allow-Origin" not in headers
        status, _, headers = await server.request("GET", "/health", headers={"Origin": STUDIO})
        assert status == 200 and not [h for h in headers if h.lower().startswith("access-control-")]


@given(scheme=st.sampled_from(["http", "https"]), host=HOST_NAMES, port=st.none() | PORTS)
def test_only_listed_origins_are_allowed(scheme, host, port):
    policy = CorsPolicy((STUDIO, "http://localhost:3000"))
    origin = f"{scheme}://{with_port(host, port)}"
    listed = parse_origin(origin) in (STUDIO, "http://localhost:3000")
    assert policy.allows(origin) == listed
    assert CorsPolicy(("*",)).allows(origin)
    assert not CorsPolicy(()).allows(origin)


def test_origins_are_compared_as_browsers_serialise_them():
    policy = CorsPolicy(("https://Studio.Example.org:443/",))
    assert policy.allows(STUDIO) and policy.allows("https://studio.example.org:443")
    assert not policy.allows("https://studio.example.org:8443") and not policy.allows("http://studio.example.org")
    assert not CorsPolicy(("*",)).allows("null"), "anyone can be null (sandboxed frames, file:// pages)"
    for bad in ("studio.example.org", "ftp://x.org", "https://x.org/app", "https://user@x.org", "null"):
        with pytest.raises(ConfigError):
            parse_origin(bad)


# --------------------------------------------------------------------- metrics
async def test_metrics_carry_no_session_ids_unless_asked(identity_pipeline):
    async with running_server(identity_pipeline) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack())
        try:
            await peer.wait_for_frames(5)
            await poll(lambda: server.context.manager.get(peer.session_id).stats.frames_output >= 5, 10, "server-side output count")
            _, text, _ = await server.request("GET", "/metrics")
            assert peer.session_id not in text and 'session="' not in text
            assert "streamgen_sessions_active 1" in text and "streamgen_session_" not in text
            received = _value(text, "streamgen_frames_received_total")
            assert received >= 5 and _value(text, "streamgen_frames_output_total") >= 5 and _value(text, "streamgen_input_fps") >= 0
        finally:
            await peer.close()
        await poll(lambda: not server.context.manager.sessions, 10, "the session to end")
        _, text, _ = await server.request("GET", "/metrics")
        assert "streamgen_sessions_active 0" in text
        assert _value(text, "streamgen_frames_received_total") >= received, "a server-wide counter never goes down when a session ends"


def _value(text: str, name: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])
