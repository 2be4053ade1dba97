"""Admission control: refuse the session that would break the others, admit it when capacity returns."""

import pytest

from streamgen.errors import ConfigError
from streamgen.sched import Admission, Demand, LatencyModel, Slo, SloLimits, admit, predicted_rates, replica_order


def _model() -> LatencyModel:
    model = LatencyModel()
    for rows in (1, 2, 4, 8):
        model.observe("256", rows, 0.01 + 0.01 * rows)
    return model


GUARANTEED = Slo(target_fps=10, deadline_s=0.3, min_fps=10)


def test_admits_while_there_is_room_and_every_session_gets_its_target_rate():
    model = _model()
    one = admit(model, [], Demand("256", 2, GUARANTEED))
    two = admit(model, [Demand("256", 2, GUARANTEED)], Demand("256", 2, GUARANTEED))
    assert one.admitted and two.admitted
    assert two.fps == GUARANTEED.target_fps and predicted_rates(model, [Demand("256", 2, GUARANTEED)] * 2) == [10, 10]
    assert one.utilization < two.utilization < 1.0  # a second session costs something, and there is room for it


def test_refuses_the_session_that_would_break_the_others_and_admits_it_once_capacity_returns():
    model = _model()
    admitted = [Demand("256", 2, GUARANTEED) for _ in range(4)]  # 8 rows: 0.09 s per step at 10 fps
    answer = admit(model, admitted, Demand("256", 2, Slo(target_fps=10, deadline_s=0.3, min_fps=1)))
    assert not answer.admitted
    assert "promised" in answer.reason
    assert admit(model, admitted[:2], Demand("256", 2, GUARANTEED)).admitted


def test_best_effort_sessions_share_the_model_down_to_their_floor():
    model = _model()
    best_effort = Slo(target_fps=30, deadline_s=0.5, min_fps=5)
    admitted: list[Demand] = []
    while True:
        answer = admit(model, admitted, Demand("256", 1, best_effort))
        if not answer.admitted:
            break
        admitted.append(Demand("256", 1, best_effort))
    rates = predicted_rates(model, admitted)
    assert len(admitted) >= 3
    assert min(rates) >= 5 and max(rates) == min(rates)
    assert "below the 5 fps" in answer.reason


def test_a_new_session_gets_a_lower_rate_only_when_it_asked_for_one():
    model = _model()
    admitted = [Demand("256", 2, Slo(target_fps=10, deadline_s=0.3, min_fps=2)) for _ in range(3)]
    strict = admit(model, admitted, Demand("256", 2, Slo(target_fps=30, deadline_s=0.3, min_fps=30)))
    assert not strict.admitted and "min_fps" in strict.reason
    flexible = admit(model, admitted, Demand("256", 2, Slo(target_fps=30, deadline_s=0.3, min_fps=3)))
    assert flexible.admitted
    assert 3 <= flexible.fps < 30


def test_refuses_a_stream_that_alone_misses_its_deadline():
    model = LatencyModel(bucket_work=lambda b: int(b) ** 2)
    model.observe("256", 4, 0.05)
    huge = Demand("2048", 4 * 16, Slo(target_fps=10, deadline_s=0.25))  # 64x the pixels, 16x the rows
    answer = admit(model, [], huge)
    assert not answer.admitted
    assert "alone" in answer.reason
    assert answer.to_json()["predicted_step_ms"] > 250


def test_refuses_when_a_step_carrying_everyone_would_miss_the_shortest_deadline():
    model = _model()
    tight = Slo(target_fps=1, deadline_s=0.1)
    answer = admit(model, [Demand("256", 4, Slo(target_fps=1, deadline_s=1.0))], Demand("256", 2, tight))
    assert not answer.admitted
    assert "shortest deadline" in answer.reason


def test_client_slo_is_checked_against_the_servers_limits():
    limits = SloLimits(min_deadline_s=0.05, max_deadline_s=2.0, max_fps=30)
    default = Slo(target_fps=30, deadline_s=0.5, min_fps=1)
    assert limits.parse(None, default) == default
    asked = limits.parse({"deadline_ms": 200, "fps": 12}, default)
    assert (asked.deadline_s, asked.target_fps, asked.min_fps) == (0.2, 12, 12)
    assert limits.parse({"fps": 12, "min_fps": 4}, default).min_fps == 4
    for bad, words in [
        ({"deadline_ms": 10}, "between 50 and 2000"),
        ({"fps": 100}, "at most 30"),
        ({"fps": 10**400}, "at most 30"),
        ({"fps": True}, "slo.fps"),
        ({"fps": 10, "min_fps": 20}, "must not be above"),
        ({"latency": 1}, "unknown slo field"),
        ([], "JSON object"),
    ]:
        with pytest.raises(ConfigError, match=words):
            limits.parse(bad, default)


def _admission(admitted: bool, utilization: float) -> Admission:
    return Admission(admitted=admitted, fps=10.0, utilization=utilization, step_seconds=0.1)


def test_replicas_are_offered_a_session_by_predicted_cost_not_by_count():
    # replica 0: one costly stream (0.9 with the new one); replica 1: three cheap ones (0.4); replica 2 refuses
    predictions = [(_admission(True, 0.9), 1), (_admission(True, 0.4), 3), (_admission(False, 0.1), 0)]
    assert replica_order(predictions) == [1, 0, 2]


def test_replica_ties_go_to_fewer_sessions_then_the_lower_index():
    predictions = [(_admission(True, 0.5), 2), (_admission(True, 0.5), 1), (_admission(True, 0.5), 1)]
    assert replica_order(predictions) == [1, 2, 0]
    assert replica_order([]) == []


def test_a_latency_floor_counts_against_the_deadline():
    """Pipeline stages add the ring's other stages to every frame: a stream that fits alone may not fit once that counts."""
    model = _model()  # 2 rows: 0.03 s
    slo = Slo(target_fps=5, deadline_s=0.2, min_fps=1)
    assert admit(model, [], Demand("256", 2, slo)).admitted
    refused = admit(model, [], Demand("256", 2, slo, latency_floor_s=0.18))
    assert not refused.admitted and "filling the pipeline stages" in refused.reason
    crowded = admit(model, [Demand("256", 2, slo, latency_floor_s=0.12)], Demand("256", 2, slo))
    assert not crowded.admitted  # two such steps no longer fit in what the staged session's deadline leaves


def test_a_stream_whose_step_makes_several_frames_runs_the_model_that_many_times_less_often():
    """A 10 fps video stream of 4-frame chunks steps 2.5 times a second: it costs a quarter of a frame-per-step stream."""
    model = _model()
    per_frame = Demand("256", 2, GUARANTEED)
    per_chunk = Demand("256", 2, GUARANTEED, frames_per_step=4)
    assert per_chunk.steps_per_second == pytest.approx(2.5)
    one = admit(model, [], per_frame)
    chunked = admit(model, [], per_chunk)
    assert chunked.utilization == pytest.approx(one.utilization / 4)
    assert chunked.fps == GUARANTEED.target_fps, "the rate a stream is promised stays in frames per second"
    crowded = [Demand("256", 2, GUARANTEED) for _ in range(4)]
    assert not admit(model, crowded, Demand("256", 2, GUARANTEED)).admitted
    assert admit(model, [Demand("256", 2, GUARANTEED, frames_per_step=4) for _ in range(4)], per_chunk).admitted
