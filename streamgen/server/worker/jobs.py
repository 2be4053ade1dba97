"""``JobThread``: session setup work that must not wait behind a model step.

Building a session's state encodes its prompt (a text encoder: for Wan a
UMT5-XXL), and a live prompt change encodes the new one. Done on the model
thread, every session's frames would wait for it; done on the event loop,
every request would. So such jobs run here, on a thread of their own, beside
the step. Prompt encodings are memoised by the model (a pure function of the
weights), so the step that later applies the change finds them ready.

The thread is a daemon and :meth:`stop` does not wait for a job in flight:
shutdown must not hang on a slow encoder.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

STOPPED = "the model worker has stopped"


class JobThread:
    """Runs submitted callables one at a time on a daemon thread, answering with futures."""

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._jobs: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                future.set_exception(RuntimeError(STOPPED))
                return future
            self._jobs.append((lambda: fn(*args), future))
            self._cond.notify()
        return future

    def stop(self, timeout: float = 1.0) -> None:
        """Refuse new jobs, fail queued ones, give the running one ``timeout`` seconds."""
        with self._cond:
            self._stopping = True
            queued = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
        for _, future in queued:
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError(STOPPED))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while self._run_one():
            pass

    def _run_one(self) -> bool:
        """One job; a method, so the job and its result (a session's state) do not outlive it in a local."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or bool(self._jobs))
            if self._stopping:
                return False
            job, future = self._jobs.popleft()
        run_job(job, future)
        return True


def run_job(job: Callable[[], Any], future: concurrent.futures.Future) -> None:
    """Run ``job`` into ``future`` (any exception is handed to whoever awaits it)."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(job())
    except BaseException as error:  # noqa: BLE001 - the awaiting coroutine decides how to report it
        future.set_exception(error)
