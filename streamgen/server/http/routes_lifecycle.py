"""``/livez`` and ``/readyz``: what an orchestrator's probes and a load balancer ask.

- ``GET /livez``: the process and its event loop answer (200). A liveness
  probe that fails restarts the server, so it checks nothing a restart
  would not fix: not the load, not a drain.
- ``GET /readyz``: 200 when a newcomer would be served here: the model is
  loaded and every replica's threads run, the server is not draining
  (:mod:`streamgen.server.drain`), a session place is free and admission
  control predicts that a session of the default settings fits on some
  replica. Otherwise 503 with every reason. A readiness probe that fails
  only takes the server out of rotation, so load belongs here.

Both are open to anyone, like ``/health``: they reveal no session, secret or
parameter. :func:`capacity` is the numbers ``/health`` shows too.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...sched import HEADROOM
from ..context import ServerContext, context


async def livez(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    ctx = context(request)
    reasons = not_ready_reasons(ctx)
    body = {"status": "ready" if not reasons else "not ready", "reasons": reasons, "capacity": capacity(ctx)}
    return web.json_response(body, status=200 if not reasons else 503, headers=None if not reasons else {"Retry-After": "5"})


def not_ready_reasons(ctx: ServerContext) -> list[str]:
    """Why a newcomer would not be served here now (empty: ready)."""
    reasons = []
    if ctx.drain is not None and ctx.drain.draining:
        reasons.append("draining for a restart")
    dead = [w.name for w in ctx.workers if not w.alive]
    if dead:
        reasons.append(f"model worker(s) not running: {', '.join(dead)}")
    sessions, limit = len(ctx.manager.sessions), ctx.config.max_sessions
    if sessions >= limit:
        reasons.append(f"full: {sessions} of {limit} sessions")
    elif not dead and not ctx.manager.default_session_fits():
        reasons.append("admission control predicts no room for a session of the default settings")
    return reasons


def capacity(ctx: ServerContext) -> dict[str, Any]:
    """Sessions, the admitted load per replica (model seconds per second) and the headroom admission still sees."""
    loads = [round(w.utilization(), 3) for w in ctx.workers]
    return {
        "sessions": len(ctx.manager.sessions),
        "max_sessions": ctx.config.max_sessions,
        "admitted_load": loads,
        "predicted_headroom": [round(max(0.0, HEADROOM - load), 3) for load in loads],
        "draining": bool(ctx.drain is not None and ctx.drain.draining),
        "drain_seconds_left": round(ctx.drain.left_s(), 1) if ctx.drain is not None and ctx.drain.draining else None,
    }


def add_routes(app: web.Application) -> None:
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
