"""The running part of ``streamgen camera``: one local session on the real server, until something ends it.

The run is a streamgen server (the aiohttp app, its model worker, scheduler
and parameter API, bound to the control port) holding ONE session, opened
with :meth:`~streamgen.server.sessions.manager.SessionManager.open_local`: its
input is the capture thread, its output the local sinks, and WHEP viewers
may watch it. Nothing here steps a model or touches a device on the event
loop: capture, the model and the sinks each have their own threads.

The run ends at the first of: the input ended and its last frames came out
of the pipeline; Ctrl+C or SIGTERM; the session was closed (``DELETE`` on
the API, a model failure); an output failed or its window was closed.
Teardown then stops capture, closes the session, lets the sinks write what
they hold and close (a file is always finished), and stops the server.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..errors import StreamgenError
from ..outputs.pump import SinkPump
from ..outputs.sink import SinkClosed
from ..outputs.spec import OutputSpec, SinkSettings, open_sinks
from ..server.app import SHUTDOWN_SECONDS, create_app
from ..server.webrtc.capture_track import CaptureTrack
from ..server.config import ServerConfig
from ..server.context import CONTEXT_KEY
from ..server.sessions.local_session import LocalSession
from .camera_capture import CaptureCounts, CaptureThread
from .camera_console import Console, StdinLines, format_status, parse_typed_line
from .camera_sources import CaptureSource, NoInput

SINK_CLOSE_SECONDS = 30.0  # a file's encoder gets this long to finish at the end
INPUT_ENDED = "the input ended"


@dataclass(frozen=True)
class LiveOptions:
    """How the run behaves, beyond the server's configuration."""

    outputs: tuple[OutputSpec, ...]
    sink_settings: SinkSettings
    loop: bool = False
    max_frames: int | None = None
    stdin_prompts: bool = False
    status_interval: float = 1.0


@dataclass
class LiveResult:
    """How the run went, for the summary."""

    reason: str = ""
    error: BaseException | None = None
    model_failed: bool = False
    drained: bool | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    capture: CaptureCounts = field(default_factory=CaptureCounts)
    dropped: int = 0
    sinks: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workers: list[Any] = field(default_factory=list)  # the model workers, stopped: the caller waits for a step still running


async def run_live(
    config: ServerConfig, pipeline: Any, sockets: Sequence[socket.socket], source: CaptureSource, options: LiveOptions, console: Console,
    result: LiveResult | None = None,
) -> LiveResult:
    """Serve ``pipeline`` with one local session fed by ``source`` until the run ends (see module docstring).

    ``result`` is filled in as the run goes, so a caller whose run was
    cancelled (Ctrl+C where there are no signal handlers: Windows) still
    has the summary of what the teardown closed.
    """
    run = _LiveRun(config, pipeline, sockets, source, options, console, result or LiveResult())
    return await run.run()


class _LiveRun:
    def __init__(
        self, config: ServerConfig, pipeline: Any, sockets: Sequence[socket.socket], source: CaptureSource, options: LiveOptions, console: Console, result: LiveResult
    ) -> None:
        self.config, self.pipeline, self.sockets = config, pipeline, sockets
        self.source, self.options, self.console = source, options, console
        self.result = result
        self.loop = asyncio.get_running_loop()
        self.ending: asyncio.Future[str] = self.loop.create_future()
        self.session: LocalSession | None = None
        self.capture: CaptureThread | None = None
        self.pump: SinkPump | None = None
        self.track: CaptureTrack | None = None
        self._tasks: list[asyncio.Task] = []
        self._signals: list[int] = []

    async def run(self) -> LiveResult:
        app = create_app(self.config, [self.pipeline])
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS, keepalive_timeout=self.config.keepalive_timeout)
        started = time.monotonic()
        self.result.workers = list(app[CONTEXT_KEY].workers)
        try:
            await runner.setup()  # starts the worker and warms the model up
            for sock in self.sockets:
                await web.SockSite(runner, sock).start()
            await self._open(app)
            started = time.monotonic()
            self.result.reason = await self.ending
        finally:
            await self._teardown()
            await runner.cleanup()
            self.result.seconds = time.monotonic() - started
        return self.result

    # ----------------------------------------------------------------- start
    async def _open(self, app: web.Application) -> None:
        sinks = open_sinks(list(self.options.outputs), self.options.sink_settings)
        if sinks:
            self.pump = SinkPump(sinks, on_stop=lambda error: self.loop.call_soon_threadsafe(self._end, error))
            self.pump.start()
        generating = isinstance(self.source, NoInput)  # txt2vid: the session's generation clock paces it, nothing is captured
        self.track = None if generating else CaptureTrack(self.loop)
        manager = app[CONTEXT_KEY].manager
        self.session = await manager.open_local({}, self.track, self.pump, self.console.message)
        self.console.message(banner(self.session, self._base_url(), self.source.description, self.options))
        if generating:
            if self.options.max_frames is not None:
                self._tasks.append(asyncio.ensure_future(self._stop_after_generated(self.session, self.options.max_frames)))
        else:
            self.capture = CaptureThread(self.source, self.track, loop=self.options.loop, max_frames=self.options.max_frames)
            self.capture.start()
        if self.options.stdin_prompts:
            StdinLines(self.loop, self._on_typed_line).start()
        self._tasks.append(asyncio.ensure_future(self._wait_for_session(self.session)))
        if self.options.status_interval > 0:
            self._tasks.append(asyncio.ensure_future(self._show_status()))
        self._install_signal_handlers()

    def _base_url(self) -> str:
        port = self.sockets[0].getsockname()[1] if self.sockets else self.config.port
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    # ------------------------------------------------------------ while it runs
    async def _stop_after_generated(self, session: LocalSession, frames: int) -> None:
        """``--max-frames`` of a stream without input: end once that many frames came out."""
        while not session.closed and session.stats.frames_output < frames:
            await asyncio.sleep(0.05)
        self._end(f"generated {frames} frames (--max-frames)")

    async def _wait_for_session(self, session: LocalSession) -> None:
        await session.finished.wait()
        if session.closed:
            self.result.model_failed = session.close_reason == "model error"
            self._end(session.close_reason or "the session was closed")
        else:
            self._end(INPUT_ENDED)

    def _end(self, why: str | BaseException) -> None:
        """The first reason to end wins (event loop)."""
        if self.ending.done():
            return
        if isinstance(why, SinkClosed):
            why = str(why)
        if isinstance(why, BaseException):
            self.result.error = why
            why = f"an output failed: {why}"
        self.ending.set_result(why)

    def _on_typed_line(self, line: str) -> None:
        self.console.line_typed()
        try:
            changes = parse_typed_line(line)
        except StreamgenError as error:
            self.console.message(f"not applied: {error}")
            return
        if changes is not None:
            self._tasks.append(asyncio.ensure_future(self._apply(changes)))

    async def _apply(self, changes: dict[str, Any]) -> None:
        session = self.session
        if session is None or session.closed:
            return
        try:
            await session.update_params(changes)
        except StreamgenError as error:
            self.console.message(f"not applied: {error}")
            return
        self.console.message(f"applied: {json.dumps(changes, ensure_ascii=False)}")

    async def _show_status(self) -> None:
        while True:
            await asyncio.sleep(self.options.status_interval)
            if self.session is not None and not self.session.closed:
                self.console.status(format_status(self.session.stats.snapshot(), self._dropped(), self._sink_counts()))

    def _dropped(self) -> int:
        session_dropped = self.session.stats.frames_dropped if self.session is not None else 0
        capture_dropped = self.track.frames_replaced if self.track is not None else 0
        return session_dropped + capture_dropped + (self.pump.frames_dropped if self.pump is not None else 0)

    def _sink_counts(self) -> dict[str, int]:
        return {sink.name: sink.frames_written for sink in self.pump.sinks} if self.pump is not None else {}

    def _install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(sig, self._end, "stopped (Ctrl+C)" if sig == signal.SIGINT else "stopped (SIGTERM)")
            except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread: Ctrl+C cancels the run instead
                continue
            self._signals.append(sig)

    # -------------------------------------------------------------- teardown
    async def _teardown(self) -> None:
        for sig in self._signals:
            self.loop.remove_signal_handler(sig)
        for task in self._tasks:
            task.cancel()
        if self.capture is not None:
            self.capture.stop()
        session = self.session
        if session is not None:
            self.result.stats = session.stats.snapshot()
            self.result.drained = session.drained
            self.result.dropped = self._dropped()
            await session.close(self.result.reason or "stopped")
        if self.pump is not None:
            self.pump.stop()
            await self.loop.run_in_executor(None, self.pump.join, SINK_CLOSE_SECONDS)
            self.result.error = self.result.error or (self.pump.error if not isinstance(self.pump.error, SinkClosed) else None)
            self.result.sinks = [sink.describe() for sink in self.pump.sinks]
        if self.capture is not None:  # it closes the source when it stops
            await self.loop.run_in_executor(None, self.capture.join)
            self.result.capture = self.capture.counts
            if self.capture.error is not None and self.result.error is None:
                self.result.error = self.capture.error
        else:
            self.source.close()
        self.console.end()


def banner(session: LocalSession, base_url: str, input_description: str, options: LiveOptions) -> str:
    """What the run prints once its session is open: where it reads and writes, and how to steer and watch it."""
    outputs = ", ".join(str(spec) for spec in options.outputs)
    lines = [
        f"streaming {input_description} -> {outputs}",
        f"control  {base_url}  session {session.id}  secret {session.secret}",
        f"  curl -X PATCH {base_url}/api/sessions/{session.id}/params -H 'Authorization: Bearer {session.secret}' "
        "-H 'Content-Type: application/json' -d '{\"prompt\": \"an oil painting\"}'",
    ]
    if any(spec.kind == "whep" for spec in options.outputs):
        lines.append(f"watch    WHEP {base_url}/whep/{session.id} with the secret above as bearer token")
        lines.append(f"         page {base_url}/watch?session={session.id}#secret={session.secret} (a browser, or an OBS Browser Source)")
    if options.stdin_prompts:
        lines.append("type a prompt and press Enter to change it (a line starting with { is a JSON object of parameters); Ctrl+C stops")
    else:
        lines.append("Ctrl+C stops")
    return "\n".join(lines)
