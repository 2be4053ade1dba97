"""The model worker never stalls the rest: setup and prompt encoding run beside a step, stop does not wait for one.

The pipeline is the real tiny image pipeline; its step is made to block on an
event for as long as a test wants, standing in for an arbitrarily long step.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from streamgen.pipeline import ImagePipeline
from streamgen.sched import Slo
from streamgen.server.metrics import ServerMetrics
from streamgen.pipeline.contract import StreamShape
from streamgen.server.worker.pipelines import parse_update
from streamgen.server.worker.model_worker import ModelWorker

from .worker_client import Client

SETTINGS = {"width": 64, "height": 64, "prompt": "a lighthouse", "num_inference_steps": 1}  # one slot: output i depicts input i


class BlockingPipeline(ImagePipeline):
    """The tiny pipeline, whose step waits while ``gate`` is closed (and says when it entered)."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def step(self, states, frames, tags=None):
        self.entered.set()
        self.gate.wait(60)
        return super().step(states, frames, tags)


SHAPE = StreamShape("image", 64, 64, 1, 1, True)


@pytest.fixture()
def blocking(tiny_model) -> BlockingPipeline:
    return BlockingPipeline(tiny_model)


async def _started_worker(pipeline) -> tuple[ModelWorker, Client]:
    worker = ModelWorker(pipeline, "test", ServerMetrics())
    worker.start(asyncio.get_running_loop())
    state = await asyncio.wrap_future(worker.submit(pipeline.state_from_settings, SETTINGS))
    client = Client(state)
    worker.attach(client, worker.reserve(SHAPE, Slo(deadline_s=5.0)))
    return worker, client


async def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_frames_flow_through_the_three_threads(blocking):
    worker, client = await _started_worker(blocking)
    try:
        for i in range(5):
            client.feed(i)
            worker.notify()
            await _wait(lambda: len(client.delivered) > i, 20, f"output {i}")
        assert [f.tag.index for f in client.delivered] == list(range(5))
        assert client.failures == []
        assert worker.latency.measured(SHAPE.bucket), "the worker's own steps feed the latency model"
    finally:
        blocking.gate.set()
        worker.stop()
        assert worker.join(30), "every worker thread ends once its step returns"


async def test_setup_and_prompt_encoding_do_not_wait_for_a_step_in_flight(blocking):
    worker, client = await _started_worker(blocking)
    try:
        blocking.gate.clear()
        blocking.entered.clear()
        client.feed(1)
        worker.notify()
        await _wait(blocking.entered.is_set, 10, "the step to start")

        started = time.monotonic()
        state = await asyncio.wait_for(asyncio.wrap_future(worker.submit(blocking.state_from_settings, {**SETTINGS, "prompt": "a new session"})), 10)
        parsed = parse_update(blocking, client.state, {"prompt": "a brand new prompt"})  # the PATCH path: parse, then encode
        await asyncio.wait_for(asyncio.wrap_future(worker.submit(blocking.prepare_update, parsed)), 10)
        assert time.monotonic() - started < 10
        assert state is not None
        assert "a brand new prompt" in blocking.model._prompt_cache, "encoded beside the step, not in it"
        assert not blocking.gate.is_set(), "the step was still in flight the whole time"

        reset = asyncio.wrap_future(worker.request_reset(client))
        await asyncio.sleep(0.1)
        assert not reset.done(), "a reset never races the step on its state"
        blocking.gate.set()
        await asyncio.wait_for(reset, 10)
    finally:
        blocking.gate.set()
        worker.stop()
        assert worker.join(30)


async def test_stop_does_not_wait_for_a_step_in_flight(blocking):
    worker, client = await _started_worker(blocking)
    blocking.gate.clear()
    blocking.entered.clear()
    client.feed(1)
    worker.notify()
    await _wait(blocking.entered.is_set, 10, "the step to start")
    pending = worker.submit(blocking.state_from_settings, SETTINGS)
    started = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(None, worker.stop)
    assert time.monotonic() - started < 3.0
    blocking.gate.set()
    assert worker.join(30)
    await _wait(pending.done, 5, "the queued setup job to be answered")
    with pytest.raises(Exception):  # either it ran before the stop or it was refused; never left hanging
        if pending.exception() is None:
            raise RuntimeError("ran")
        raise pending.exception()
