"""Build the aiohttp application and run it.

:func:`create_app` wires a loaded pipeline (one per replica) to the HTTP
routes; tests call it with a pipeline they share between servers.
:func:`run_server` is what ``streamgen serve`` runs: load the model, build
the app, serve until interrupted.

At start-up the app applies streamgen's aiortc settings (jitter buffer,
encoder bitrate; see :mod:`streamgen.server.webrtc.aiortc_patches`), starts one
:class:`~streamgen.server.worker.model_worker.ModelWorker` per replica and warms each up
with a few steps of streams built from the default settings (one stream,
then two batched), so the first session does not pay for lazy
initialisation, bad ``--defaults`` fail at start, not at the first client,
and the scheduler's latency model starts from two measured batch sizes
instead of a guess. At shutdown it closes every session and stops the
workers without waiting for a step in flight.

Every connection is bounded first (header, body and idle timeouts, a cap
on open connections; :mod:`~streamgen.server.http.aiohttp_patches`). Every
request passes, outermost first: the ``Host`` check
(:mod:`~streamgen.server.http.host_check`), CORS (:mod:`~streamgen.server.http.cors`)
and the JSON error answers (:mod:`~streamgen.server.http.http_errors`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import torch
from aiohttp import web

from ..pipeline.contract import Capabilities, StepShape
from ..runtime.compile_artifacts import save_all_compile_artifacts
from .http.aiohttp_patches import LIMITS_KEY, ConnectionLimits, install_connection_guards, install_json_parse_errors
from .webrtc.aiortc_patches import configure_video_encoders, install_marker_jitter_buffer
from .config import ServerConfig
from .context import CONTEXT_KEY, ServerContext
from .drain import Drain
from .tls import certificate_names, given_files, self_signed_files, server_ssl_context
from .http.cors import CorsPolicy, cors
from .http.host_check import EVERY_INTERFACE, HostRules, host_check
from .http.http_errors import json_errors
from .metrics import ServerMetrics
from .worker.pipelines import attach_server_controls, load_server_pipeline, load_server_pipelines, model_kind
from .http.routes_api import add_routes as add_api_routes
from .http.routes_lifecycle import add_routes as add_lifecycle_routes
from .http.routes_ice import add_routes as add_ice_routes
from .http.routes_streams import add_routes as add_stream_routes
from .http.routes_webrtc import add_routes as add_webrtc_routes
from .sessions.manager import SessionManager
from .worker.shared_latency import SharedLatency
from .http.static import add_routes as add_static_routes
from .http.static import find_web_dir
from .worker.step_shape import bucket_work
from .worker.model_worker import ModelWorker

logger = logging.getLogger(__name__)

WARM_UP_SIZE = (256, 256)
SHUTDOWN_SECONDS = 3.0  # open requests get this long at shutdown; a step in flight is not waited for
STEP_GRACE_SECONDS = 2.0


def create_app(config: ServerConfig, pipelines: Sequence[Any], *, warm_up: bool = True) -> web.Application:
    """The server application for already loaded ``pipelines`` (one per replica)."""
    if not pipelines:
        raise ValueError("create_app needs at least one pipeline")
    for pipeline in pipelines:  # what sessions may steer with, loaded before any session (idempotent)
        attach_server_controls(pipeline, config.controlnets, config.ip_adapter, config.preprocessor_models)
    metrics = ServerMetrics()
    shared = SharedLatency(bucket_work)  # what one replica measured is the others' prior (shared_latency.py)
    workers = [ModelWorker(p, f"replica-{i}", metrics, shared=shared) for i, p in enumerate(pipelines)]
    manager = SessionManager(config, workers, metrics)
    web_dir = find_web_dir(config.web_dir)
    middlewares = [host_check(HostRules.for_server(config.host, config.answered_hosts)), cors(CorsPolicy(config.cors_origins)), json_errors]
    app = web.Application(client_max_size=config.params_body_bytes, middlewares=middlewares)
    app[LIMITS_KEY] = ConnectionLimits(
        config.header_timeout, config.body_timeout, config.keepalive_timeout, config.max_connections, config.send_timeout
    )
    install_connection_guards()  # before the first connection (on_startup runs after a test's site may already listen)
    install_json_parse_errors()
    drain = Drain(config.drain_seconds, lambda: len(manager.sessions), manager.close_all)
    manager.drain = drain
    app[CONTEXT_KEY] = ServerContext(
        config, manager, metrics, workers, pipelines[0].model_name, web_dir, model_kind(pipelines[0]), pipelines[0].live_params, drain
    )
    add_webrtc_routes(app)
    add_api_routes(app)
    add_lifecycle_routes(app)
    add_ice_routes(app)
    add_stream_routes(app)
    add_static_routes(app, web_dir)

    async def on_startup(app: web.Application) -> None:
        install_marker_jitter_buffer()
        configure_video_encoders(config.bitrate, config.max_bitrate, config.max_fps)
        loop = asyncio.get_running_loop()
        for worker in workers:
            worker.start(loop)
        if warm_up:
            await asyncio.gather(*(warm_up_worker(w, dict(config.default_params)) for w in workers))
        manager.start_sweeper()

    async def on_shutdown(app: web.Application) -> None:
        await manager.close_all("the server is shutting down")

    async def on_cleanup(app: web.Application) -> None:
        await manager.stop_sweeper()
        await asyncio.get_running_loop().run_in_executor(None, lambda: [w.stop() for w in workers])

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def warm_up_pipeline(pipeline: Any, settings: dict[str, Any], streams: int = 1, steps: int = 3) -> list[tuple[list[StepShape], float]]:
    """Run ``steps`` steps of ``streams`` fresh streams on grey frames (model thread); returns the measured steps after the first."""
    states = [pipeline.state_from_settings(settings) for _ in range(streams)]
    samples = []
    for i in range(steps):
        frames, tags, shapes = [], [], []
        for state in states:
            k = pipeline.frames_per_step(state)
            width, height = pipeline.frame_size(state) or WARM_UP_SIZE
            frames.append(torch.full((k, height, width, 3), 128, dtype=torch.uint8) if pipeline.takes_frames(state) else None)
            tags.append((None,) * k)
            shapes.append(pipeline.step_work(state, k))
        started = time.perf_counter()
        pipeline.step(states, frames, tags)
        if i > 0:  # the first step pays for lazy initialisation
            samples.append((shapes, time.perf_counter() - started))
    return samples


async def warm_up_worker(worker: ModelWorker, settings: dict[str, Any]) -> None:
    """Warm up one replica and seed its latency model with one and two batched streams."""
    for streams in (1, 2):
        samples = await asyncio.wrap_future(worker.run_between_steps(warm_up_pipeline, worker.pipeline, settings, streams))
        for shapes, seconds in samples:
            worker.learn(shapes, seconds)
    # torch.compile's artefacts of what the warm-up compiled (nothing when no model was compiled): the next start is warm
    await asyncio.wrap_future(worker.submit(save_all_compile_artifacts))


def run_server(config: ServerConfig, sockets: Sequence[socket.socket] | None = None) -> None:
    """Load the model and serve until interrupted (``streamgen serve``).

    ``sockets``: listening sockets opened before the model loads (``streamgen
    serve`` takes the port first, so a port in use fails at once); without
    them aiohttp binds ``config.host``:``config.port`` itself.
    """
    from ..threads import apply_thread_budget  # noqa: PLC0415

    apply_thread_budget(config.threads)
    where = f"on {', '.join(config.devices)}" if config.devices else f"({config.replicas} replica{'' if config.replicas == 1 else 's'})"
    logger.info("loading %s %s...", config.model, where)
    pipelines = load_server_pipelines(config.model, config.devices, config.replicas, config.device, config.dtype, config.acceleration)
    app = create_app(config, pipelines)
    workers = app[CONTEXT_KEY].workers
    if sockets:
        port = sockets[0].getsockname()[1]  # the bound one, when --port 0 asked for any
        where: dict[str, Any] = {"sock": list(sockets)}
    else:
        port, where = config.port, {"host": config.host, "port": config.port}
    asyncio.run(serve_until_stopped(app, where, config, port, ssl_context=tls_context(config)))
    exit_without_waiting_for_a_step(workers)
    close_pipeline_stages(pipelines)


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The HTTPS context ``config`` asks for (a self-signed certificate is made now and its fingerprint logged), or None."""
    if not config.tls:
        return None
    if config.tls_cert is not None and config.tls_key is not None:
        files = given_files(config.tls_cert, config.tls_key)
    else:
        public_host = urlsplit(config.public_url).hostname if config.public_url else None
        files = self_signed_files(certificate_names(config.host, config.allowed_hosts, public_host))
        logger.warning(
            "HTTPS with a self-signed certificate made now; browsers warn about it: accept it only if the SHA-256 fingerprint "
            "they show is %s", files.fingerprint,
        )
    return server_ssl_context(files)


async def serve_until_stopped(
    app: web.Application, where: dict[str, Any], config: ServerConfig, port: int | None, ssl_context: ssl.SSLContext | None = None
) -> None:
    """Serve ``app`` until SIGINT, or until SIGTERM's drain ends (a second SIGTERM ends it at once; see drain.py)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS, keepalive_timeout=config.keepalive_timeout)
    await runner.setup()  # starts the workers and warms the model up
    try:
        if "sock" in where:
            for sock in where["sock"]:
                await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        else:
            await web.TCPSite(runner, where["host"], where["port"], ssl_context=ssl_context).start()
        log_where_to_go(config, port)
        drain = app[CONTEXT_KEY].drain
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, drain.request)
            loop.add_signal_handler(signal.SIGINT, drain.stop_now)
        except NotImplementedError:  # Windows' event loops take no signal handlers: Ctrl-C still stops it
            signal.signal(signal.SIGINT, lambda *_: loop.call_soon_threadsafe(drain.stop_now))
        await drain.finished.wait()
    finally:
        await runner.cleanup()  # closes whatever sessions are left, stops the workers


def close_pipeline_stages(pipelines: Sequence[Any]) -> None:
    """Stop the stage ranks of staged models (streamgen.parallel), so none outlives the server."""
    for pipeline in pipelines:
        if Capabilities.of(pipeline).staged:
            pipeline.close_stages()


def log_where_to_go(config: ServerConfig, port: int | None = None) -> None:
    """The page's address, where OBS's browser source points, and what the exposure settings mean (no secret is logged)."""
    every_interface = config.host in EVERY_INTERFACE
    host = "127.0.0.1" if every_interface else config.host
    base = f"{'https' if config.tls else 'http'}://{f'[{host}]' if ':' in host else host}:{config.port if port is None else port}"
    logger.info("streamgen is serving %s at %s/", config.model, base)
    if config.token is None:
        logger.info("no --token: anyone who reaches this port may create sessions; each session is steered, watched and ended with its own secret")
    else:
        logger.info("watch page (WHEP, e.g. an OBS browser source): %s/watch?session=ID#token=<--token> (after '#', the token never reaches the server)", base)
    if every_interface:
        logger.info("answering Host localhost and IP addresses; add the names you reach this server by with --allowed-hosts")
        if not config.tls:
            logger.info(
                "from another machine, browsers open the camera only on an HTTPS page: add --tls-self-signed (or --tls-cert/--tls-key), "
                "or tunnel (ssh -L %s:localhost:%s this-host) and open http://localhost:%s/", port, port, port,
            )
    if "*" in config.allowed_hosts:
        logger.warning("--allowed-hosts '*': the Host check is off, so any web page a user of this server visits can reach it (DNS rebinding)")


def exit_without_waiting_for_a_step(workers: Sequence[ModelWorker], grace: float = STEP_GRACE_SECONDS) -> None:
    """Sessions are closed; give a step still in flight ``grace`` seconds, then leave without it.

    A daemon thread still inside torch when the interpreter tears down can
    abort the process; a server told to stop must stop, so it exits at once
    instead (logs flushed first).
    """
    if all(worker.join(grace / max(1, len(workers))) for worker in workers):
        return
    logger.warning("a model step was still running %.0f s after shutdown; exiting without waiting for it", grace)
    logging.shutdown()
    os._exit(0)
