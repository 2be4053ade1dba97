"""aiohttp's answer to malformed HTTP, made like every other error here: one JSON line, one log line.

When a client sends bytes aiohttp's parser rejects (a request line over
8 KB, an unknown method, a header that is not HTTP), aiohttp answers
``text/plain`` and logs the parser's traceback at ERROR: any client could
fill the log with tracebacks. :func:`install_json_parse_errors` wraps
``RequestHandler.handle_error`` so that such *client* errors get a JSON
``{"error": ...}`` body and one escaped INFO line; server errors (500) keep
aiohttp's own handling and traceback. Installed once, idempotent.
"""

from __future__ import annotations

import logging
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
