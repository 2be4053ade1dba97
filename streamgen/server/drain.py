"""``Drain``: a restart that does not cut streams off.

Orchestrators (Kubernetes, systemd, a deploy script) stop a server with
SIGTERM and wait a grace period before SIGKILL. Closing every session at
the first signal would cut every user's stream at each deploy, so a SIGTERM
starts a drain instead:

- at once: new sessions are refused (503, ``Retry-After``, "draining": a
  proxy retries them on another server) and ``/readyz`` answers 503, so a
  load balancer stops sending newcomers;
- sessions in progress keep streaming until they end, for at most
  ``drain_seconds`` (``--drain-seconds``, default 30);
- then the ones left are closed with a reason their page shows, and the
  server stops.

A second SIGTERM (or SIGINT, or a drain of 0 seconds) stops at once: the
sessions are closed with "the server is shutting down", as before drains
existed. WHEP viewers of running sessions are still admitted while
draining: they add no model work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2


class Drain:
    """The server's drain state (see module docstring); lives on the event loop."""

    def __init__(self, seconds: float, session_count: Callable[[], int], close_all: Callable[[str], "asyncio.Future | object"]) -> None:
        self.seconds = seconds
        self._session_count = session_count
        self._close_all = close_all
        self.started_at: float | None = None
        self.finished = asyncio.Event()  # set when the server should stop now
        self._task: asyncio.Task | None = None

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    def left_s(self, now: float | None = None) -> float:
        """Seconds until the drain closes what is left (0 when not draining)."""
        if self.started_at is None:
            return 0.0
        return max(0.0, self.started_at + self.seconds - (time.monotonic() if now is None else now))

    def request(self) -> None:
        """A stop was asked for (SIGTERM): the first starts the drain, a second stops at once."""
        if self.started_at is not None or self.seconds <= 0:
            if self.started_at is not None:
                logger.warning("a second stop signal while draining: stopping now")
            self.started_at = self.started_at or time.monotonic()
            self.finished.set()
            return
        self.started_at = time.monotonic()
        sessions = self._session_count()
        logger.warning(
            "draining: new sessions are refused; %d session(s) may go on for up to %g s; a second SIGTERM stops at once",
            sessions, self.seconds,
        )
        self._task = asyncio.ensure_future(self._run())

    def stop_now(self) -> None:
        """Stop without draining (SIGINT)."""
        self.started_at = self.started_at or time.monotonic()
        self.finished.set()

    async def _run(self) -> None:
        while self._session_count() and self.left_s() > 0 and not self.finished.is_set():
            await asyncio.sleep(min(POLL_SECONDS, max(0.01, self.left_s())))
        if self.finished.is_set():
            return
        left = self._session_count()
        if left:
            logger.warning("drain: %d session(s) still open after %g s; closing them", left, self.seconds)
            await self._close_all(f"the server is restarting (it let running streams go on for {self.seconds:g} s); reconnect to continue")
        else:
            logger.info("drain: every session has ended; stopping")
        self.finished.set()
