"""Give the C heap's free pages back to the system after sessions end (glibc only).

A soak of many short sessions (``python -m bench.soak``) left the server
160 MiB above its warm idle level after 10 minutes. It is not a leak: no
session, peer, frame or state object outlives its session (see
``tests/server/test_memory_release.py``), Python's traced memory grows by
well under 1 MiB, and glibc's own counters show the heap's in-use bytes
back near the warm level while 200-290 MiB sit *free* inside its arenas.
glibc gives threads their own malloc arenas, and aiortc decodes in a
thread per receiver and encodes in executor threads: frame buffers, libvpx
contexts and numpy arrays are spread over many arenas. When a session ends
they are freed, but glibc returns an arena's memory to the system only from
its top, so the freed pages stay resident.
``malloc_trim(0)`` walks every arena and releases whole free pages: after
a 3-minute, 8-session soak RSS fell from 682 to 509 MiB, below the warm
idle level of 569 (``bench/RESULTS.md``, "Soak").

:func:`schedule_trim` is called when a session ends. It trims
:data:`TRIM_DELAY` seconds later (decoders and encoders close after the
session is forgotten), in an executor thread (a trim walks every arena:
about 10 ms for 350 MiB of arenas; the event loop must not wait for it).
While other sessions are still running it trims at most once every
:data:`TRIM_INTERVAL` seconds; when the last one has ended (the server is
idle) it does not wait for the interval. Where there is no glibc (macOS,
musl) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import sys
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)

TRIM_DELAY = 2.0
TRIM_INTERVAL = 30.0


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # a glibc extension: musl and others lack it
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _glibc_malloc_trim()


def trim_heap() -> bool:
    """Release free heap pages to the system now; False where that is not possible (no glibc)."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


class HeapTrimmer:
    """Trims once, a little after the last of a run of session ends, never more often than every ``interval`` s."""

    def __init__(self, delay: float = TRIM_DELAY, interval: float = TRIM_INTERVAL, trim: Callable[[], Any] = trim_heap) -> None:
        self.delay, self.interval, self._trim = delay, interval, trim
        self._last = -float("inf")
        self._pending: asyncio.TimerHandle | None = None
        self.trims = 0

    def schedule(self, idle: bool = False) -> None:
        """Called on the event loop when a session has ended; ``idle``: it was the last one."""
        if _malloc_trim is None and self._trim is trim_heap:
            return
        loop = asyncio.get_running_loop()
        if self._pending is not None:
            self._pending.cancel()
        wait = self.delay if idle else max(self.delay, self._last + self.interval - time.monotonic())
        self._pending = loop.call_later(wait, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pending = None
        self._last = time.monotonic()
        self.trims += 1
        loop.run_in_executor(None, self._run)

    def _run(self) -> None:
        try:
            self._trim()
        except Exception:  # noqa: BLE001 - releasing memory is best effort; never let it break the server
            logger.debug("heap trim failed", exc_info=True)


_trimmer = HeapTrimmer()


def schedule_trim(idle: bool = False) -> None:
    """A session ended (``idle``: the last one): trim the heap a little later (see the module docstring)."""
    _trimmer.schedule(idle)
