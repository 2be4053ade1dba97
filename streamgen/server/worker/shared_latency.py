"""What every replica of one model has measured: the prior of each replica's own latency model.

Each :class:`~streamgen.server.worker.model_worker.ModelWorker` fits its own
:class:`~streamgen.sched.LatencyModel` (replicas may sit on different
devices). A replica that has not yet run a bucket would otherwise guess its
cost from another resolution, while a busy sibling has measured it; the
session manager then compares a guess with a measurement when it picks the
replica for a new session, and sends a second session to the busy replica
whenever the guess happens to be high. Sharing what was measured makes the
replicas compare like with like.

Workers feed it and read it from their own threads under their own locks;
it has a lock of its own, taken last (a worker's lock, then this one), so
the order is the same everywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

from ...sched import LatencyModel


class SharedLatency:
    """A thread-safe latency model fed by every replica (a :class:`~streamgen.sched.latency.LatencyPrior`)."""

    def __init__(self, bucket_work: Callable[[Hashable], float] | None = None) -> None:
        self._model = LatencyModel(bucket_work=bucket_work)
        self._lock = threading.Lock()

    def observe(self, bucket: Hashable, rows: int, seconds: float) -> None:
        with self._lock:
            self._model.observe(bucket, rows, seconds)

    def measured(self, bucket: Hashable) -> bool:
        with self._lock:
            return self._model.measured(bucket)

    def any_measured(self) -> bool:
        with self._lock:
            return self._model.any_measured()

    def predict(self, bucket: Hashable, rows: int) -> float:
        with self._lock:
            return self._model.predict(bucket, rows)
