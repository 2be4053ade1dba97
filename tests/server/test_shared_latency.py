"""Replicas of one model share what they measured, so choosing a replica compares like with like.

The flake this fixes: replica-0 had measured the new session's bucket,
replica-1 only guessed it by scaling a warm-up at another resolution, and
the guess was sometimes higher than the busy replica's measurement, so both
sessions landed on replica-0.
"""

from __future__ import annotations

from streamgen.pipeline.identity import IdentityPipeline
from streamgen.sched import Demand, Slo, replica_order
from streamgen.server.metrics import ServerMetrics
from streamgen.server.worker.shared_latency import SharedLatency
from streamgen.pipeline.contract import StepShape, StreamShape
from streamgen.server.worker.step_shape import bucket_work
from streamgen.server.worker.model_worker import ModelWorker, Reservation


class _Client:
    closed = False
    state = None


def _shape(size: int) -> StreamShape:
    return StreamShape("image", size, size, frames_per_call=1, steps=1, stream_batch=True)


def _workers(shared: SharedLatency | None) -> list[ModelWorker]:
    metrics = ServerMetrics()
    return [ModelWorker(IdentityPipeline(), f"replica-{i}", metrics, shared=shared) for i in range(2)]


def _busy_replica_looks_cheaper(shared: SharedLatency | None) -> bool:
    slo = Slo()
    small, warm_up = _shape(128), _shape(256)
    replica0, replica1 = _workers(shared)
    for worker in (replica0, replica1):  # warm-up at the default size: cheap per pixel at 256, so 128 is over-guessed
        worker.learn([StepShape(warm_up.bucket, 1)], 0.200)
    replica0.learn([StepShape(small.bucket, 1)], 0.031)
    replica0.learn([StepShape(small.bucket, 2)], 0.037)
    replica0.attach(_Client(), Reservation(_demand(small, slo), small, replica0.predict(small, slo)))
    order = replica_order([(w.predict(small, slo), w.load) for w in (replica0, replica1)])
    return order[0] == 0


def _demand(shape: StreamShape, slo: Slo) -> Demand:
    unit = shape.unit()
    return Demand(unit.bucket, unit.rows, slo, unit.passes)


def test_without_sharing_a_guess_loses_to_a_measurement():
    assert _busy_replica_looks_cheaper(None)


def test_sharing_what_was_measured_sends_the_second_session_to_the_idle_replica():
    assert not _busy_replica_looks_cheaper(SharedLatency(bucket_work))
