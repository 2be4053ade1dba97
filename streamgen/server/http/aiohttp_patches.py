"""aiohttp's answer to malformed HTTP, made like every other error here: one JSON line, one log line.

When a client sends bytes aiohttp's parser rejects (a request line over
8 KB, an unknown method, a header that is not HTTP), aiohttp answers
``text/plain`` and logs the parser's traceback at ERROR: any client could
fill the log with tracebacks. :func:`install_json_parse_errors` wraps
``RequestHandler.handle_error`` so that such *client* errors get a JSON
``{"error": ...}`` body and one escaped INFO line; server errors (500) keep
aiohttp's own handling and traceback. A client that went away while its
request was handled (a body dropped half-sent) is not a server error
either: it is ignored (debug log), as aiohttp ignores one that leaves
between requests.

:func:`install_connection_guards` bounds what a slow or idle client can
hold, for the servers whose application carries :data:`LIMITS_KEY`
(:func:`streamgen.server.create_app` puts the config's values there; other
aiohttp servers in the process are left alone):

- *headers*: from the first byte of a request, its headers must be in
  within ``header_timeout`` seconds, else the client gets ``408`` JSON, the
  connection is closed and one INFO line is logged (aiohttp itself has no
  such limit: a client sending a byte a second held a connection forever);
- *idle*: a connection with no request in flight is closed after
  ``keepalive_timeout`` seconds (aiohttp's keep-alive timer, which also
  runs from the moment a connection opens), silently;
- *bodies*: handlers read them with a timeout
  (:func:`streamgen.server.http.http_errors.read_text`, ``408``); aiohttp's
  "lingering" read of a body a handler left unread is capped at
  ``body_timeout`` too;
- *connections*: beyond ``max_connections`` open ones, a new connection
  gets ``503`` JSON and is closed at once (logged at most every few
  seconds, with a count);
- *slow readers*: a response whose bytes back up because the client does
  not read them (asyncio pauses the protocol's writing) may stay backed up
  for ``send_timeout`` seconds; then the connection is aborted, with one
  INFO line. Without this, clients that never read held their connections
  forever and could fill ``max_connections``.

All installed once, idempotent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError

from .http_errors import loggable

logger = logging.getLogger(__name__)

_MARK = "_streamgen_json_parse_errors"


def install_json_parse_errors() -> None:
    original = web_protocol.RequestHandler.handle_error
    if getattr(original, _MARK, False):
        return

    def handle_error(self: Any, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, ConnectionError) and (self.transport is None or self._force_close):
            # the client left mid-request (e.g. mid-body): nobody to answer and nothing to log;
            # start() ignores a ConnectionError as a premature disconnection
            logger.debug("client %s went away during %s %s", request.remote, request.method, loggable(request.path))
            raise ConnectionError("the client went away") from None
        if not isinstance(exc, HttpProcessingError) or status >= 500:
            return original(self, request, status, exc, message)
        detail = loggable(str(getattr(exc, "message", "") or exc).strip().splitlines()[0] if str(exc).strip() else "malformed request", 160)
        logger.info("bad HTTP request from %s -> %d: %s", request.remote, status, detail)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; cannot send the error")
        response = web.json_response({"error": f"bad HTTP request: {detail}"}, status=status)
        response.force_close()
        return response

    setattr(handle_error, _MARK, True)
    web_protocol.RequestHandler.handle_error = handle_error


# ------------------------------------------------------------------ connection guards
@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may hold (see module docstring); from :class:`~streamgen.server.config.ServerConfig`."""

    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int
    send_timeout: float = 10.0


LIMITS_KEY: web.AppKey[ConnectionLimits] = web.AppKey("streamgen_connection_limits", ConnectionLimits)
_GUARD_MARK = "_streamgen_connection_guards"
REFUSAL_LOG_SECONDS = 10.0


@dataclass
class _Guard:
    limits: ConnectionLimits
    header_timer: asyncio.TimerHandle | None = None
    send_timer: asyncio.TimerHandle | None = None


_guards: dict[Any, _Guard] = {}  # RequestHandler -> its guard (the class has __slots__); dropped on connection_lost
_refused = {"count": 0, "logged_at": -1e9}


def raw_json_response(status: int, message: str, extra_headers: str = "") -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response, for when no aiohttp request exists to answer."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra_headers}\r\n"
    )
    return head.encode("latin-1") + body


def _limits_of(handler: Any) -> ConnectionLimits | None:
    app = getattr(getattr(handler, "_request_handler", None), "__self__", None)  # the Server's handler is app._handle
    return app.get(LIMITS_KEY) if isinstance(app, web.Application) else None


def _idle(handler: Any) -> bool:
    """The handler waits for the head of its next request (none queued, none in flight)."""
    waiter = handler._waiter
    return waiter is not None and not waiter.done() and not handler._messages


def _peer(handler: Any) -> str:
    transport = handler.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "unknown"


def _close_with(handler: Any, status: int, message: str, extra_headers: str = "") -> None:
    transport = handler.transport
    if transport is not None and not transport.is_closing():
        try:
            transport.write(raw_json_response(status, message, extra_headers))
        except Exception:  # noqa: BLE001 - the client may already be gone; closing is what matters
            pass
    handler.force_close()


def _on_header_timeout(handler: Any, guard: _Guard) -> None:
    guard.header_timer = None
    if handler.transport is None or handler._force_close or not _idle(handler):
        return
    seconds = guard.limits.header_timeout
    logger.info("closed a connection from %s: its request headers did not arrive within %g s", _peer(handler), seconds)
    _close_with(handler, 408, f"the request headers did not arrive within {seconds:g} s")


def _on_send_timeout(handler: Any, guard: _Guard) -> None:
    guard.send_timer = None
    transport = handler.transport
    if transport is None or transport.is_closing():
        return
    logger.info("closed a connection from %s: it did not read its response for %g s", _peer(handler), guard.limits.send_timeout)
    transport.abort()


def _refuse(handler: Any, limits: ConnectionLimits) -> None:
    _refused["count"] += 1
    now = time.monotonic()
    if now - _refused["logged_at"] >= REFUSAL_LOG_SECONDS:
        logger.warning("refused %d connection(s): %d are open, the most this server takes (--max-connections)", _refused["count"], limits.max_connections)
        _refused["count"], _refused["logged_at"] = 0, now
    _close_with(handler, 503, f"the server has {limits.max_connections} open connections, its limit; try again later", "Retry-After: 5\r\n")


def install_connection_guards() -> None:
    cls = web_protocol.RequestHandler
    if getattr(cls.connection_made, _GUARD_MARK, False):
        return
    original_made, original_lost, original_data = cls.connection_made, cls.connection_lost, cls.data_received
    original_pause, original_resume = cls.pause_writing, cls.resume_writing

    def connection_made(self: Any, transport: Any) -> None:
        limits = _limits_of(self)
        if limits is None:
            return original_made(self, transport)
        self._keepalive_timeout = limits.keepalive_timeout  # read by the keep-alive timer and start(), both set up below
        self._lingering_time = min(self._lingering_time, limits.body_timeout)
        original_made(self, transport)
        manager = self._manager
        if manager is not None and len(manager.connections) > limits.max_connections:
            _refuse(self, limits)
            return
        _guards[self] = _Guard(limits)

    def connection_lost(self: Any, exc: BaseException | None) -> None:
        guard = _guards.pop(self, None)
        if guard is not None:
            for timer in (guard.header_timer, guard.send_timer):
                if timer is not None:
                    timer.cancel()
        original_lost(self, exc)

    def pause_writing(self: Any) -> None:
        original_pause(self)
        guard = _guards.get(self)
        if guard is not None and guard.send_timer is None:
            guard.send_timer = self._loop.call_later(guard.limits.send_timeout, _on_send_timeout, self, guard)

    def resume_writing(self: Any) -> None:
        guard = _guards.get(self)
        if guard is not None and guard.send_timer is not None:
            guard.send_timer.cancel()
            guard.send_timer = None
        original_resume(self)

    def data_received(self: Any, data: bytes) -> None:
        guard = _guards.get(self) if data else None
        if guard is None:
            return original_data(self, data)
        was_idle = _idle(self)
        original_data(self, data)
        if self._messages or not _idle(self):  # a request head is complete (or the handler is busy): no header clock
            if guard.header_timer is not None:
                guard.header_timer.cancel()
                guard.header_timer = None
        elif was_idle and guard.header_timer is None and not self._force_close:
            guard.header_timer = self._loop.call_later(guard.limits.header_timeout, _on_header_timeout, self, guard)

    for fn in (connection_made, connection_lost, data_received, pause_writing, resume_writing):
        setattr(fn, _GUARD_MARK, True)
    cls.connection_made = connection_made  # type: ignore[method-assign]
    cls.connection_lost = connection_lost  # type: ignore[method-assign]
    cls.data_received = data_received  # type: ignore[method-assign]
    cls.pause_writing = pause_writing  # type: ignore[method-assign]
    cls.resume_writing = resume_writing  # type: ignore[method-assign]

