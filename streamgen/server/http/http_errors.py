"""Every HTTP error is JSON ``{"error": "..."}`` with a status that says whose fault it is.

User mistakes are :class:`~streamgen.errors.StreamgenError` subclasses and are
answered without a logged traceback: 400 for bad parameters or SDP, 401 for
a missing/wrong credential (see :mod:`streamgen.server.http.access`), 403 for
what no credential allows, 404 for an unknown session, 413 for an oversized
body, 415 for a wrong content type, 408 for a body that did not arrive
within the body timeout (the connection is then closed), 503 when the server is full
(:class:`~streamgen.errors.CapacityError`). aiohttp's own HTTP errors (404 of
an unknown route, 405, 413 from ``client_max_size``) are rewritten as JSON
too. Anything else is a bug: aiohttp logs it and answers 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ...errors import CapacityError, StreamgenError
from .json_limits import too_deep

logger = logging.getLogger(__name__)


class NotFoundError(StreamgenError):
    """The named session (or viewer) does not exist (any more)."""


class UnauthorizedError(StreamgenError):
    """The request lacks the credential it needs (the admin token or a session's secret).

    ``invalid``: a credential was sent but is not the right one (``error="invalid_token"``, RFC 6750).
    """

    def __init__(self, message: str, *, invalid: bool = False) -> None:
        super().__init__(message)
        self.invalid = invalid


class ForbiddenError(StreamgenError):
    """No credential the caller could send would be enough (listing sessions on a server without an admin token)."""


class UnsupportedMediaTypeError(StreamgenError):
    """The request body has the wrong content type."""


class BodyTooLargeError(StreamgenError):
    """The request body is over the server's limit."""


class RequestTimeoutError(StreamgenError):
    """The client did not send its request body within the body timeout."""


STATUS_BY_ERROR: tuple[tuple[type[StreamgenError], int], ...] = (
    (RequestTimeoutError, 408),
    (CapacityError, 503),
    (NotFoundError, 404),
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (UnsupportedMediaTypeError, 415),
    (BodyTooLargeError, 413),
)


def status_for(error: StreamgenError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 400


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Turn user errors and aiohttp's HTTP errors into JSON (see module docstring)."""
    try:
        return await handler(request)
    except StreamgenError as error:
        status = status_for(error)
        logger.info("%s %s -> %d: %s", request.method, loggable(request.path), status, loggable(str(error)))
        headers = {"WWW-Authenticate": www_authenticate(error)} if isinstance(error, UnauthorizedError) else None
        if status == 503:
            headers = {"Retry-After": str(getattr(error, "retry_after", 5))}
        details = getattr(error, "details", None)
        if details:
            return web.json_response({"error": str(error), "admission": details}, status=status, headers=headers)
        response = json_error(status, str(error), headers)
        if status == 408:
            response.force_close()
        return response
    except RecursionError:  # a value built deep enough to break a recursive walk (formatting, validation): the client's doing
        logger.info("%s %s -> 400: a value nested too deeply to handle", request.method, loggable(request.path))
        return json_error(400, "a value in the request is nested too deeply to handle")
    except web.HTTPException as error:
        if error.status < 400 or error.content_type == "application/json":
            raise
        message = _http_error_message(error)
        logger.info("%s %s -> %d: %s", request.method, loggable(request.path), error.status, message)
        headers = {k: v for k, v in error.headers.items() if k.lower() in ("allow", "www-authenticate")}
        return json_error(error.status, message, headers)


def www_authenticate(error: UnauthorizedError) -> str:
    return 'Bearer realm="streamgen", error="invalid_token"' if error.invalid else 'Bearer realm="streamgen"'


def loggable(text: str, limit: int = 200) -> str:
    """Text from a client made safe for one log line: control characters (newlines, ANSI escapes) escaped, length capped.

    A request path with ``%0a`` or ``\x1b[`` would otherwise forge log lines or repaint a terminal.
    """
    safe = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


def _http_error_message(error: web.HTTPException) -> str:
    if error.status == 413:
        return "request body is too large"
    if error.status == 404:
        return "not found"
    if error.status == 405:
        allowed = error.headers.get("Allow", "")
        return f"method not allowed (allowed: {allowed})" if allowed else "method not allowed"
    return error.reason or f"HTTP {error.status}"


def require_content_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        got = request.content_type or "none"
        raise UnsupportedMediaTypeError(f"the body must be {expected}, got {got}")


async def read_text(request: web.Request, limit: int, timeout: float | None = None) -> str:
    """The body as UTF-8 text, within ``limit`` bytes and, when given, ``timeout`` seconds (else 408, connection closed)."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLargeError(f"request body is too large: {request.content_length} bytes; the limit is {limit}")
    try:
        async with asyncio.timeout(timeout):
            data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLargeError(f"request body is larger than the limit of {limit} bytes") from None
    except TimeoutError:
        _stop_lingering(request)
        raise RequestTimeoutError(f"the request body did not arrive within {timeout:g} s") from None
    if len(data) > limit:
        raise BodyTooLargeError(f"request body is too large: {len(data)} bytes; the limit is {limit}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidBodyError("request body is not valid UTF-8") from None


class InvalidBodyError(StreamgenError):
    """The body cannot be read as the JSON or SDP it should be."""


def _stop_lingering(request: web.Request) -> None:
    """Answer and close without first reading what is left of the body (aiohttp would, for up to its lingering time)."""
    protocol = request.protocol
    if protocol is not None and hasattr(protocol, "_lingering_time"):
        protocol._lingering_time = 0.0


async def read_json_object(request: web.Request, limit: int, timeout: float | None = None) -> dict[str, Any]:
    """A JSON object body (``application/json``), NaN and Infinity refused."""
    require_content_type(request, "application/json")
    text = await read_text(request, limit, timeout)
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as error:
        raise InvalidBodyError(f"request body is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidBodyError("request body is nested too deeply") from None
    deep = too_deep(value)
    if deep is not None:
        raise InvalidBodyError(f"request body is {deep}")
    if not isinstance(value, dict):
        raise InvalidBodyError(f"request body must be a JSON object, got {type(value).__name__}")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")
