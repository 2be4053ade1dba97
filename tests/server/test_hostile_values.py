"""Values built to break parsers get a 4xx that says what was wrong, never a traceback (HTTP and control channel)."""

from __future__ import annotations

import json
import logging
import re

import pytest

from streamgen.config import is_finite_number
from streamgen.errors import ConfigError
from streamgen.params import parse_params
from streamgen.server.webrtc.control import ControlError, parse_message

from .helpers import ADMIN_TOKEN, bearer, raw_request, real_offer_sdp, running_server, tracebacks


def test_huge_integers_are_not_finite_numbers():
    assert not is_finite_number(10**400)
    with pytest.raises(ConfigError, match="strength"):
        parse_params({"strength": 10**400})


def test_a_lone_surrogate_in_a_prompt_is_refused():
    with pytest.raises(ConfigError, match="lone UTF-16 surrogate at position 1"):
        parse_params({"prompt": "a\ud800b"})


def test_control_channel_refuses_deep_nesting_and_huge_ids():
    with pytest.raises(ControlError, match="nested too deeply"):
        parse_message('{"type": "params", "params": ' + "[" * 5000 + "]" * 5000 + "}")
    assert parse_message('{"type": "ping", "id": ' + "9" * 401 + "}")["id"] is None


async def test_hostile_http_bodies_and_headers(identity_pipeline, caplog):
    caplog.set_level(logging.INFO)
    async with running_server(identity_pipeline, token="secret") as server:
        auth = {"Authorization": "Bearer secret"}
        deep = "[" * 5000 + "]" * 5000
        sdp = await real_offer_sdp()
        cases = [
            ({"data": '{"sdp": "v=0", "type": "offer", "params": ' + deep + "}", "headers": {**auth, "Content-Type": "application/json"}}, 400, "nested too deeply"),
            ({"json": {"sdp": "v=0", "type": "offer", "params": []}, "headers": auth}, 400, '"params" must be a JSON object'),
            ({"json": {"sdp": sdp, "type": "offer", "params": {"strength": 10**400}}, "headers": auth}, 400, "strength"),
            ({"json": {"sdp": sdp, "type": "offer", "params": {"mode": "txt2img", "strength": 0.5}}, "headers": auth}, 400, "strength applies to img2img"),
        ]
        for kwargs, status, words in cases:
            got, body, _ = await server.request("POST", "/offer", **kwargs)
            assert got == status, (got, body)
            assert words in body["error"], body
        host = server.base_url.removeprefix("http://").encode()
        status_line = await raw_request(server.base_url, b"GET /api/sessions HTTP/1.1\r\nHost: " + host + b"\r\nAuthorization: Bearer secret\xff\r\nConnection: close\r\n\r\n")
        assert status_line.startswith(b"HTTP/1.1 401"), status_line
        assert tracebacks(caplog.records) == []


async def test_static_misses_are_json_and_paths_stay_inside_the_client(identity_pipeline):
    async with running_server(identity_pipeline) as server:
        status, body, headers = await server.request("GET", "/static/nope.js")
        assert status == 404 and body == {"error": "no file /static/nope.js"}
        for path in ("/static/%2e%2e/README.md", "/static/..%2f..%2fpyproject.toml", "/static/"):
            status, body, _ = await server.request("GET", path)
            assert status == 404 and "error" in body, (path, status, body)


async def test_a_path_cannot_forge_log_lines(identity_pipeline, caplog):
    caplog.set_level(logging.INFO)
    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server:
        status, _, _ = await server.request("GET", "/api/sessions/x%0aFAKE%20LINE%1b[31m", headers=bearer(ADMIN_TOKEN))
        assert status == 404
    lines = [r.getMessage() for r in caplog.records if "FAKE" in r.getMessage()]
    assert lines and all("\n" not in line and "\x1b" not in line for line in lines)
    assert any("\\x0aFAKE" in line for line in lines)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda sdp: re.sub(r"^m=video \d+ ", "m=video 0 ", sdp, flags=re.M), "port 0"),
        (lambda sdp: sdp.replace("a=mid:1", "a=mid:0"), "appear in more than one section"),
        (lambda sdp: sdp.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 0 1"), "names '0' twice"),
        (lambda sdp: sdp.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 7"), "'7' that no section has"),
    ],
)
async def test_offers_with_disabled_video_or_inconsistent_media_ids_are_refused(change, words):
    from aiortc import RTCPeerConnection

    from streamgen.errors import InputError
    from streamgen.server.webrtc.peer import parse_offer

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video")
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
    finally:
        await pc.close()
    parse_offer(sdp)
    with pytest.raises(InputError, match=words):
        parse_offer(change(sdp))


@pytest.mark.parametrize(
    "data",
    [
        b"BREW / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"b" * 9000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",  # TLS on the HTTP port
    ],
)
async def test_malformed_http_gets_json_and_no_traceback(identity_pipeline, caplog, data):
    caplog.set_level(logging.DEBUG)
    async with running_server(identity_pipeline) as server:
        answer = await raw_request(server.base_url, data, whole=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b" 400 " in head.split(b"\r\n")[0] and b"application/json" in head, head
    assert json.loads(body)["error"].startswith("bad HTTP request")
    assert tracebacks(caplog.records) == []


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def test_json_that_parses_but_nests_past_the_limit_is_refused_where_it_is_parsed():
    from streamgen.server.http.json_limits import MAX_JSON_DEPTH, json_depth

    assert json_depth(json.loads(_nested(900))) == MAX_JSON_DEPTH + 1  # counted without recursion, and no further than needed
    with pytest.raises(ControlError, match="nested too deeply: more than 32 levels") as refused:
        parse_message('{"type": "params", "id": 7, "params": {"prompt": ' + _nested(900) + "}}")
    assert refused.value.message_id == 7
    assert parse_message('{"type": "params", "params": {"prompt": [["a", 0.5], ["b", 0.5]]}}')["type"] == "params"


async def test_values_deep_enough_to_break_formatting_get_a_4xx_and_no_traceback(identity_pipeline, caplog):
    caplog.set_level(logging.INFO)
    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server:
        sdp = await real_offer_sdp()
        body = '{"type": "offer", "sdp": ' + json.dumps(sdp) + ', "params": {"prompt": ' + _nested(900) + "}}"
        status, answer, _ = await server.request("POST", "/offer", data=body, headers={**bearer(ADMIN_TOKEN), "Content-Type": "application/json"})
        assert status == 400 and "nested too deeply" in answer["error"]
    assert tracebacks(caplog.records) == []


async def test_static_names_with_odd_bytes_or_absurd_lengths_are_404_not_500(identity_pipeline, caplog):
    caplog.set_level(logging.INFO)
    async with running_server(identity_pipeline) as server:
        for path in ("/static/%00", "/static/a%00b.js", "/static/" + "a" * 5000, "/static/" + "x/" * 600 + "y", "/static/%ff%fe.js", "/static/%1b[31m.js"):
            status, body, _ = await server.request("GET", path)
            assert status == 404 and "error" in body, (path[:40], status)
        status, _, headers = await server.request("GET", "/static/app.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert tracebacks(caplog.records) == []


async def test_a_client_that_never_reads_is_closed_after_the_send_timeout(identity_pipeline, caplog):
    """Pipelined requests for the page, never read: the server's writes back up, and the connection goes after send_timeout."""
    import asyncio
    import socket

    caplog.set_level(logging.INFO)
    async with running_server(identity_pipeline, send_timeout=1.0, keepalive_timeout=60.0) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = f"GET /static/app.js HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        try:
            for _ in range(400):  # far more response bytes than the kernel's buffers hold
                sock.sendall(request)
            deadline = asyncio.get_running_loop().time() + 15
            while not any("did not read its response" in r.getMessage() for r in caplog.records):
                assert asyncio.get_running_loop().time() < deadline, "the slow reader was never closed"
                await asyncio.sleep(0.2)
            status, _, _ = await server.request("GET", "/health")
            assert status == 200
        finally:
            sock.close()
    assert tracebacks(caplog.records) == []


HOSTILE_SEGMENTS = ["%00", "a%00b", "x" * 3000, "%ff%fe", "%1b[31m", "..%2f..", "%e2%80%ae", "%f0%9f%92%a9" * 50]
ROUTES = [
    ("GET", "/api/sessions/{}"), ("PATCH", "/api/sessions/{}/params"), ("DELETE", "/api/sessions/{}"),
    ("GET", "/api/streams/{}"), ("PATCH", "/api/streams/{}/params"), ("POST", "/whep/streams/{}"),
    ("POST", "/whip/streams/{}"), ("DELETE", "/whip/{}"), ("POST", "/whep/{}"), ("DELETE", "/whep/{}/{}"),
]


async def test_every_route_answers_hostile_path_segments_with_a_json_4xx_and_no_traceback(identity_pipeline, caplog):
    caplog.set_level(logging.DEBUG)
    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server:
        for method, template in ROUTES:
            for segment in HOSTILE_SEGMENTS:
                path = template.format(segment, segment)
                kwargs = {"headers": {**bearer(ADMIN_TOKEN), "Content-Type": "application/json"}, "data": "{}"}
                status, body, _ = await server.request(method, path, **kwargs)
                assert 400 <= status < 500 and isinstance(body, dict) and "error" in body, (method, path[:60], status, body)
        status, _, _ = await server.request("GET", "/health")
        assert status == 200
    assert tracebacks(caplog.records) == []
    assert all("\x1b" not in r.getMessage() and "\x00" not in r.getMessage() for r in caplog.records)


async def test_clients_that_leave_during_a_file_send_leave_no_traceback(identity_pipeline, caplog):
    import asyncio
    import socket

    caplog.set_level(logging.DEBUG)
    async with running_server(identity_pipeline) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        for path in ("/", "/static/app.js", "/static/style.css", "/watch"):
            for _ in range(5):
                sock = socket.create_connection((host, int(port)))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close with a reset
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode() * 20)
                sock.close()
        await asyncio.sleep(0.5)
        status, _, _ = await server.request("GET", "/static/app.js")
        assert status == 200
    assert tracebacks(caplog.records) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
