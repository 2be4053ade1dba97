"""Slow, idle and vanishing HTTP clients: bounded by timeouts, answered 408 where possible, one log line, no traceback.

Every client here talks raw bytes over a loopback socket, with short
configured timeouts (~1 s), and every loop stops by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from .helpers import running_server, tracebacks

FAST = {"header_timeout": 1.0, "body_timeout": 1.0, "keepalive_timeout": 2.0}
ABOUT = 2.0  # what the bound may overshoot on a busy 2-core machine


def port_of(server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


async def open_raw(server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port_of(server))


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float, limit: float) -> float:
    """Send ``data`` a byte every ``every`` s until the server closes (or ``limit`` s pass); returns when it stopped."""
    started = time.monotonic()
    for byte in data:
        if writer.is_closing() or time.monotonic() - started > limit:
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except (ConnectionError, OSError):
            break
        await asyncio.sleep(every)
    return time.monotonic() - started


async def read_until_closed(reader: asyncio.StreamReader, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when that happened."""
    started = time.monotonic()
    received = b""
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                received += chunk
    except (ConnectionError, OSError):
        pass
    return received, time.monotonic() - started


def status_and_body(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def test_headers_sent_a_byte_at_a_time_get_408_and_a_closed_connection_within_the_bound(identity_pipeline, caplog):
    caplog.set_level(logging.INFO)
    async with running_server(identity_pipeline, **FAST) as server:
        reader, writer = await open_raw(server)
        request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
        sender = asyncio.ensure_future(trickle(writer, request, 0.2, 10.0))
        raw, closed_after = await read_until_closed(reader, 10.0)
        await sender
        writer.close()
        assert closed_after < FAST["header_timeout"] + ABOUT
        status, body = status_and_body(raw)
        assert status == 408 and "headers did not arrive within 1 s" in body["error"]
        await asyncio.sleep(0.1)
    lines = [r for r in caplog.records if "did not arrive" in r.getMessage()]
    assert len(lines) == 1 and not tracebacks(caplog.records)


async def test_a_slow_offer_body_gets_408_and_a_closed_connection_within_the_bound(identity_pipeline, caplog):
    caplog.set_level(logging.INFO)
    async with running_server(identity_pipeline, **FAST) as server:
        reader, writer = await open_raw(server)
        body = json.dumps({"type": "offer", "sdp": "v=0\r\n" + "a" * 400}).encode()
        writer.write(b"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        sender = asyncio.ensure_future(trickle(writer, body, 0.2, 10.0))
        raw, closed_after = await read_until_closed(reader, 10.0)
        await sender
        writer.close()
        assert closed_after < FAST["body_timeout"] + ABOUT
        status, answer = status_and_body(raw)
        assert status == 408 and "body did not arrive within 1 s" in answer["error"]
        assert b"Connection: close" in raw
        await asyncio.sleep(0.1)
    assert len([r for r in caplog.records if "did not arrive" in r.getMessage()]) == 1
    assert not tracebacks(caplog.records)


async def test_a_body_dropped_half_sent_logs_no_traceback(identity_pipeline, caplog):
    caplog.set_level(logging.DEBUG)
    async with running_server(identity_pipeline, **FAST) as server:
        for _ in range(5):
            _, writer = await open_raw(server)
            writer.write(b"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"sdp\": ")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.transport.abort()  # a reset, as a killed client's kernel sends
        await asyncio.sleep(0.3)
        status, _, _ = await server.request("GET", "/health")
        assert status == 200
    assert not tracebacks(caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_idle_connections_are_closed_after_the_keepalive_timeout(identity_pipeline, caplog):
    caplog.set_level(logging.INFO)
    async with running_server(identity_pipeline, **FAST) as server:
        started = time.monotonic()
        idle = [await open_raw(server) for _ in range(20)]
        used_reader, used_writer = await open_raw(server)  # one that made a request first: its idle clock starts after the answer
        used_writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await used_writer.drain()
        results = await asyncio.gather(*(read_until_closed(r, 10.0) for r, _ in idle), read_until_closed(used_reader, 10.0))
        for _, writer in [*idle, (None, used_writer)]:
            writer.close()
        assert all(raw == b"" for raw, _ in results[:-1])
        assert results[-1][0].startswith(b"HTTP/1.1 200")
        assert time.monotonic() - started < FAST["keepalive_timeout"] + ABOUT
        assert len(server.context.manager.sessions) == 0
    assert not tracebacks(caplog.records) and not [r for r in caplog.records if "connection" in r.getMessage().lower() and r.levelno >= logging.INFO]


async def test_connections_beyond_the_cap_get_503_and_are_closed(identity_pipeline, caplog):
    caplog.set_level(logging.INFO)
    async with running_server(identity_pipeline, max_connections=3, **FAST) as server:
        held = [await open_raw(server) for _ in range(3)]
        await asyncio.sleep(0.1)
        extra = [await open_raw(server) for _ in range(4)]
        answers = await asyncio.gather(*(read_until_closed(r, 5.0) for r, _ in extra))
        for raw, closed_after in answers:
            status, body = status_and_body(raw)
            assert status == 503 and "open connections" in body["error"] and closed_after < 1.0
        for _, writer in held + extra:
            writer.close()
        await asyncio.sleep(0.3)  # the held ones are gone: connections are accepted again
        status, _, _ = await server.request("GET", "/health")
        assert status == 200
    refusals = [r for r in caplog.records if "refused" in r.getMessage() and "--max-connections" in r.getMessage()]
    assert len(refusals) == 1 and not tracebacks(caplog.records)
