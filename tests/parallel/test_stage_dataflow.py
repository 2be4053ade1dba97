"""The stages work at once: rank 0 sends on while later ranks work, resets drop what is on the ring, the server collects between steps."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import torch

from streamgen.models.loading.video_presets import build_tiny_video_model
from streamgen.parallel.errors import StreamFault
from streamgen.parallel.messages import Message
from streamgen.pipeline.video import VideoPipeline
from streamgen.pipeline.video_loading import video_pipeline_for
from streamgen.pipeline.video_staged import StagedVideoPipeline
from streamgen.sched import Slo
from streamgen.server.metrics import ServerMetrics
from streamgen.pipeline.contract import StreamShape
from streamgen.server.worker.model_worker import ModelWorker

from ..server.worker_client import Client
from .staging import SIZE, input_frames, reference_frames, staged_tiny, stream_frames


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_rank0_keeps_sending_while_the_next_stage_is_busy_and_the_frames_stay_exact() -> None:
    """With rank 1 stopped, no answer can come back, yet rank 0 puts the next chunks on the ring: it never waits for a result."""
    frames = input_frames(9)  # three chunks (1 + 4 + 4 frames): as many as a stream may have on 2 stages
    expected = reference_frames(2, stream_batch=True, frames=frames, steps=1)
    with staged_tiny(2, 2, rebalance=False) as model:
        driver = model.stages.driver
        rank1 = model.stages.group.processes[0]
        pipeline = video_pipeline_for(model)
        state = pipeline.create_state({"width": SIZE, "height": SIZE}, {"prompt": "a red fox", "num_inference_steps": 1, "seed": 3})
        driver.inventory()  # a round trip: rank 1 has taken every message so far and waits for the next
        os.kill(rank1.pid, signal.SIGSTOP)
        try:
            outputs = [pipeline.step([state], [frame])[0].frames for frame in frames]  # returns at once: nothing waits for rank 1
            _wait_for(lambda: driver.on_ring >= 3, 20, "three micro-batches on the ring")
            assert sum(o.shape[0] for o in outputs) == 0
        finally:
            os.kill(rank1.pid, signal.SIGCONT)
        outputs.append(pipeline.flush(state).frames)
        assert driver.peak_on_ring >= 3
    got = torch.cat(outputs)
    assert torch.equal(got, expected)


def test_a_reset_drops_the_chunks_on_the_ring_and_the_stream_restarts_exactly() -> None:
    """A change of steps resets the stream while chunks are on the ring: none of them comes out after, and the rest is a fresh stream."""
    frames = input_frames(33)
    cut = 17
    before = stream_frames(build_tiny_video_model(seed=0, layers=3), stream_batch=False, frames=frames[:cut])
    after = stream_frames(build_tiny_video_model(seed=0, layers=3), stream_batch=False, frames=frames[cut:], steps=1)
    with staged_tiny(2, 3, rebalance=False) as model:
        pipeline = video_pipeline_for(model)
        state = pipeline.create_state({"width": SIZE, "height": SIZE}, {"prompt": "a red fox", "num_inference_steps": 2, "seed": 3})
        tags, outputs = [], []
        for index, frame in enumerate(frames):
            if index == cut:
                pipeline.update(state, num_inference_steps=1)
            out = pipeline.step([state], [frame], [(index,)])[0]
            tags += list(out.tags)
            outputs.append(out.frames)
        out = pipeline.flush(state)
        tags += list(out.tags)
        outputs.append(out.frames)
    got = torch.cat(outputs)
    kept = [i for i, t in enumerate(tags) if t is not None]
    early = [i for i in kept if tags[i] < cut]
    late = [i for i in kept if tags[i] >= cut]
    assert [tags[i] for i in early] == list(range(len(early)))  # what came out before the reset: a prefix, in order
    assert torch.equal(got[early], before[: len(early)])
    assert [tags[i] for i in late] == list(range(cut, len(frames)))  # every frame after it, once, in order
    assert torch.equal(got[late], after[: len(late)])


def test_a_staged_model_needs_the_staged_pipeline() -> None:
    with staged_tiny(2, 2, rebalance=False) as model:
        try:
            VideoPipeline(model)
        except Exception as error:  # noqa: BLE001
            assert "StagedVideoPipeline" in str(error)
        else:
            raise AssertionError("VideoPipeline accepted a staged model")


class _SlowHandOver(StagedVideoPipeline):
    """Every step takes a second longer than its work: the wall time a step takes is not what the stages cost."""

    def step(self, states, frames, tags=None):
        time.sleep(STEP_DELAY)
        return super().step(states, frames, tags)


STEP_DELAY = 1.0


async def test_the_worker_delivers_frames_that_finish_after_the_last_input_and_learns_the_stages_cost() -> None:
    """A step hands the chunk over and returns; its frames must still reach the session without another input frame.

    And the latency model (admission control) learns what the rows cost the
    stages, not how long the step call took.
    """
    with staged_tiny(2, 2, rebalance=False) as model:
        pipeline = _SlowHandOver(model)
        worker = ModelWorker(pipeline, "staged", ServerMetrics())
        worker.start(asyncio.get_running_loop())
        try:
            settings = {"width": SIZE, "height": SIZE, "prompt": "a fox", "num_inference_steps": 2}
            state = await asyncio.wrap_future(worker.submit(pipeline.state_from_settings, settings))
            client = Client(state, SIZE)
            shape = StreamShape("video", SIZE, SIZE, 1, 2, True)
            worker.attach(client, worker.reserve(shape, Slo(deadline_s=30.0)))
            for index in range(9):  # three chunks: frame 0, frames 1..4, frames 5..8; nothing after
                client.feed(index)
                worker.notify()
                deadline = time.monotonic() + 30
                while client.slot.ready():
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
            deadline = time.monotonic() + 60
            while len(client.delivered) < 9:
                assert time.monotonic() < deadline, f"only {len(client.delivered)} of 9 frames arrived"
                await asyncio.sleep(0.02)
            assert [f.tag.index for f in client.delivered] == list(range(9))
            assert client.failures == []
            learned = worker.latency.samples(shape.bucket)[2]  # a chunk of a 2-step stream: 2 rows
            # The first chunk's step had no stage measurement yet (its wall time counts); the later ones count the
            # stages' service time, far below the STEP_DELAY every step took.
            assert pipeline.driver.row_seconds is not None
            assert learned < STEP_DELAY, learned
        finally:
            worker.stop()
            worker.join(10)


def _fail_next_forward_of(driver, cache_id: int) -> dict:
    """Make rank 1 raise on the next micro-batch of cache ``cache_id`` (it names a cache rank 1 does not hold)."""
    original, switch = driver._send_raw, {"armed": False}

    def send(message: Message) -> None:
        if switch["armed"] and message.op == "forward" and message.meta["segments"][0][0] == cache_id:
            switch["armed"] = False
            segments = [[10**6, *message.meta["segments"][0][1:]]]
            message = Message("forward", {**message.meta, "segments": segments}, message.tensors)
        original(message)

    driver._send_raw = send
    return switch


def test_a_forward_that_fails_on_one_stream_ends_that_stream_and_the_others_go_on() -> None:
    frames_a, frames_b = input_frames(seed=1), input_frames(seed=2)
    expected_a = stream_frames(build_tiny_video_model(seed=0, layers=2), stream_batch=True, frames=frames_a, seed=1)
    with staged_tiny(2, 2, rebalance=False) as model:
        driver = model.stages.driver
        driver.max_rows = 1  # one row per micro-batch, so the fault meets stream B's rows only
        pipeline = video_pipeline_for(model)
        a = pipeline.create_state({"width": SIZE, "height": SIZE}, {"prompt": "a red fox", "num_inference_steps": 2, "seed": 1})
        b = pipeline.create_state({"width": SIZE, "height": SIZE}, {"prompt": "a red fox", "num_inference_steps": 2, "seed": 2})
        switch = _fail_next_forward_of(driver, b.cache.cache_id)
        outputs, faults = [], []
        for index, (frame_a, frame_b) in enumerate(zip(frames_a, frames_b)):
            switch["armed"] |= index == 10
            if not faults:
                try:
                    outputs.append(pipeline.step([a, b], [frame_a, frame_b])[0].frames)
                    continue
                except StreamFault as fault:  # raised before anything changed: A steps again alone
                    faults.append(fault)
            outputs.append(pipeline.step([a], [frame_a])[0].frames)
        outputs.append(pipeline.flush(a).frames)
        if not faults:
            with pytest.raises(StreamFault) as raised:
                pipeline.flush(b)
            faults.append(raised.value)
        assert "stage rank 1 failed: KeyError" in str(faults[0])
        assert driver.failure is None  # the stages go on
        with pytest.raises(StreamFault):
            pipeline.step([b], [frames_b[0]])
    got = torch.cat(outputs)
    assert got.shape == expected_a.shape  # every frame of A came out
    assert (got.int() - expected_a.int()).abs().max() <= 1  # A shared VAE encode calls with B until the fault, as in one process


def test_a_restore_keeps_the_frames_the_stages_finished_after_the_checkpoint() -> None:
    """The result thread counts finished chunks; a rollback on the model thread must not undo what the ring did."""
    with staged_tiny(2, 2, rebalance=False) as model:
        pipeline = video_pipeline_for(model)
        state = pipeline.create_state({"width": SIZE, "height": SIZE}, {"prompt": "a red fox", "num_inference_steps": 1, "seed": 3})
        saved = pipeline.checkpoint(state)
        before = state.counters.frames_processed
        with pipeline._flow:  # as _on_result does when a chunk's frames come back
            state.counters.frames_processed += 4
        pipeline.restore(state, saved)
        assert state.counters.frames_processed == before + 4
