"""``201 Created`` with an SDP answer: what WHIP and WHEP answer, the same way everywhere."""

from __future__ import annotations

import secrets

from aiohttp import web

from ..context import context


def sdp_created(request: web.Request, answer: str, location: str, headers: dict[str, str] | None = None) -> web.Response:
    """The SDP answer with its resource's ``Location`` (cross-origin pages read it through :mod:`.cors`).

    The ICE servers go along as ``Link: <turn:...>; rel="ice-server"`` headers (the WHIP/WHEP convention, RFC 9725),
    with this client's own TURN credentials: a WHIP or WHEP client behind a strict NAT can relay its media.
    """
    response = web.Response(status=201, text=answer, content_type="application/sdp", headers={"Location": location, **(headers or {})})
    for link in context(request).config.ice.link_headers(f"client-{secrets.token_hex(4)}"):
        response.headers.add("Link", link)
    return response
