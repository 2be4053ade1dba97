"""The links between stage ranks: headers on gloo, tensors announced first, and idle never counted as a hang.

A blocking gloo receive gives up after the process group's timeout; ranks
wait for work in one. These tests shorten the timeout to 5 s
(``STREAMGEN_STAGE_TIMEOUT_S``) and leave the stages idle for longer: the
keep-alives must carry them through, and the frames after the pause must
equal one process's.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from streamgen import VideoStream
from streamgen.errors import ConfigError
from streamgen.parallel.links import TIMEOUT_ENV, keepalive_seconds, stage_timeout_seconds
from streamgen.parallel.messages import DTYPES, Message, decode_header, encode_header
from streamgen.sched.blocks import BlockSplit

from .staging import input_frames, reference_frames, staged_tiny, stream_frames

TIMEOUT_S = "5"
IDLE_S = 12.0  # more than twice the process groups' timeout
SETTINGS = {"width": 64, "height": 64, "prompt": "a lighthouse", "seed": 7, "num_inference_steps": 2}


def _frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(count)]


def test_stages_sit_idle_past_the_timeout_then_stream_the_one_process_frames(monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, TIMEOUT_S)
    frames = _frames(13)
    one = VideoStream("tiny-video", device="cpu", model_seed=1, **SETTINGS)
    expected = np.stack([out for frame in frames for out in one.stream(frame)] + one.flush())
    staged = VideoStream("tiny-video", devices=["cpu", "cpu"], model_seed=1, **SETTINGS)
    stages = staged.pipeline.model.stages
    try:
        got = [out for frame in frames[:5] for out in staged.stream(frame)]
        time.sleep(IDLE_S)
        assert stages.driver.failure is None
        got += [out for frame in frames[5:] for out in staged.stream(frame)] + staged.flush()
        time.sleep(float(TIMEOUT_S) + 1)  # idle again: the shutdown below reaches ranks that waited past the timeout
        assert stages.driver.shutdown(), "the ranks did not answer the shutdown after an idle spell"
    finally:
        stages.close()
    assert all(process.poll() is not None for process in stages.group.processes)
    assert np.array_equal(np.stack(got), expected)


def test_ranks_that_start_slower_than_the_timeout_still_join(monkeypatch):
    """A rank imports torch and builds its stage before it joins (seconds); the short timeout is for waits between working ranks."""
    monkeypatch.setenv(TIMEOUT_ENV, "2")
    frames = _frames(5)
    one = VideoStream("tiny-video", device="cpu", model_seed=1, **SETTINGS)
    expected = np.stack([out for frame in frames for out in one.stream(frame)] + one.flush())
    staged = VideoStream("tiny-video", devices=["cpu", "cpu"], model_seed=1, **SETTINGS)
    try:
        got = [out for frame in frames for out in staged.stream(frame)] + staged.flush()
    finally:
        staged.pipeline.model.stages.close()
    assert np.array_equal(np.stack(got), expected)


def test_a_rebalance_after_an_idle_spell_keeps_the_frames_exact(monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, TIMEOUT_S)
    frames = input_frames(17)
    expected = reference_frames(3, stream_batch=True, frames=frames)
    with staged_tiny(2, 3, rebalance=False) as model:
        driver = model.stages.driver

        def between(index: int) -> None:
            if index == 9:
                time.sleep(float(TIMEOUT_S) + 2)
                driver.rebalance(BlockSplit((0, 1, 3)) if driver.split.bounds != (0, 1, 3) else BlockSplit((0, 2, 3)))

        got = stream_frames(model, stream_batch=True, frames=frames, between=between)
        assert driver.rebalances == 1 and driver.failure is None
    assert torch.equal(got, expected)


# ------------------------------------------------------------------- the wire
_dtypes = st.sampled_from(sorted(DTYPES))
_shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4)
_meta = st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=4)), max_size=4)


@given(op=st.text(min_size=1, max_size=16), meta=_meta, tensors=st.lists(st.tuples(_dtypes, _shapes), max_size=4))
def test_a_header_describes_every_tensor_it_announces(op, meta, tensors):
    made = [torch.zeros(shape, dtype=DTYPES[name]) for name, shape in tensors]
    counts, body = encode_header(Message(op, meta, made), made)
    assert counts.device.type == "cpu" and body.device.type == "cpu" and int(counts[0]) == body.numel()
    got_op, got_meta, announced = decode_header(body, int(counts[1]))
    assert (got_op, got_meta) == (op, meta)
    assert announced == [(DTYPES[name], shape) for name, shape in tensors]


def test_a_header_that_contradicts_itself_is_refused():
    counts, body = encode_header(Message("forward"), [torch.zeros(2)])
    with pytest.raises(RuntimeError, match="announced 2 tensors but describes 1"):
        decode_header(body, 2)
    forged = torch.frombuffer(bytearray(b'{"op": "forward", "meta": {}, "tensors": [["complex128", [2]]]}'), dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="unknown dtype 'complex128'"):
        decode_header(forged, 1)


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan", "inf"])
def test_a_bad_timeout_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(TIMEOUT_ENV, value)
    with pytest.raises(ConfigError, match=TIMEOUT_ENV):
        stage_timeout_seconds()


def test_the_timeout_defaults_to_ten_minutes_and_keepalives_come_four_times_within_it(monkeypatch):
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert stage_timeout_seconds() == 600.0
    monkeypatch.setenv(TIMEOUT_ENV, "5")
    assert keepalive_seconds(stage_timeout_seconds()) == pytest.approx(1.25)
