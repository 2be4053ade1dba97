"""Admission control: does a new session fit without making the admitted ones miss their objectives?

Each session *demands* ``rate`` steps per second of ``rows`` rows in its
bucket: its target frame rate over the frames one step consumes or makes
(an image call's frames; a video chunk's, so a 30 fps video stream of
4-frame chunks runs the model 7.5 times a second). When sessions share steps, a step of B rows costs L(B), so one
session's frame costs its share ``rows/B · L(B)`` of it: the marginal price
of batching, which is what lets a GPU serve many streams. The worker is
*utilised* ``U = Σ rate · passes · rows/B · L(B)`` seconds per second.
When U exceeds ``headroom`` every session slows down by the same factor
``headroom / U`` (the step policy shares steps evenly under overload).

A new session is admitted when, with it:

- its own step alone fits its deadline;
- when it would share the model, a frame that just missed a step carrying
  everyone still makes it in the next one: ``2 · L(everyone) ≤`` every
  session's deadline (a server's only session is never refused for this:
  refusing it would serve nobody);
- every session's predicted rate stays at or above its ``min_fps``.

Otherwise it is refused with the numbers and what to change.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from .latency import LatencyModel
from .slo import Slo

HEADROOM = 0.9


@dataclass(frozen=True)
class Demand:
    """What one session asks of the worker.

    ``latency_floor_s``: what a frame of this session waits beyond its
    steps, whatever the load (pipeline stages: the ring's other stages);
    it counts against the session's deadline.
    """

    bucket: Hashable
    rows: int
    slo: Slo
    passes: int = 1
    latency_floor_s: float = 0.0
    frames_per_step: int = 1  # frames one model step consumes (or makes): a video chunk's, an image call's

    @property
    def work(self) -> int:
        return self.rows * self.passes

    @property
    def steps_per_second(self) -> float:
        """Model steps a second at the target frame rate."""
        return self.slo.target_fps / max(1, self.frames_per_step)


@dataclass(frozen=True)
class Admission:
    """The answer: admitted or not, the rate it will get, and why (for the 503 body and the log)."""

    admitted: bool
    fps: float  # predicted rate of the new session
    utilization: float  # predicted seconds of model time per second, everyone at their target rate
    step_seconds: float  # predicted step carrying every session once
    reason: str | None = None

    def to_json(self) -> dict:
        return {
            "admitted": self.admitted,
            "predicted_fps": round(self.fps, 2),
            "predicted_utilization": round(self.utilization, 3),
            "predicted_step_ms": round(self.step_seconds * 1000, 1),
            "reason": self.reason,
        }


def utilization(model: LatencyModel, demands: Sequence[Demand]) -> float:
    """Seconds of model time per second that ``demands`` need at their target rates."""
    rows: dict[Hashable, int] = defaultdict(int)
    for d in demands:
        rows[d.bucket] += d.rows
    total = 0.0
    for d in demands:
        batch = rows[d.bucket]
        if batch > 0:
            total += d.steps_per_second * d.passes * model.predict(d.bucket, batch) * d.rows / batch
    return total


def full_step_seconds(model: LatencyModel, demands: Sequence[Demand]) -> float:
    """A step that carries one unit of every session."""
    rows: dict[Hashable, int] = defaultdict(int)
    passes: dict[Hashable, int] = defaultdict(int)
    for d in demands:
        rows[d.bucket] += d.rows
        passes[d.bucket] = max(passes[d.bucket], d.passes)
    return sum(passes[b] * model.predict(b, rows[b]) for b in rows)


def predicted_rates(model: LatencyModel, demands: Sequence[Demand], headroom: float = HEADROOM) -> list[float]:
    """Each session's frame rate when they all run together (target rates, scaled down evenly under overload)."""
    load = utilization(model, demands)
    scale = 1.0 if load <= headroom else headroom / load
    return [d.slo.target_fps * scale for d in demands]


def admit(model: LatencyModel, admitted: Sequence[Demand], new: Demand, *, headroom: float = HEADROOM) -> Admission:
    """Decide on ``new`` given the ``admitted`` sessions (see module docstring)."""
    everyone = [*admitted, new]
    load = utilization(model, everyone)
    step = full_step_seconds(model, everyone)
    rates = predicted_rates(model, everyone, headroom)

    def refuse(reason: str) -> Admission:
        return Admission(False, rates[-1], load, step, reason)

    alone = new.passes * model.predict(new.bucket, new.rows) + new.latency_floor_s
    if alone > new.slo.deadline_s:
        floor = f" (of which {new.latency_floor_s * 1000:.0f} ms filling the pipeline stages)" if new.latency_floor_s else ""
        return refuse(
            f"one step of this stream alone is predicted to take {alone * 1000:.0f} ms{floor}, over its "
            f"{new.slo.deadline_s * 1000:.0f} ms deadline; use a lower resolution, fewer steps or fewer frames per call"
        )
    tightest = min(everyone, key=lambda d: d.slo.deadline_s - d.latency_floor_s)
    shortest = tightest.slo.deadline_s - tightest.latency_floor_s
    if admitted and 2 * step > shortest:
        return refuse(
            f"with this stream a step carrying every session is predicted to take {step * 1000:.0f} ms, and a frame "
            f"may wait for one such step before its own: over the shortest deadline of {shortest * 1000:.0f} ms; "
            "try again when fewer sessions are running"
        )
    for demand, rate in zip(admitted, rates):
        if rate < demand.slo.min_fps - 1e-9:
            return refuse(
                f"the server is at capacity: with this stream every session would slow to about {rate:.1f} fps, "
                f"below the {demand.slo.min_fps:g} fps a running session was promised; try again later"
            )
    if rates[-1] < new.slo.min_fps - 1e-9:
        return refuse(
            f"the server is at capacity: this stream would get about {rates[-1]:.1f} fps, below the "
            f"{new.slo.min_fps:g} fps it asked for; ask for less with \"slo\": {{\"min_fps\": N}} or try again later"
        )
    return Admission(True, rates[-1], load, step)


def replica_order(predictions: Sequence[tuple[Admission, int]]) -> list[int]:
    """The order in which to offer a new session to replicas, from each one's prediction with it added.

    ``predictions[i]`` is replica i's :class:`Admission` for the new session
    and its current session count. Replicas that admit it come first, then
    the lowest predicted utilisation (sessions spread by what they cost,
    not by count: one 512x512 stream can weigh more than three at 128x128),
    then the fewest sessions, then the lowest index (a stable answer).
    """
    return sorted(range(len(predictions)), key=lambda i: (not predictions[i][0].admitted, predictions[i][0].utilization, predictions[i][1], i))
