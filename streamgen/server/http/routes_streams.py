"""The stream-key endpoints: follow, watch and steer whatever is published to a key now.

- ``GET /api/streams`` (admin token): every key, its current session id
  and its number of live sessions (no secrets).
- ``GET /api/streams/{key}``: ``{"stream", "session", "live_sessions",
  "params", "browser_source"}``: the current (newest live) session as
  ``GET /api/sessions/{id}`` shows it (null while nothing publishes), the
  ids of all the key's live sessions (oldest first), the parameters set
  through the key, and the ``/obs`` URL that follows it (with its follow
  secret after ``#``). The ``/obs`` page polls this to notice a new
  session.
- ``PATCH /api/streams/{key}/params``: live parameters (the schema of
  ``PATCH /api/sessions/{id}/params``) for the current session and the
  key's next ones. With no live session the change is checked against the
  server's defaults and caps, then kept for the next publish. Answer:
  ``{"stream", "session", "params"}``: the current session's id and the
  parameters in force, or null and the kept ones.
- ``POST /whep/streams/{key}``: WHEP playback of the key's current session
  (404 while nothing publishes); ``Location: /whep/{id}/{viewer}``, whose
  ``DELETE`` takes the follow secret too.

Each needs the key's follow secret or the admin token (see
:mod:`streamgen.server.sessions.streams`). Publishing itself is ``POST /whip`` and
``POST /whip/streams/{key}`` (:mod:`streamgen.server.http.routes_webrtc`), which
call :func:`attach_publisher` once the session is open.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from ...errors import ConfigError
from .access import bearer, require_admin, same_secret
from ..context import ServerContext, context
from .sdp_answer import sdp_created
from .http_errors import ForbiddenError, NotFoundError, loggable, read_json_object, read_text, require_content_type
from ..worker.pipelines import params_to_json
from ..sessions.session import Session
from ..sessions.streams import (
    DEFAULT_STREAM,
    STREAM_SECRET_HEADER,
    STREAMS_KEY,
    Stream,
    StreamRegistry,
    binds_loopback,
    browser_source_link,
    browser_source_url,
    parse_stream_key,
    streams,
)

logger = logging.getLogger(__name__)


def _authorized(request: web.Request) -> tuple[ServerContext, Stream]:
    ctx = context(request)
    key = parse_stream_key(request.match_info["key"])
    return ctx, streams(request).authorize(key, bearer(request), ctx.config.token)


def _origin(request: web.Request) -> str:
    """The base URL the client reached this server by (its prefix included; see public_url.py)."""
    base = context(request).public_base(request)
    return base.origin + base.prefix


async def list_streams(request: web.Request) -> web.Response:
    ctx = context(request)
    require_admin(request, ctx.config.token, "listing streams")
    registry = streams(request)
    answer = []
    for stream in registry.all():
        live = registry.live_sessions(stream, ctx.manager.sessions)
        answer.append({"stream": stream.key, "session": live[-1] if live else None, "live_sessions": len(live)})
    return web.json_response({"streams": answer})


async def get_stream(request: web.Request) -> web.Response:
    ctx, stream = _authorized(request)
    registry = streams(request)
    session = registry.current(stream, ctx.manager.sessions)
    return web.json_response(
        {
            "stream": stream.key,
            "session": session.describe() if session is not None else None,
            "live_sessions": registry.live_sessions(stream, ctx.manager.sessions),
            "params": stream.params,
            "browser_source": browser_source_url(_origin(request), stream.key, stream.follow_secret),
        }
    )


async def patch_stream_params(request: web.Request) -> web.Response:
    """Steer the key's current session and its next ones.

    A follow-secret holder steers a session it did not open: it may change
    anything live, but not make a step cost the model more than the
    session was admitted for (nor keep parameters that would make the next
    publish cost more than ``--defaults`` does), so it can neither crowd
    out the server's other sessions nor lock the publisher out with kept
    parameters that admission would refuse. The admin token may do more.
    """
    ctx, stream = _authorized(request)
    operator = ctx.config.token is not None and same_secret(bearer(request), ctx.config.token)
    changes = await read_json_object(request, ctx.config.params_body_bytes, ctx.config.body_timeout)
    session = streams(request).current(stream, ctx.manager.sessions)
    if session is None:
        check_kept_params(ctx, {**stream.params, **changes}, within_defaults=not operator)
        stream.params.update(changes)
        return web.json_response({"stream": stream.key, "session": None, "params": stream.params})
    params = await session.update_params(changes, within_admission=not operator)
    stream.params.update(changes)
    return web.json_response({"stream": stream.key, "session": session.id, "params": params_to_json(params)})


def check_kept_params(ctx: ServerContext, params: dict[str, Any], *, within_defaults: bool = False) -> None:
    """Would a session opened with ``params`` be accepted? (ConfigError → 400 otherwise.)

    Only live parameters may be kept: a key's sessions all have the shape of
    ``--defaults``, whatever was sent through the key. ``within_defaults``:
    also refuse (403) kept parameters that make a step cost more than a
    session of ``--defaults`` alone.
    """
    unknown = sorted(set(params) - set(ctx.live_params))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(map(repr, unknown))}; live parameters: {', '.join(ctx.live_params)}")
    manager = ctx.manager
    pipeline = manager.workers[0].pipeline
    settings = {**ctx.config.default_params, **params}
    shape = pipeline.settings_shape(settings)
    manager.caps.check_shape(shape)
    if within_defaults:
        baseline = pipeline.settings_shape(dict(ctx.config.default_params)).model_work
        asked = shape.model_work
        if asked > baseline:
            raise ForbiddenError(
                f"these parameters would make each step of the stream's next sessions cost the model {asked:g} rows (a ControlNet's rows count half), more than "
                f"the {baseline:g} of the server's defaults; the stream's follow secret may only keep parameters within that"
            )


async def post_stream_whep(request: web.Request) -> web.Response:
    ctx, stream = _authorized(request)
    require_content_type(request, "application/sdp")
    offer = await read_text(request, ctx.config.max_body_bytes, ctx.config.body_timeout)
    session = streams(request).current(stream, ctx.manager.sessions)
    if session is None:
        raise NotFoundError(f"nothing publishes to stream {stream.key!r} now; try again once it does")
    viewer, answer = await ctx.manager.add_viewer(session.id, offer)
    streams(request).add_viewer(stream, viewer.viewer_id, ctx.manager.sessions)
    return sdp_created(request, answer, ctx.public_base(request).path(f"/whep/{session.id}/{viewer.viewer_id}"))


# ------------------------------------------------------------------ publishing
def whip_stream_key(request: web.Request) -> str:
    """The stream key a WHIP request publishes to, after checking it may (``/whip``: ``default``)."""
    ctx = context(request)
    key = parse_stream_key(request.match_info.get("key", DEFAULT_STREAM))
    streams(request).check_publisher(key, bearer(request), ctx.config.token)
    return key


def kept_params(request: web.Request, key: str) -> dict[str, Any]:
    """What a new session of ``key`` starts with over ``--defaults``: the parameters set through the key."""
    stream = streams(request).get(key)
    return dict(stream.params) if stream is not None else {}


async def attach_publisher(request: web.Request, key: str, session: Session) -> dict[str, str]:
    """Make the new WHIP ``session`` the latest of ``key``; returns the headers that tell the publisher how to follow it.

    The first publish to a key logs its browser-source URL once. The URL
    holds the follow secret, so it is logged whole only by a server bound
    to loopback (whoever reads that log is on this machine, where OBS
    runs); otherwise the secret is left out and the line says where to
    find it.
    """
    ctx = context(request)
    registry = streams(request)
    try:
        stream, created = registry.publish(key, session.id, bearer(request), ctx.config.token, ctx.manager.sessions, ctx.client_address(request))
    except BaseException:
        await session.close("refused by its stream key")
        raise
    url = browser_source_url(_origin(request), key, stream.follow_secret)
    if created:
        _log_browser_source(ctx, key, url, stream.follow_secret)
    logger.info("session %s publishes to stream %r", session.id, key)
    return {"Link": browser_source_link(url), STREAM_SECRET_HEADER: stream.follow_secret}


def _log_browser_source(ctx: ServerContext, key: str, url: str, secret: str) -> None:
    if binds_loopback(ctx.config.host):
        logger.info("stream %r: OBS browser source (follows its latest WHIP session): %s", key, loggable(url, 500))
        return
    hidden = loggable(url.replace(secret, "SECRET"), 500)
    logger.info(
        "stream %r: OBS browser source %s, where SECRET is the stream's follow secret (left out of the log of a server "
        "not on loopback): it is in the WHIP answer's Link header and in GET /api/streams/%s (admin token); "
        "or use #stream=%s&token=<the admin token>",
        key, hidden, key, key,
    )


def add_routes(app: web.Application) -> None:
    app[STREAMS_KEY] = StreamRegistry()
    app.router.add_get("/api/streams", list_streams)
    app.router.add_get("/api/streams/{key}", get_stream)
    app.router.add_patch("/api/streams/{key}/params", patch_stream_params)
    app.router.add_post("/whep/streams/{key}", post_stream_whep)
