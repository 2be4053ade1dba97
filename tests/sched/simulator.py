"""A fake-clock server for policy tests: sessions send frames at fixed rates into latest-frame slots,
one worker runs the steps :func:`plan_step` picks, taking the time a "true" latency curve says.

The latency model the policy sees is fitted from the simulated steps exactly as the real worker fits it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from streamgen.sched import Candidate, LatencyModel, Slo, plan_step, served_mark


@dataclass
class SimSession:
    session_id: str
    fps_in: float
    slo: Slo
    rows: int = 1
    bucket: str = "a"
    start: float = 0.0
    frames_per_step: int = 1
    pending: list[float] = field(default_factory=list)
    next_arrival: float = 0.0
    last_served: float | None = None
    served_arrival: float | None = None
    deferred: int = 0
    outputs: list[float] = field(default_factory=list)  # completion times
    latencies: list[float] = field(default_factory=list)
    misses: int = 0
    slot_drops: int = 0

    def __post_init__(self) -> None:
        self.next_arrival = self.start


@dataclass
class SimResult:
    sessions: dict[str, SimSession]
    batches: list[int]
    duration: float

    def fps(self, session_id: str, since: float = 0.0) -> float:
        s = self.sessions[session_id]
        count = sum(1 for t in s.outputs if t >= since)
        return count / (self.duration - since)

    @property
    def misses(self) -> int:
        return sum(s.misses for s in self.sessions.values())


def simulate(
    sessions: list[SimSession],
    true_latency: Callable[[int], float],
    duration: float,
    *,
    model: LatencyModel | None = None,
    joins: dict[float, SimSession] | None = None,
) -> SimResult:
    model = model or LatencyModel()
    live = {s.session_id: s for s in sessions}
    pending_joins = sorted((joins or {}).items())
    now, batches = 0.0, []
    while now < duration:
        while pending_joins and pending_joins[0][0] <= now:
            joined = pending_joins.pop(0)[1]
            live[joined.session_id] = joined
        for s in live.values():
            _arrive(s, now)
        candidates = [
            Candidate(s.session_id, s.bucket, s.rows, tuple(s.pending), s.slo, s.frames_per_step, 1, s.last_served, s.served_arrival, s.deferred)
            for s in live.values()
        ]
        plan = plan_step(now, candidates, model)
        for session_id, count in plan.drops:
            del live[session_id].pending[:count]
        for session_id in plan.deferred:
            live[session_id].deferred += 1
        if plan.empty:
            wakes = [s.next_arrival for s in live.values()] + ([plan.wake_at] if plan.wake_at else [])
            wakes += [t for t, _ in pending_joins]
            now = max(now + 1e-6, min(wakes))
            continue
        rows = sum(live[i].rows for i in plan.sessions)
        seconds = true_latency(rows)
        taken = {}
        for session_id in plan.sessions:
            s = live[session_id]
            taken[session_id] = s.pending[: s.frames_per_step]
            del s.pending[: s.frames_per_step]
            s.last_served, s.served_arrival, s.deferred = now, served_mark(s.slo, s.served_arrival, taken[session_id][-1]), 0
        now += seconds
        model.observe(live[plan.sessions[0]].bucket, rows, seconds)
        batches.append(len(plan.sessions))
        for session_id, arrivals in taken.items():
            s = live[session_id]
            s.outputs.append(now)
            latency = now - arrivals[0]
            s.latencies.append(latency)
            s.misses += latency > s.slo.deadline_s + 1e-9
    return SimResult(live, batches, duration)


def _arrive(s: SimSession, now: float) -> None:
    period = 1.0 / s.fps_in
    while s.next_arrival <= now:
        s.pending.append(s.next_arrival)
        s.next_arrival += period
        while len(s.pending) > s.frames_per_step:  # latest-frame slot
            s.pending.pop(0)
            s.slot_drops += 1


def linear(fixed: float, per_row: float) -> Callable[[int], float]:
    return lambda rows: fixed + per_row * rows


def knee_curve(flat: float, knee: int, per_row: float) -> Callable[[int], float]:
    """GPU-like: flat up to ``knee`` rows, then linear."""
    return lambda rows: flat + per_row * max(0, rows - knee)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]
