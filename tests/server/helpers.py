"""A real streamgen server on loopback for tests, plus small HTTP and polling helpers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from streamgen.server import ServerConfig, create_app
from streamgen.server.context import CONTEXT_KEY, ServerContext

ADMIN_TOKEN = "admin-t0ken"  # the --token of tests that run a server with one


def bearer(credential: str | None) -> dict[str, str]:
    """``Authorization`` for the admin token or a session's secret (none for None)."""
    return {"Authorization": f"Bearer {credential}"} if credential is not None else {}


@dataclass
class RunningServer:
    base_url: str
    app: web.Application
    http: aiohttp.ClientSession

    @property
    def context(self) -> ServerContext:
        return self.app[CONTEXT_KEY]

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        """(status, JSON-or-text body, headers) of one request."""
        async with self.http.request(method, self.base_url + path, **kwargs) as response:
            text = await response.text()
            try:
                body = await response.json(content_type=None) if text else None
            except ValueError:
                body = text
            return response.status, body, response.headers


@asynccontextmanager
async def running_server(pipeline: Any, **settings: Any) -> AsyncIterator[RunningServer]:
    """Serve ``pipeline`` (or a list: one per replica) on 127.0.0.1 (a free port) until the block ends.

    With ``tls_self_signed=True`` (or a certificate) it serves HTTPS the way ``streamgen serve`` does; the test's
    HTTP client then skips certificate checks (tests that check the certificate make their own client).
    """
    from streamgen.server.app import tls_context

    settings.setdefault("port", 0)
    config = ServerConfig(**settings)
    app = create_app(config, list(pipeline) if isinstance(pipeline, (list, tuple)) else [pipeline])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls_context(config))
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if config.tls else "http"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False) if config.tls else None) as http:
        try:
            yield RunningServer(f"{scheme}://127.0.0.1:{port}", app, http)
        finally:
            await runner.cleanup()


async def poll(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Wait until ``condition()`` holds, checking every 20 ms; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


def tracebacks(records: list[logging.LogRecord]) -> list[str]:
    """Log records that carry a traceback (user errors must not produce any)."""
    return [f"{r.name}: {r.getMessage()}" for r in records if r.exc_info or "Traceback" in r.getMessage()]


def mean_abs_diff(a: Any, b: Any) -> float:
    return float(abs(a.astype("float32") - b.astype("float32")).mean())


async def real_offer_sdp() -> str:
    """A real aiortc offer SDP with one video section (for tests of what the server checks after the SDP)."""
    from aiortc import RTCPeerConnection  # noqa: PLC0415

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def raw_request(base_url: str, data: bytes, *, whole: bool = False) -> bytes:
    """Send bytes no HTTP client library would send; return the status line (or, ``whole``, everything until close)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await (reader.read() if whole else reader.readline())
    finally:
        writer.close()
