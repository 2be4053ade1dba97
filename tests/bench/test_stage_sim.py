"""The pipeline simulator reproduces the cases that can be worked out by hand, exactly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.stage_sim import PipelineSpec, StageCost, percentile, simulate

F = 4  # video frames per chunk


def _spec(*compute, send=0.0, **kwargs):
    return PipelineSpec(tuple(StageCost(c, send) for c in compute), **kwargs)


def test_one_stage_is_serial():
    result = simulate(_spec(0.010), chunks=50)
    assert result.fps == pytest.approx(F / 0.010)
    assert result.latency_p50_s == result.latency_p99_s == pytest.approx(0.010)
    assert result.stage_utilisation == pytest.approx((1.0,))
    assert result.chunks == 50 and result.frames == 50 * F


def test_one_stage_waits_for_its_state_to_come_back():
    result = simulate(_spec(0.010, send=0.002), chunks=50)
    assert result.fps == pytest.approx(F / 0.012)
    assert result.latency_p50_s == pytest.approx(0.010)  # the chunk is out when decoded; the send carries the state
    assert result.link_utilisation == pytest.approx((0.002 / 0.012,))


@pytest.mark.parametrize("stages", [2, 3, 4, 8])
def test_equal_stages_without_transfer_multiply_throughput(stages):
    serial = simulate(_spec(0.024), chunks=60)
    split = simulate(_spec(*[0.024 / stages] * stages), chunks=60)
    assert split.fps == pytest.approx(stages * serial.fps)
    assert split.latency_p50_s == pytest.approx(serial.latency_p50_s)  # every chunk still crosses every block
    assert split.stage_utilisation == pytest.approx((1.0,) * stages)


def test_the_slowest_stage_bounds_throughput():
    result = simulate(_spec(0.001, 0.003, 0.001), chunks=60)
    assert result.fps == pytest.approx(F / 0.003)
    assert result.stage_utilisation == pytest.approx((1 / 3, 1.0, 1 / 3))


def test_fewer_micro_batches_than_stages_leave_stages_idle():
    result = simulate(_spec(*[0.002] * 4, micro_batches=1), chunks=40)
    assert result.fps == pytest.approx(F / 0.008)
    two = simulate(_spec(*[0.002] * 4, micro_batches=2), chunks=40)
    assert two.fps == pytest.approx(2 * F / 0.008)


def test_a_slow_link_is_a_bottleneck_too():
    result = simulate(_spec(0.001, 0.001, send=0.003, micro_batches=3, link_slots=2), chunks=60)
    assert result.fps == pytest.approx(F / 0.003)
    assert result.link_utilisation == pytest.approx((1.0, 1.0))


def test_stream_batch_steps_delay_a_chunk_but_not_the_rate():
    one = simulate(_spec(0.002, 0.002), chunks=60)
    four = simulate(_spec(0.002, 0.002, steps=4), chunks=60)
    assert four.fps == pytest.approx(one.fps)
    assert four.latency_p50_s == pytest.approx(4 * 0.004)  # four passes; two micro-batches keep both stages busy


def test_camera_input_latency_by_hand():
    # 50 fps camera, 4-frame chunks: chunk k is ready at (4k + 3) × 20 ms and takes 10 ms, so its
    # frames wait 70, 50, 30 and 10 ms; with a 40 ms deadline the first two of every chunk miss.
    result = simulate(_spec(0.010), chunks=10, input_fps=50, deadline_s=0.040, warmup_chunks=1)
    assert result.fps == pytest.approx(50)
    assert result.latency_max_s == pytest.approx(0.070)
    assert result.latency_p50_s == pytest.approx(0.030)
    assert result.misses == 2 * 10
    assert result.stage_utilisation == pytest.approx((0.010 / 0.080,))


def test_camera_input_below_capacity_comes_out_at_the_camera_rate():
    spec = _spec(0.002, 0.003, 0.002, send=0.0001, steps=2)
    capacity = simulate(spec, chunks=100).fps
    camera = simulate(spec, chunks=100, input_fps=0.8 * capacity, deadline_s=1.0)
    assert camera.fps == pytest.approx(0.8 * capacity, rel=1e-6)
    assert camera.misses == 0
    # A stream batch runs one step per new input: a chunk waits (steps − 1) × micro-batches inputs, then a pass.
    period = F / (0.8 * capacity)
    assert camera.latency_max_s <= (2 - 1) * 3 * period + spec.pass_seconds + (F - 1) / (0.8 * capacity) + 1e-9


def test_identical_specs_give_identical_results():
    spec = _spec(0.0013, 0.0021, 0.0017, send=0.0004, steps=3, link_slots=2)
    assert simulate(spec, chunks=80, input_fps=900.0, deadline_s=0.05) == simulate(spec, chunks=80, input_fps=900.0, deadline_s=0.05)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 20), st.integers(0, 10)), min_size=1, max_size=5),
    st.integers(1, 3),
    st.integers(1, 2),
    st.data(),
)
def test_throughput_lies_between_serial_and_the_bottleneck(costs, steps, slots, data):
    stages = tuple(StageCost(c * 1e-3, s * 1e-3) for c, s in costs)
    micro_batches = data.draw(st.integers(1, len(stages) * (1 + slots) - 1))
    spec = PipelineSpec(stages, steps=steps, micro_batches=micro_batches, link_slots=slots)
    result = simulate(spec, chunks=40)
    busiest = max(max(s.compute_seconds, s.send_seconds) for s in stages)
    # A finite window can start on a chunk that came out late: allow the rate that slack would explain.
    slack = 1 + micro_batches * spec.pass_seconds / (result.chunks * busiest)
    assert result.fps <= F / busiest * slack
    assert result.fps <= micro_batches * F / spec.pass_seconds * slack  # each micro-batch at best circulates freely
    assert result.fps >= F / spec.pass_seconds / slack  # never worse than one micro-batch alone
    assert all(0 <= u <= 1 for u in result.stage_utilisation + result.link_utilisation)


def test_invalid_specs_are_refused():
    with pytest.raises(ValueError, match="deadlock"):
        _spec(0.001, micro_batches=2)  # one stage, one slot: the second micro-batch would wait on itself
    with pytest.raises(ValueError, match="deadlock"):
        _spec(0.001, 0.001, micro_batches=4)
    with pytest.raises(ValueError, match="some time"):
        _spec(0.0, 0.0)
    with pytest.raises(ValueError, match="compute_seconds"):
        StageCost(-1.0)
    with pytest.raises(ValueError, match="steps"):
        _spec(0.001, steps=0)
    with pytest.raises(ValueError, match="at least one stage"):
        PipelineSpec(())
    with pytest.raises(ValueError, match="input_fps"):
        simulate(_spec(0.001), input_fps=0)
    with pytest.raises(ValueError, match="deadline_s"):
        simulate(_spec(0.001), deadline_s=-1)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (50.0, 99.0, 100.0)
    assert percentile([3.0], 0.99) == 3.0
