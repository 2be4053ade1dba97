"""``ServerContext``: what every request handler needs, stored once on the aiohttp app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .config import ServerConfig
from .drain import Drain
from .http.public_url import PublicBase, client_address, public_base
from .metrics import ServerMetrics
from .sessions.manager import SessionManager
from .worker.model_worker import ModelWorker


@dataclass
class ServerContext:
    config: ServerConfig
    manager: SessionManager
    metrics: ServerMetrics
    workers: list[ModelWorker]
    model_name: str
    web_dir: Path | None
    model_kind: str = "image"  # image or video: which parameter schema sessions use
    live_params: tuple[str, ...] = ()  # the live parameters the model takes (the page shows only these)
    drain: Drain | None = None  # SIGTERM's drain (server/drain.py): readiness and admission read it

    def public_base(self, request: web.Request) -> PublicBase:
        """The base of the URLs handed to this request's client (``--public-url``, trusted forwarded headers, or the request)."""
        return public_base(request, self.config.public_url, self.config.trusted_networks)

    def client_address(self, request: web.Request) -> str | None:
        """Who sent ``request`` (through a trusted proxy: the client it forwarded for)."""
        return client_address(request, self.config.trusted_networks)


CONTEXT_KEY: web.AppKey[ServerContext] = web.AppKey("streamgen", ServerContext)


def context(request: web.Request) -> ServerContext:
    return request.app[CONTEXT_KEY]
