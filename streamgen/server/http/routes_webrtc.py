"""Signalling endpoints: ``POST /offer`` (browser), WHIP ingest and WHEP playback.

- ``POST /offer``: JSON ``{sdp, type: "offer", params, slo}`` → JSON
  ``{sdp, type: "answer", session_id, session_secret}``; the processed video
  returns on the same peer connection. ``slo`` (optional) is
  ``{"deadline_ms", "fps", "min_fps"}`` within the server's limits; a
  session admission control cannot fit is refused with 503 and an
  ``admission`` object giving the numbers.
- ``POST /whip`` (RFC 9725): ``application/sdp`` offer → ``201 Created``,
  the SDP answer (with the server's candidates), ``Location: /whip/{id}``
  and the session's secret in ``X-Session-Secret``; ``DELETE /whip/{id}``
  ends the session. The server does not
  take trickled candidates, so ``PATCH`` answers 405. The session is the
  latest of the stream key ``default``; ``POST /whip/streams/{key}``
  publishes to a named key. The ``201`` also carries the key's follow
  secret (``X-Stream-Secret``) and the ``/obs`` browser-source URL that
  follows the key (``Link: <url>; rel="related"``; see
  :mod:`streamgen.server.sessions.streams`).
- ``POST /whep/{id}``: a viewer's ``application/sdp`` offer → ``201``,
  answer, ``Location: /whep/{id}/{viewer}``; ``DELETE`` on it stops watching.

Creating a session (``/offer``, ``/whip``) needs ``Authorization: Bearer
<token>`` when the server has an admin token; ending it and watching it
need that session's secret or the admin token (:mod:`streamgen.server.http.access`).
A WHIP session also ends with the bearer token that claimed its stream key
on a server without an admin token (OBS's Stop sends it).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from ...errors import InputError
from .access import SESSION_SECRET_HEADER, authorize_session, require_token
from ..context import context
from .http_errors import NotFoundError, read_json_object, read_text, require_content_type
from .routes_streams import attach_publisher, kept_params, whip_stream_key
from .sdp_answer import sdp_created
from ..sessions.streams import streams

OFFER_FIELDS = ("sdp", "type", "params", "slo")


async def post_offer(request: web.Request) -> web.Response:
    ctx = context(request)
    require_token(request, ctx.config.token)
    body = await read_json_object(request, ctx.config.max_body_bytes, ctx.config.body_timeout)
    unknown = sorted(set(body) - set(OFFER_FIELDS))
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(map(repr, unknown))}; an offer has {', '.join(OFFER_FIELDS)}")
    if body.get("type") != "offer":
        raise InputError(f'"type" must be "offer", got {body.get("type")!r}')
    params = body.get("params")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise InputError('"params" must be a JSON object of stream settings and parameters')
    session, answer = await ctx.manager.open("webrtc", body.get("sdp"), params, send_output=True, slo=body.get("slo"), client=ctx.client_address(request))
    base = ctx.public_base(request)
    return web.json_response({
        "sdp": answer, "type": "answer", "session_id": session.id, "session_secret": session.secret,
        # where this session lives (behind a proxy, the path that reaches this server): its later calls go there
        "urls": {"session": base.path(f"/api/sessions/{session.id}"), "whep": base.path(f"/whep/{session.id}"), "watch": base.path(f"/watch?session={session.id}")},
    })


async def post_whip(request: web.Request) -> web.Response:
    ctx = context(request)
    require_token(request, ctx.config.token)
    key = whip_stream_key(request)
    require_content_type(request, "application/sdp")
    offer = await read_text(request, ctx.config.max_body_bytes, ctx.config.body_timeout)
    session, answer = await ctx.manager.open("whip", offer, kept_params(request, key), send_output=False, client=ctx.client_address(request))
    follow = await attach_publisher(request, key, session)
    return sdp_created(request, answer, ctx.public_base(request).path(f"/whip/{session.id}"), {SESSION_SECRET_HEADER: session.secret, **follow})


async def delete_whip(request: web.Request) -> web.Response:
    ctx = context(request)
    also = streams(request).publisher_secret_of
    session = authorize_session(request, ctx.manager, ctx.config.token, request.match_info["session_id"], also)
    await session.close("ended by the publisher (WHIP DELETE)")
    return web.Response(status=200)


async def post_whep(request: web.Request) -> web.Response:
    ctx = context(request)
    session = authorize_session(request, ctx.manager, ctx.config.token, request.match_info["session_id"])
    require_content_type(request, "application/sdp")
    offer = await read_text(request, ctx.config.max_body_bytes, ctx.config.body_timeout)
    viewer, answer = await ctx.manager.add_viewer(session.id, offer)
    return sdp_created(request, answer, ctx.public_base(request).path(f"/whep/{session.id}/{viewer.viewer_id}"))


async def delete_whep(request: web.Request) -> web.Response:
    ctx = context(request)
    also = streams(request).viewer_secret(request.match_info["viewer_id"])  # a viewer of POST /whep/streams/{key} leaves with the key's follow secret
    session = authorize_session(request, ctx.manager, ctx.config.token, request.match_info["session_id"], also)
    if not await session.remove_viewer(request.match_info["viewer_id"]):
        raise NotFoundError(f"session {session.id} has no viewer {request.match_info['viewer_id']!r}")
    return web.Response(status=200)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/offer", post_offer)
    app.router.add_post("/whip", post_whip)
    app.router.add_post("/whip/streams/{key}", post_whip)
    app.router.add_delete("/whip/{session_id}", delete_whip)
    app.router.add_post("/whep/{session_id}", post_whep)
    app.router.add_delete("/whep/{session_id}/{viewer_id}", delete_whep)
