"""CORS: which other web origins may call the server from a browser (``--cors-origins``).

By default none: the browser pages the server itself serves are
same-origin and need no CORS. An origin on the allowlist gets, on every
answer (errors too), ``Access-Control-Allow-Origin`` echoing it,
``Vary: Origin`` and ``Access-Control-Expose-Headers: Location,
X-Session-Secret, X-Stream-Secret, Link`` (WHIP/WHEP clients read those), and its preflight
``OPTIONS`` is answered ``204`` with the methods the API uses (``GET``,
``POST``, ``PATCH``, ``DELETE``), the headers it reads (``Authorization``,
``Content-Type``) and ``Access-Control-Max-Age``. A method a route does not
take still gets its ``405`` on the real request (``PATCH /whip/{id}``: the
server takes no trickled candidates), readable by the page.

Any other origin gets no CORS headers, so the browser keeps its page from
reading the answers, and its preflight is refused with ``403`` JSON naming
``--cors-origins``. CORS only tells browsers what to allow; every request
still needs its credentials (see :mod:`streamgen.server.http.access`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import web

from ...errors import ConfigError
from .http_errors import json_error, loggable

logger = logging.getLogger(__name__)

ANY_ORIGIN = "*"
ALLOW_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type"
EXPOSE_HEADERS = "Location, X-Session-Secret, X-Stream-Secret, Link"
MAX_AGE_SECONDS = 600
DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(text: str) -> str:
    """An origin as browsers send it (``scheme://host[:port]``, lower case, default port left out); ConfigError if it is not one."""
    hint = "an origin is scheme://host[:port], e.g. https://studio.example.org or http://localhost:3000"
    try:
        parts = urlsplit(text.strip().removesuffix("/"))
        port = parts.port
    except ValueError:
        raise ConfigError(f"cors_origins: {text!r} is not an origin; {hint}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"cors_origins: {text!r} is not an origin; {hint}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    suffix = "" if port is None or port == DEFAULT_PORTS[parts.scheme] else f":{port}"
    return f"{parts.scheme}://{host}{suffix}"


def parse_origins(entries: Iterable[str]) -> frozenset[str]:
    """``--cors-origins`` entries (``*`` aside) → normalised origins."""
    return frozenset(parse_origin(e) for e in entries if e != ANY_ORIGIN)


class CorsPolicy:
    """The allowlist (see module docstring)."""

    def __init__(self, entries: Iterable[str]) -> None:
        entries = tuple(entries)
        self.any_origin = ANY_ORIGIN in entries
        self.origins = parse_origins(entries)

    @property
    def enabled(self) -> bool:
        return self.any_origin or bool(self.origins)

    def allows(self, origin: str) -> bool:
        """``null`` (file:// pages, sandboxed frames: anyone can be ``null``) and malformed origins never are."""
        try:
            normalised = parse_origin(origin)
        except ConfigError:
            return False
        return self.any_origin or normalised in self.origins


def cors(policy: CorsPolicy) -> Callable:
    """The middleware (see module docstring)."""

    @web.middleware
    async def apply_cors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin is not None and "Access-Control-Request-Method" in request.headers:
            return _preflight(request, policy, origin)
        allowed = origin is not None and policy.allows(origin)
        try:
            response = await handler(request)
        except web.HTTPException as error:  # the few aiohttp answers json_errors lets through (redirects)
            _decorate(error, policy, origin if allowed else None)
            raise
        _decorate(response, policy, origin if allowed else None)
        return response

    return apply_cors


def _preflight(request: web.Request, policy: CorsPolicy, origin: str) -> web.StreamResponse:
    if not policy.allows(origin):
        shown = loggable(origin, 80)
        logger.info("OPTIONS %s -> 403: origin %s is not allowed", loggable(request.path), shown)
        message = f"cross-origin requests from {shown!r} are not allowed"
        try:
            message += f"; start the server with --cors-origins {parse_origin(origin)} to allow them"
        except ConfigError:  # "null" and malformed origins can never be allowed
            pass
        return json_error(403, message, {"Vary": "Origin"})
    if isinstance(request.match_info.http_exception, web.HTTPNotFound):
        response = json_error(404, "not found")
    else:
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = str(MAX_AGE_SECONDS)
    _decorate(response, policy, origin)
    return response


def _decorate(response: web.StreamResponse, policy: CorsPolicy, origin: str | None) -> None:
    """CORS headers for an allowed ``origin`` (None: none); ``Vary: Origin`` whenever the answer depends on it."""
    if policy.enabled:
        vary = response.headers.get("Vary")
        if vary is None:
            response.headers["Vary"] = "Origin"
        elif "origin" not in vary.lower():
            response.headers["Vary"] = f"{vary}, Origin"
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
