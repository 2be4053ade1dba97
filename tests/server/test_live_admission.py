"""A live change is admitted like an offer: from what every session costs now, refused with the numbers when it would break the others."""

from __future__ import annotations

import pytest

from streamgen.errors import CapacityError
from streamgen.pipeline.contract import StreamShape
from streamgen.pipeline.identity import IdentityPipeline
from streamgen.sched import LatencyModel, Slo
from streamgen.server.metrics import ServerMetrics
from streamgen.server.worker.model_worker import ModelWorker

from .worker_client import Client

TIGHT = Slo(target_fps=10, deadline_s=0.3, min_fps=5)


def _image(steps: int) -> StreamShape:
    return StreamShape("image", 64, 64, 1, steps, True)


def _worker() -> ModelWorker:
    latency = LatencyModel()
    for rows in (1, 2, 4, 8, 16):
        latency.observe(_image(1).bucket, rows, 0.005 + 0.01 * rows)
    return ModelWorker(IdentityPipeline(), "replica-0", ServerMetrics(), latency=latency)


def _attach(worker: ModelWorker, steps: int) -> Client:
    client = Client(object())
    worker.attach(client, worker.reserve(_image(steps), TIGHT))
    return client


def test_a_change_that_would_break_the_others_is_refused_with_the_numbers_and_a_cheaper_one_is_not():
    worker = _worker()
    first, second = _attach(worker, 2), _attach(worker, 2)
    with pytest.raises(CapacityError) as refused:
        worker.admit_change(first, _image(16))  # 16 rows beside the other 2: about 0.19 s a step, below 5 fps for both
    assert "cost the model more" in str(refused.value) and refused.value.details["admitted"] is False
    assert worker.admitted(first).shape.steps == 2  # nothing changed
    worker.admit_change(first, _image(1))  # cheaper: always admitted
    assert worker.admitted(first).shape.steps == 2 and worker._member(first).demand.rows == 1
    worker.admit_change(second, _image(3))  # fits now that the first costs less
    assert worker.admitted(second).shape.steps == 3


def test_admission_of_a_newcomer_counts_what_a_session_costs_after_its_change():
    worker = _worker()
    client = _attach(worker, 1)
    before = worker.predict(_image(2), TIGHT).utilization
    worker.admit_change(client, _image(4))
    after = worker.predict(_image(2), TIGHT).utilization
    assert after > before  # not the demand frozen when the first was admitted
