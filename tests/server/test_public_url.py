"""URLs the server hands out are right behind a proxy: --public-url, and X-Forwarded-* from trusted proxies only."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamgen.errors import ConfigError
from streamgen.server.config import ServerConfig
from streamgen.server.http.public_url import is_trusted, parse_public_url, parse_trusted_proxies

from .helpers import real_offer_sdp, running_server

FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "studio.example.org", "X-Forwarded-Prefix": "/gpu2"}


def test_public_urls_and_proxy_lists_are_checked():
    assert parse_public_url("https://studio.example.org/gpu2/").url("/obs") == "https://studio.example.org/gpu2/obs"
    assert parse_public_url("http://10.0.0.7:8000").path("/whip/x") == "/whip/x"
    for bad in ("studio.example.org", "ftp://h/", "https://u@h/", "https://h/a?b=1", "https://h/a b", "https://h/#x"):
        with pytest.raises(ConfigError):
            ServerConfig(public_url=bad)
    with pytest.raises(ConfigError, match="trusted_proxies"):
        ServerConfig(trusted_proxies=("10.0.0.300",))
    networks = parse_trusted_proxies(("10.0.0.0/8", "::1"))
    assert is_trusted("10.2.3.4", networks) and is_trusted("::1", networks) and not is_trusted("192.168.1.2", networks)
    assert not is_trusted("not-an-ip", networks) and not is_trusted(None, networks)


@given(st.text(max_size=40))
def test_no_text_breaks_the_public_url_parser(text):
    try:
        base = parse_public_url(text)
    except ConfigError:
        return
    assert base.origin.startswith(("http://", "https://")) and (base.prefix == "" or base.prefix.startswith("/"))
    assert not any(c in base.prefix for c in " ?#\"'<>")


async def _whip(server, headers):
    return await server.request("POST", "/whip/streams/cam", data=await real_offer_sdp(), headers={"Content-Type": "application/sdp", **headers})


async def test_forwarded_headers_count_only_from_a_trusted_proxy(identity_pipeline):
    async with running_server(identity_pipeline) as server:  # no trusted proxies: the headers are a client's claim
        status, _, headers = await _whip(server, FORWARDED)
        assert status == 201 and headers["Location"].startswith("/whip/") and "studio.example.org" not in headers["Link"]
        assert headers["Link"].startswith(f"<{server.base_url}/obs#")

    async with running_server(identity_pipeline, trusted_proxies=("127.0.0.1",)) as server:
        status, _, headers = await _whip(server, FORWARDED)
        assert status == 201 and headers["Location"].startswith("/gpu2/whip/")
        assert headers["Link"].startswith("<https://studio.example.org/gpu2/obs#")
        status, body, _ = await server.request("POST", "/offer", json={"sdp": await real_offer_sdp(), "type": "offer"}, headers=FORWARDED)
        session = body["session_id"]
        assert body["urls"] == {"session": f"/gpu2/api/sessions/{session}", "whep": f"/gpu2/whep/{session}", "watch": f"/gpu2/watch?session={session}"}
        hostile = {"X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "evil.example/<x>", "X-Forwarded-Prefix": "/a/../b"}
        status, _, headers = await _whip(server, hostile)
        assert status == 201 and headers["Location"].startswith("/whip/") and headers["Link"].startswith(f"<{server.base_url}/obs#"), "malformed values are ignored"


async def test_a_public_url_names_this_server_whatever_the_request_says(identity_pipeline):
    async with running_server(identity_pipeline, public_url="https://studio.example.org/gpu2") as server:
        status, _, headers = await _whip(server, {"Host": "studio.example.org"})
        assert status == 201, "the public host passes the Host check"
        assert headers["Location"].startswith("/gpu2/whip/") and headers["Link"].startswith("<https://studio.example.org/gpu2/obs#")
        assert ipaddress.ip_address("127.0.0.1")  # the request came straight, untrusted: --public-url still wins


def test_the_client_behind_a_trusted_proxy_is_the_nearest_untrusted_forwarded_address():
    from aiohttp.test_utils import make_mocked_request

    from streamgen.server.http.public_url import client_address

    trusted = parse_trusted_proxies(("127.0.0.1", "10.0.0.0/8"))

    def ask(remote, forwarded):
        request = make_mocked_request("POST", "/offer", headers={"X-Forwarded-For": forwarded} if forwarded else {})
        request._transport_peername = (remote, 1234)  # noqa: SLF001 - the peer address aiohttp reads
        return client_address(request.clone(remote=remote), trusted)

    assert ask("127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert ask("127.0.0.1", "198.51.100.1, 203.0.113.9, 10.0.0.4") == "203.0.113.9", "a client's own claims left of it are not believed"
    assert ask("192.0.2.7", "203.0.113.9") == "192.0.2.7", "an untrusted peer's header is ignored"
    assert ask("127.0.0.1", "nonsense") == "127.0.0.1" and ask("127.0.0.1", None) == "127.0.0.1"
