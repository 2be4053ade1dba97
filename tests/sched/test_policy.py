"""The step policy with a fake clock: deadlines, batching toward the knee, fairness, determinism."""

import pytest

from streamgen.sched import Candidate, LatencyModel, Slo, choose_video_mode, plan_step

from .simulator import SimSession, knee_curve, linear, percentile, simulate


def _fitted(curve, rows=(1, 2, 3, 4, 6, 8, 12, 16), bucket="a") -> LatencyModel:
    model = LatencyModel()
    for r in rows:
        model.observe(bucket, r, curve(r))
    return model


def test_zero_deadline_misses_when_the_load_is_feasible():
    curve = linear(0.010, 0.005)  # all 8 rows in one step: 50 ms of every 67 ms frame period
    slo = Slo(target_fps=15, deadline_s=0.2)
    sessions = [SimSession(f"s{i}", fps_in=15, slo=slo, rows=2, start=i * 0.013) for i in range(4)]
    result = simulate(sessions, curve, 20.0, model=_fitted(curve))
    assert result.misses == 0
    for s in result.sessions.values():
        assert result.fps(s.session_id, since=1.0) == pytest.approx(15, rel=0.08)
        assert percentile(s.latencies, 0.95) <= slo.deadline_s


def test_overload_degrades_fairly_and_nobody_starves():
    curve = linear(0.02, 0.03)
    slo = Slo(target_fps=30, deadline_s=0.15)
    sessions = [SimSession(f"s{i}", fps_in=30, slo=slo, rows=1 + i % 2, start=i * 0.007) for i in range(5)]
    result = simulate(sessions, curve, 30.0, model=_fitted(curve))
    rates = [result.fps(i, since=2.0) for i in result.sessions]
    assert min(rates) > 0.5
    assert max(rates) / min(rates) < 1.15  # every session's fps falls by the same factor
    assert max(rates) < 30 * 0.8  # it really is overloaded


def test_batch_grows_with_load():
    curve = knee_curve(0.02, 8, 0.004)  # a GPU: batching is nearly free up to 8 rows
    slo = Slo(target_fps=30, deadline_s=0.1)
    light = simulate([SimSession("a", 30, slo)], curve, 5.0, model=_fitted(curve))
    heavy = simulate([SimSession(f"s{i}", 30, slo, start=i * 0.004) for i in range(6)], curve, 5.0, model=_fitted(curve))
    assert max(light.batches) == 1
    assert sum(heavy.batches) / len(heavy.batches) > 2.5
    assert heavy.misses == 0


def test_batch_shrinks_when_a_bigger_one_would_miss():
    model = _fitted(linear(0.01, 0.02))
    slo = Slo(target_fps=30, deadline_s=0.1)
    now = 10.0
    # Four sessions of 2 rows: all four (8 rows) take 0.17 s, over the deadline; two (4 rows) take 0.09 s.
    candidates = [Candidate(f"s{i}", "a", 2, (now - 0.005,), slo, last_served=now - 0.034) for i in range(4)]
    plan = plan_step(now, candidates, model)
    assert len(plan.sessions) == 2
    assert plan.predicted_seconds <= 0.1
    assert plan.late == ()
    assert len(plan.deferred) == 2


def test_stops_at_the_knee_when_the_rest_can_wait():
    model = _fitted(knee_curve(0.01, 4, 0.01), rows=(1, 2, 4, 8, 16))
    assert model.knee("a") == 4
    slo = Slo(target_fps=10, deadline_s=1.0)  # generous deadline: everyone could wait a step
    now = 5.0
    candidates = [Candidate(f"s{i}", "a", 2, (now,), slo, last_served=now - 1) for i in range(4)]
    plan = plan_step(now, candidates, model)
    assert plan.rows == 4
    assert len(plan.deferred) == 2


def test_deferred_session_goes_first_after_max_defer():
    model = _fitted(linear(0.01, 0.02))
    slo = Slo(target_fps=30, deadline_s=0.1)
    now = 1.0
    urgent = [Candidate(f"a{i}", "a", 2, (now - 0.01,), slo, last_served=now - 0.1) for i in range(2)]
    starved = Candidate("z", "a", 2, (now,), slo, last_served=now - 0.1, deferred=3)
    plan = plan_step(now, [*urgent, starved], model)
    assert plan.sessions[0] == "z"


def test_input_faster_than_the_target_fps_is_thinned_by_arrival_time():
    model = _fitted(linear(0.01, 0.001))
    slo = Slo(target_fps=10, deadline_s=0.5)
    early = Candidate("a", "a", 1, (1.033,), slo, last_served=1.01, served_arrival=1.0)
    plan = plan_step(1.04, [early], model)
    assert plan.empty and plan.throttled == ("a",)
    assert plan.wake_at == pytest.approx(1.0 + 0.1 * 0.98)
    due = Candidate("a", "a", 1, (1.099,), slo, last_served=1.01, served_arrival=1.0)
    assert plan_step(1.1, [due], model).sessions == ("a",)
    # No newer frame comes (the source paused): the held one runs once its time has come.
    assert plan_step(1.1, [early], model).sessions == ("a",)


def test_a_target_below_the_input_rate_is_met_without_drift():
    curve = linear(0.01, 0.01)
    slo = Slo(target_fps=10, deadline_s=0.3)
    result = simulate([SimSession("a", fps_in=30, slo=slo), SimSession("b", fps_in=30, slo=slo, start=0.011)], curve, 10.0, model=_fitted(curve))
    assert result.fps("a", since=1.0) == pytest.approx(10, rel=0.05)
    assert result.fps("b", since=1.0) == pytest.approx(10, rel=0.05)


def test_stale_frames_beyond_one_step_are_dropped():
    model = _fitted(linear(0.05, 0.0))
    slo = Slo(target_fps=30, deadline_s=0.1)
    now = 2.0
    candidate = Candidate("a", "a", 1, (1.7, 1.8, 1.99, 2.0), slo, frames_per_step=2)
    plan = plan_step(now, [candidate], model)
    assert plan.drops == (("a", 2),)


def test_identical_inputs_give_identical_decisions():
    model = _fitted(linear(0.01, 0.02))
    slo = Slo(target_fps=30, deadline_s=0.1)
    candidates = [Candidate(f"s{i}", "a" if i % 2 else "b", 1 + i % 3, (0.99 - i * 0.001,), slo, last_served=0.8) for i in range(7)]
    plans = {plan_step(1.0, candidates, model) for _ in range(3)}
    plans.add(plan_step(1.0, list(reversed(candidates)), model))
    assert len(plans) == 1


def test_new_sessions_are_served_first():
    model = _fitted(linear(0.05, 0.05))
    slo = Slo(target_fps=30, deadline_s=0.12)
    old = Candidate("old", "a", 1, (1.0,), slo, last_served=0.5)
    new = Candidate("new", "a", 1, (1.0,), slo)
    assert plan_step(1.0, [old, new], model).sessions[0] == "new"


def test_video_mode_prefers_stream_batch_when_it_is_cheaper_and_in_time():
    model = _fitted(knee_curve(0.02, 4, 0.01))
    choice = choose_video_mode(model, "a", steps=4, chunk_period_s=0.13, deadline_s=1.0)
    assert choice.stream_batch
    assert choice.stream_batch_chunk_seconds < choice.sequential_chunk_seconds


def test_video_mode_falls_back_to_sequential_for_a_tight_deadline():
    model = _fitted(knee_curve(0.02, 4, 0.01))
    # stream batch: 3 chunk periods of lag (0.39 s) + 0.02; sequential: 4 x 0.02 = 0.08 s.
    choice = choose_video_mode(model, "a", steps=4, chunk_period_s=0.13, deadline_s=0.2)
    assert not choice.stream_batch
    assert choice.sequential_latency == pytest.approx(0.08)


def test_an_engine_row_limit_is_hard_even_for_sessions_deferred_too_often():
    """Compiled engines take at most ``max_rows`` rows: a forced session waits for the next step rather than break the engine."""
    model = _fitted(linear(0.001, 0.001))
    slo = Slo(target_fps=30, deadline_s=1.0)
    both_forced = [Candidate(name, "a", 3, (0.0,), slo, last_served=0.5, deferred=10) for name in ("a", "b")]
    plan = plan_step(1.0, both_forced, model, max_rows=4)
    assert plan.rows == 3 and len(plan.sessions) == 1 and len(plan.deferred) == 1
    assert len(plan_step(1.0, both_forced, model).sessions) == 2  # without a limit both run
