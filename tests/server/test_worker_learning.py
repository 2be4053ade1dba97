"""What the worker's latency model learns: clean steps, mixed steps split by prediction, never a failed step or its retries."""

from __future__ import annotations

import asyncio

import pytest

from streamgen.errors import InputError
from streamgen.sched import Demand, LatencyModel, Slo
from streamgen.pipeline.identity import IdentityPipeline
from streamgen.server.metrics import ServerMetrics
from streamgen.pipeline.contract import StepShape, StreamShape
from streamgen.server.worker.model_worker import ModelWorker, Reservation, step_samples

from .worker_client import Client


def test_a_step_of_one_bucket_is_one_sample_per_pass():
    model = LatencyModel()
    assert step_samples(model, [StepShape("a", 2, 3), StepShape("a", 1, 3)], 0.9) == [("a", 3, pytest.approx(0.3))]
    assert step_samples(model, [StepShape("a", 0, 1)], 0.5) == []


def test_a_mixed_step_is_split_in_proportion_to_what_each_part_is_predicted_to_cost():
    model = LatencyModel()
    for _ in range(3):
        model.observe("small", 1, 0.010)
        model.observe("big", 1, 0.030)
    samples = dict(((bucket, passes), seconds) for bucket, passes, seconds in step_samples(model, [StepShape("small", 1), StepShape("big", 1)], 0.080))
    assert samples[("small", 1)] == pytest.approx(0.020) and samples[("big", 1)] == pytest.approx(0.060)
    two_passes = step_samples(model, [StepShape("small", 1, 2), StepShape("big", 1)], 0.050)
    assert sum(seconds * (2 if bucket == "small" else 1) for bucket, _, seconds in two_passes) == pytest.approx(0.050)


class _Unprocessable(IdentityPipeline):
    def step(self, states, frames, tags=None):
        super().step(states, frames, tags)
        raise InputError("these frames cannot be processed")


def _shape() -> StreamShape:
    return StreamShape("identity", 64, 64, 1, 1, True)


async def _run(pipeline, frames: int) -> ModelWorker:
    worker = ModelWorker(pipeline, "replica-0", ServerMetrics())
    worker.start(asyncio.get_running_loop())
    try:
        client = Client(pipeline.state_from_settings({"width": 64, "height": 64}))
        shape = _shape()
        unit = shape.unit()
        worker.attach(client, Reservation(Demand(unit.bucket, unit.rows, Slo(), unit.passes), shape, worker.predict(shape, Slo())))
        for index in range(frames):
            client.feed(index)
            worker.notify()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        worker.detach(client)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)
    return worker


async def test_failed_steps_teach_the_latency_model_nothing():
    worker = await _run(_Unprocessable(), 6)
    assert worker.latency.samples(_shape().bucket) == {}


async def test_clean_steps_are_learned():
    worker = await _run(IdentityPipeline(), 6)
    assert worker.latency.samples(_shape().bucket)
