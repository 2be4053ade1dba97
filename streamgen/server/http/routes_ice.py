"""``GET /api/ice``: the STUN/TURN servers a client should use, with its own TURN credentials.

The page, ``/watch`` and ``/obs`` ask for it before they create their peer
connection (WHIP/WHEP clients get the same as ``Link`` headers on the
answer). TURN credentials are worth something (a relay's bandwidth), so on a
server with ``--token`` the request needs a credential the client would
have anyway: the admin token, a live session's secret (a watch link) or a
stream's follow secret (an OBS browser source). Without ``--token`` anyone
who reaches the port may open sessions, so the answer is open like them.
Each answer under ``--turn-secret`` carries fresh credentials that expire
after ``--turn-ttl`` (see :mod:`streamgen.server.webrtc.ice_servers`).
"""

from __future__ import annotations

import secrets

from aiohttp import web

from ..context import context
from ..sessions.streams import streams
from .access import bearer, same_secret
from .http_errors import UnauthorizedError


async def get_ice(request: web.Request) -> web.Response:
    ctx = context(request)
    token = ctx.config.token
    if token is not None and not _holds_a_credential(request, token):
        raise UnauthorizedError(
            "the ICE servers (with TURN credentials) need the admin token, a session's secret or a stream's follow secret: "
            "send 'Authorization: Bearer <it>'",
            invalid=bearer(request) is not None,
        )
    return web.json_response(ctx.config.ice.client_config(f"client-{secrets.token_hex(4)}"), headers={"Cache-Control": "no-store"})


def _holds_a_credential(request: web.Request, token: str) -> bool:
    given = bearer(request)
    if given is None:
        return False
    ctx = context(request)
    if same_secret(given, token):
        return True
    if any(same_secret(given, session.secret) for session in ctx.manager.sessions.values()):
        return True
    return any(same_secret(given, stream.follow_secret) for stream in streams(request).all())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/ice", get_ice)
