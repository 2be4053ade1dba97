"""The session API, health and metrics.

- ``GET /api/sessions`` → ``{"sessions": [...]}``; ``GET /api/sessions/{id}``
  → one session (``id``, ``kind``, ``connection``, ``params``, ``stats``,
  ``viewers``).
- ``PATCH /api/sessions/{id}/params``: a JSON object of live parameters, the
  same schema as the ``control`` data channel's ``params`` messages; it is
  validated at once (400 with the reason) and applied at the next step.
- ``DELETE /api/sessions/{id}`` ends a session.
- ``GET /health`` and ``GET /metrics`` (Prometheus text): open to anyone
  who reaches the server; ``/metrics`` names sessions only when the operator
  asks (``--metrics-sessions``).

Listing needs the admin token; one session's endpoints need its secret or
the admin token (see :mod:`streamgen.server.http.access`).
"""

from __future__ import annotations

from aiohttp import web

from ...errors import InputError

from .access import authorize_session, bearer, require_admin
from ..context import context
from .http_errors import read_json_object
from .routes_lifecycle import capacity
from ..metrics import render_metrics
from ..worker.pipelines import no_input_mode, params_to_json
from ..sessions.session import Session


async def list_sessions(request: web.Request) -> web.Response:
    ctx = context(request)
    require_admin(request, ctx.config.token, "listing sessions")
    return web.json_response({"sessions": ctx.manager.describe_all()})


async def get_session(request: web.Request) -> web.Response:
    return web.json_response(_authorized(request).describe())


async def patch_params(request: web.Request) -> web.Response:
    ctx = context(request)
    session = _authorized(request)
    changes = await read_json_object(request, ctx.config.params_body_bytes, ctx.config.body_timeout)
    params = await session.update_params(changes)
    return web.json_response({"id": session.id, "params": params_to_json(params)})


async def get_control_image(request: web.Request) -> web.Response:
    """The control image a session's ControlNet read at its latest step, as a small JPEG (the page's inset); 204 before the first."""
    session = _authorized(request)
    text = request.match_info["index"]
    if not text.isdigit() or len(text) > 2:
        raise InputError(f"a ControlNet is addressed by its position (0, 1, ...), got {text[:20]!r}")
    jpeg = await session.control_preview(int(text))
    if jpeg is None:
        return web.Response(status=204, headers={"Cache-Control": "no-store"})
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def delete_session(request: web.Request) -> web.Response:
    """End a session. Idempotent for its owner: a session that already ended (its peer closed a moment
    before, as a page's Stop does both at once) answers 200 with why, not an error; others still get 404/401."""
    ctx = context(request)
    session_id = request.match_info["session_id"]
    given = bearer(request)
    if session_id not in ctx.manager.sessions and given is not None:
        reason = ctx.manager.ended_with_secret(session_id, given)
        if reason is not None:
            return web.json_response({"id": session_id, "closed": True, "already": reason})
    session = _authorized(request)
    await session.close("ended through the API (DELETE)")
    return web.json_response({"id": session.id, "closed": True})


def _authorized(request: web.Request) -> Session:
    ctx = context(request)
    return authorize_session(request, ctx.manager, ctx.config.token, request.match_info["session_id"])


async def health(request: web.Request) -> web.Response:
    ctx = context(request)
    return web.json_response(
        {
            "status": "ok",
            "model": ctx.model_name,
            "kind": ctx.model_kind,
            "params": list(ctx.live_params),
            "no_input": no_input_mode(ctx.workers[0].pipeline),  # what a session with no source asks for (the page's "No input")
            "sessions": len(ctx.manager.sessions),
            "max_sessions": ctx.config.max_sessions,
            "codecs": list(ctx.config.codecs),
            "token_required": ctx.config.token is not None,
            "caps": ctx.manager.caps.to_json(),
            "slo": {
                "deadline_ms": ctx.config.slo_ms,
                "min_fps": ctx.config.min_fps,
                "max_fps": ctx.config.max_fps,
                "deadline_ms_range": [ctx.config.min_slo_ms, ctx.config.max_slo_ms],
            },
            "capacity": capacity(ctx),
            "workers": [w.describe() for w in ctx.workers],
            "steering": ctx.workers[0].describe_steering(),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    ctx = context(request)
    samples = [s.sample() for s in ctx.manager.sessions.values()]
    text = render_metrics(ctx.metrics, samples, ctx.model_name, session_labels=ctx.config.metrics_session_labels)
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_get("/api/sessions/{session_id}", get_session)
    app.router.add_patch("/api/sessions/{session_id}/params", patch_params)
    app.router.add_delete("/api/sessions/{session_id}", delete_session)
    app.router.add_get("/api/sessions/{session_id}/controlnets/{index}/image", get_control_image)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
