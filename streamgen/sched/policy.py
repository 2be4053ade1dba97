"""Which sessions' frames go into the next model step: earliest deadline first, batched up to the knee.

Every ready session offers one *unit* of work: its next step's frames (image
models) or the step that completes its next chunk (video). A unit adds
``rows`` rows to each of ``passes`` model passes (1 pass for stream batch,
n passes for sequential denoising) and is due at ``arrival of its oldest
frame + deadline``.

:func:`plan_step` builds the next step:

1. a session whose input runs faster than its target fps is thinned: its
   newest frame is eligible once it arrived, or the clock reached, one
   target period after the arrival of the last frame served (spacing by
   arrival time, not by service time, so queueing jitter does not push the
   rate below the target; and a last frame before a pause is not held
   forever). ``wake_at`` says when the next held frame becomes eligible;
2. pending frames older than the step needs whose deadline can no longer be
   met are dropped (a fresher frame will be shown instead);
3. units are taken longest-unserved first, then by deadline (a session left
   out ``max_defer`` plans in a row goes before all, so nobody starves); a unit joins the batch when the
   predicted step still finishes before the deadline of every unit already in
   it that was on time. A unit that is late even alone joins as long as it
   makes no on-time unit late. Under overload (every unit in the batch is
   *behind*: served less often than its target fps) every behind session
   joins: they share each step, a bigger step is the most throughput the
   model gives, and every session's fps falls by the same factor;
4. past the knee of the measured latency curve (more rows buy little
   throughput) a unit that can still meet its deadline in the next step is
   deferred instead of stretching this one.

:func:`choose_video_mode` picks stream batch or sequential denoising for a
video session from the same latency model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from .latency import LatencyModel
from .slo import Slo

MAX_DEFER = 3
BEHIND_FACTOR = 1.5  # served less often than every 1.5 target periods: the session is behind
DUE_TOLERANCE = 0.02  # a session whose next frame is due within 2% of a period counts as due


@dataclass(frozen=True)
class Candidate:
    """One session as the policy sees it."""

    session_id: str
    bucket: Hashable
    rows: int
    arrivals: tuple[float, ...]  # pending frames' arrival times, oldest first
    slo: Slo
    frames_per_step: int = 1
    passes: int = 1
    last_served: float | None = None  # when its last step started (fairness: longest waiting first)
    served_arrival: float | None = None  # arrival time of the newest frame its last step used (fps cap)
    deferred: int = 0  # plans in a row that left it out while it was ready

    @property
    def ready(self) -> bool:
        return len(self.arrivals) >= self.frames_per_step


@dataclass(frozen=True)
class StepPlan:
    """The next step: the sessions in it (in priority order) and what the policy expects of it."""

    sessions: tuple[str, ...] = ()
    rows: int = 0
    predicted_seconds: float = 0.0
    drops: tuple[tuple[str, int], ...] = ()  # (session, how many of its oldest pending frames to drop)
    late: tuple[str, ...] = ()  # sessions in the step predicted to miss their deadline
    deferred: tuple[str, ...] = ()  # ready sessions left for a later step
    throttled: tuple[str, ...] = ()  # ready sessions whose newest frame comes too soon for their target fps
    wake_at: float | None = None  # when the first throttled session becomes eligible

    @property
    def empty(self) -> bool:
        return not self.sessions


@dataclass
class _Unit:
    candidate: Candidate
    due: float  # deadline of the oldest frame the step will use
    alone: float  # predicted seconds of a step with this unit only
    forced: bool
    behind: bool  # served less often than its target fps asks (the server is overloaded for it)
    on_time: bool = field(default=False)


def plan_step(
    now: float,
    candidates: Sequence[Candidate],
    model: LatencyModel,
    *,
    max_rows: int | None = None,
    max_defer: int = MAX_DEFER,
) -> StepPlan:
    """The next step for ``candidates`` at time ``now`` (see module docstring)."""
    units: list[_Unit] = []
    drops: list[tuple[str, int]] = []
    throttled: list[str] = []
    wake_at: float | None = None
    for c in sorted(candidates, key=lambda c: c.session_id):
        if not c.ready:
            continue
        eligible_at = _eligible_at(c)
        if eligible_at is not None and now < eligible_at:
            throttled.append(c.session_id)
            wake_at = eligible_at if wake_at is None else min(wake_at, eligible_at)
            continue
        alone = _seconds(model, {c.bucket: (c.rows, c.passes)})
        dropped = _stale_frames(c, now + alone)
        if dropped:
            drops.append((c.session_id, dropped))
        due = c.arrivals[dropped] + c.slo.deadline_s
        behind = c.last_served is not None and now - c.last_served > BEHIND_FACTOR * c.slo.frame_period
        units.append(_Unit(c, due, alone, forced=c.deferred >= max_defer, behind=behind))
    if not units:
        return StepPlan(drops=tuple(drops), throttled=tuple(throttled), wake_at=wake_at)
    units.sort(key=_priority)
    chosen, deferred = _fill(now, units, model, max_rows)
    shape = _shape([u.candidate for u in chosen])
    seconds = _seconds(model, shape)
    finish = now + seconds
    return StepPlan(
        sessions=tuple(u.candidate.session_id for u in chosen),
        rows=sum(u.candidate.rows for u in chosen),
        predicted_seconds=seconds,
        drops=tuple(drops),
        late=tuple(u.candidate.session_id for u in chosen if finish > u.due),
        deferred=tuple(u.candidate.session_id for u in deferred),
        throttled=tuple(throttled),
        wake_at=wake_at,
    )


def _fill(now: float, units: list[_Unit], model: LatencyModel, max_rows: int | None) -> tuple[list[_Unit], list[_Unit]]:
    chosen: list[_Unit] = [units[0]]
    deferred: list[_Unit] = []
    units[0].on_time = now + units[0].alone <= units[0].due
    for unit in units[1:]:
        trial = [u.candidate for u in chosen] + [unit.candidate]
        if max_rows is not None and sum(c.rows for c in trial) > max_rows:  # a hard limit (compiled engines): even a forced unit waits
            deferred.append(unit)
            continue
        finish = now + _seconds(model, _shape(trial))
        hurts_others = any(u.on_time and finish > u.due for u in chosen)
        fits = finish <= unit.due
        late_anyway = now + unit.alone > unit.due
        overloaded = unit.behind and all(u.behind for u in chosen)
        if unit.forced or overloaded or (not hurts_others and (fits or late_anyway)):
            if fits and not unit.forced and _past_knee(model, trial, unit) and _can_wait(now, chosen, unit, model):
                deferred.append(unit)
                continue
            unit.on_time = fits
            chosen.append(unit)
        else:
            deferred.append(unit)
    return chosen, deferred


def _priority(unit: _Unit) -> tuple:
    """Forced first, then the session served longest ago (never served: first of all), then the earliest deadline.

    Service order, not deadline order, leads: a latest-frame slot replaces a
    waiting frame by a fresher one, so a session that keeps losing would keep
    getting a fresh, later deadline and never become the most urgent.
    """
    c = unit.candidate
    served = float("-inf") if c.last_served is None else c.last_served
    return (not unit.forced, served, unit.due, c.session_id)


def served_mark(slo: Slo, previous: float | None, newest_arrival: float) -> float:
    """What to remember as a served step's ``served_arrival``: the frame's arrival, or its slot on the
    target-fps grid when it was held and ran on time rather than on arrival (so holding does not raise the rate)."""
    if previous is None:
        return newest_arrival
    return max(newest_arrival, previous + slo.frame_period * (1.0 - DUE_TOLERANCE))


def _eligible_at(c: Candidate) -> float | None:
    """When the newest pending frame may run without exceeding the target fps (None: now)."""
    if c.served_arrival is None:
        return None
    due = c.served_arrival + c.slo.frame_period * (1.0 - DUE_TOLERANCE)
    return None if c.arrivals[-1] >= due else due


def _stale_frames(c: Candidate, finish_alone: float) -> int:
    """How many of the oldest pending frames (beyond the ones a step needs) cannot meet their deadline."""
    spare = len(c.arrivals) - c.frames_per_step
    count = 0
    while count < spare and c.arrivals[count] + c.slo.deadline_s < finish_alone:
        count += 1
    return count


def _shape(candidates: Sequence[Candidate]) -> dict[Hashable, tuple[int, int]]:
    """Rows per pass and passes, per bucket: sessions of one bucket share each pass."""
    rows: dict[Hashable, int] = defaultdict(int)
    passes: dict[Hashable, int] = defaultdict(int)
    for c in candidates:
        rows[c.bucket] += c.rows
        passes[c.bucket] = max(passes[c.bucket], c.passes)
    return {b: (rows[b], passes[b]) for b in rows}


def _seconds(model: LatencyModel, shape: dict[Hashable, tuple[int, int]]) -> float:
    return sum(passes * model.predict(bucket, rows) for bucket, (rows, passes) in shape.items())


def _past_knee(model: LatencyModel, trial: Sequence[Candidate], unit: _Unit) -> bool:
    knee = model.knee(unit.candidate.bucket)
    if knee is None:
        return False
    rows = sum(c.rows for c in trial if c.bucket == unit.candidate.bucket)
    return rows > knee


def _can_wait(now: float, chosen: list[_Unit], unit: _Unit, model: LatencyModel) -> bool:
    """Would ``unit`` still meet its deadline in the step after this one?"""
    this_step = _seconds(model, _shape([u.candidate for u in chosen]))
    return now + this_step + unit.alone <= unit.due


# ---------------------------------------------------------------------- video
@dataclass(frozen=True)
class VideoModeChoice:
    """Stream batch or sequential for a video session, with the numbers behind it."""

    stream_batch: bool
    stream_batch_latency: float
    sequential_latency: float
    stream_batch_chunk_seconds: float
    sequential_chunk_seconds: float


def choose_video_mode(
    model: LatencyModel,
    bucket: Hashable,
    *,
    steps: int,
    chunk_period_s: float,
    deadline_s: float,
) -> VideoModeChoice:
    """Pick the denoising mode of a video session from the latency model.

    Stream batch runs one forward of ``steps`` rows per chunk, but a chunk's
    output comes ``steps − 1`` chunks after it entered: latency ≈
    (steps − 1)·chunk_period + L(steps). Sequential runs ``steps`` forwards
    of one row: latency ≈ steps·L(1), throughput 1/(steps·L(1)) chunks per
    second. Both meet the deadline → the one that spends less model time per
    chunk (leaves the most room for other sessions); one does → that one;
    neither → the lower latency.
    """
    batch_chunk = model.predict(bucket, steps)
    seq_chunk = steps * model.predict(bucket, 1)
    # A stream batch that cannot keep up with the input waits a chunk time per step, not a chunk period.
    batch_latency = (steps - 1) * max(chunk_period_s, batch_chunk) + batch_chunk
    seq_latency = seq_chunk
    batch_ok, seq_ok = batch_latency <= deadline_s, seq_latency <= deadline_s
    if batch_ok and seq_ok:
        stream_batch = batch_chunk <= seq_chunk
    elif batch_ok != seq_ok:
        stream_batch = batch_ok
    else:
        stream_batch = batch_latency < seq_latency
    return VideoModeChoice(stream_batch, batch_latency, seq_latency, batch_chunk, seq_chunk)
