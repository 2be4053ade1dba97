"""``ModelWorker``: runs one model replica in threads of its own, never on the event loop.

Three threads hand work along with bounded, one-deep hand-offs, so the model
is never idle waiting for a conversion and nothing queues without bound:

- **input** asks the scheduler (:func:`streamgen.sched.plan_step`) which
  sessions go into the next step, takes their frames from the latest-frame
  slots and converts them (decode, scale, crop → uint8 tensor). It starts
  just before the step in flight is predicted to end, so the frames it takes
  are as fresh as they can be and the next step starts at once;
- **model** runs the prepared step through
  :func:`~streamgen.server.worker.transaction.step_with_report` (a step that
  raises leaves every session as it was; only the failing session is told),
  applies session resets between steps, and feeds each step's measured time
  to the latency model the scheduler and admission control use. A pipeline
  that finishes work between steps (pipeline stages: a step hands chunks
  over and returns) says so through ``add_output_listener``; the model
  thread then collects the frames at once instead of at the next step;
- **output** converts the results to one ``VideoFrame`` per consumer and
  hands them to the event loop.

A fourth, the **setup** :class:`~streamgen.server.worker.jobs.JobThread`, builds new
sessions' states and encodes prompts of live updates beside the step, so
neither waits for a step and no step waits for a text encoder.

:meth:`stop` does not wait for a step in flight for more than a moment: the
threads are daemons and a shutdown must not hang on a slow step.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


from ...errors import CapacityError, InputError, StreamgenError
from ...pipeline.contract import Capabilities, StepShape, StreamShape
from ...sched import Admission, Candidate, Demand, LatencyModel, Slo, StepPlan, admit, choose_video_mode, plan_step, served_mark, utilization
from .frame_convert import OutputFrame, frames_to_tensor, to_model_device, to_output_frames
from .generated_timing import spread_chunk_times
from .jobs import STOPPED, JobThread, run_job
from ..metrics import ServerMetrics
from .shared_latency import SharedLatency
from ..sessions.slot import FrameTag, LatestFrames
from .step_shape import bucket_work, engine_row_limit
from .transaction import Outcome, StepEntry, step_with_report

logger = logging.getLogger(__name__)

__all__ = ["ModelWorker", "OutputFrame", "Reservation", "WorkerClient"]

STOP_JOIN_SECONDS = 1.0
PREP_DECAY = 0.2
IDLE_WAIT = 0.5


class WorkerClient(Protocol):
    """What the worker needs from a session."""

    slot: LatestFrames
    state: Any
    closed: bool

    def consumer_count(self) -> int: ...

    def fallback_pts(self) -> int: ...

    def deliver(self, frames: list[OutputFrame], produced_at: float) -> None: ...

    def fail(self, error: BaseException, is_user_error: bool) -> None: ...


@dataclass(eq=False)
class Reservation:
    """A place admission control granted to a session being set up (its demand counts from now on)."""

    demand: Demand
    shape: StreamShape
    admission: Admission


@dataclass(eq=False)
class _Member:
    """The worker's scheduling record of one attached session (no pipeline state here).

    ``demand`` is what the session costs now: recomputed from its live state
    at every plan, and at once when a live change is admitted (admission
    counts it from then on, not the demand frozen when it was admitted).
    """

    client: WorkerClient
    reservation: Reservation
    key: str
    demand: Demand
    last_served: float | None = None
    served_arrival: float | None = None
    deferred: int = 0
    resets: list[concurrent.futures.Future] = field(default_factory=list)
    flush: concurrent.futures.Future | None = None  # an end-of-stream drain asked for (see ModelWorker.flush)

    @property
    def slo(self) -> Slo:
        return self.reservation.demand.slo


@dataclass
class _Prepared:
    members: list[_Member]
    entries: list[StepEntry]
    shapes: list[StepShape]
    plan: StepPlan


@dataclass
class _Finished:
    members: list[_Member]
    outcomes: list[Outcome]
    done: concurrent.futures.Future | None = None  # resolved on the event loop once these frames were handed to it


class ModelWorker:
    """One pipeline replica and its threads (see module docstring)."""

    def __init__(
        self, pipeline: Any, name: str, metrics: ServerMetrics, *, latency: LatencyModel | None = None, shared: SharedLatency | None = None
    ) -> None:
        self.pipeline = pipeline
        self.name = name
        self._shared = shared
        self.max_rows = engine_row_limit(pipeline)  # compiled engines take at most this many rows per call
        self.latency = latency or LatencyModel(bucket_work=bucket_work, prior=shared)
        self._metrics = metrics
        self._cond = threading.Condition()
        self._members: list[_Member] = []
        self._reservations: list[Reservation] = []
        self._model_jobs: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._prepared: _Prepared | None = None
        self._converting: list[_Member] = []  # picked by the input thread, frames being converted (not yet prepared)
        self._finished: deque[_Finished] = deque()
        self._step_started: float | None = None
        self._step_predicted = 0.0
        self._prep_seconds = 0.0
        self._stopping = False
        self._loop = None
        self._keys = 0
        self._outputs_waiting = False
        self.capabilities = Capabilities.of(pipeline)  # once, at load: never probed again
        if self.capabilities.output_listener:  # a pipeline that finishes work between steps (pipeline stages): collect it at once
            pipeline.add_output_listener(self._pipeline_output)
        self.setup = JobThread(f"streamgen-setup-{name}")
        self._threads = [
            threading.Thread(target=self._guard(self._input_loop), name=f"streamgen-input-{name}", daemon=True),
            threading.Thread(target=self._guard(self._model_loop), name=f"streamgen-model-{name}", daemon=True),
            threading.Thread(target=self._guard(self._output_loop), name=f"streamgen-output-{name}", daemon=True),
        ]

    # ------------------------------------------------------------ event loop side
    def start(self, loop) -> None:
        self._loop = loop
        self.setup.start()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop every thread; waits about a second at most, even when a step is in flight."""
        with self._cond:
            self._stopping = True
            jobs = list(self._model_jobs)
            self._model_jobs.clear()
            resets = [f for m in self._members for f in m.resets] + [m.flush for m in self._members if m.flush is not None]
            self._cond.notify_all()
        for future in [f for _, f in jobs] + resets:
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError(STOPPED))
        self.setup.stop(STOP_JOIN_SECONDS)
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the threads to end after :meth:`stop`; True when all have."""
        deadline = time.monotonic() + timeout
        for thread in [*self._threads, self.setup.thread]:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in [*self._threads, self.setup.thread])

    @property
    def alive(self) -> bool:
        """Every thread of the replica is running (a readiness check: a dead thread serves nobody)."""
        return not self._stopping and all(t.is_alive() for t in [*self._threads, self.setup.thread])

    def utilization(self) -> float:
        """Seconds of model time per second the admitted sessions (and reserved places) need at their target rates."""
        with self._cond:
            return utilization(self.latency, self._demands_locked())

    @property
    def load(self) -> int:
        with self._cond:
            return len(self._members) + len(self._reservations)

    def demand_of(self, shape: StreamShape, slo: Slo) -> Demand:
        """What a session of ``shape`` asks of this replica (a staged pipeline adds its fill latency)."""
        unit = shape.unit()
        floor = self.pipeline.latency_floor(shape) if self.capabilities.staged else 0.0
        return Demand(unit.bucket, unit.rows, slo, unit.passes, floor, frames_per_step=shape.frames_per_unit)

    def predict(self, shape: StreamShape, slo: Slo) -> Admission:
        """What admission control would answer for one more session of ``shape`` here (nothing is reserved)."""
        demand = self.demand_of(shape, slo)
        with self._cond:
            return admit(self.latency, self._demands_locked(), demand)

    def reserve(self, shape: StreamShape, slo: Slo) -> Reservation:
        """Admission control: a place for a new session, or CapacityError with the reason (and the numbers)."""
        demand = self.demand_of(shape, slo)
        with self._cond:
            answer = admit(self.latency, self._demands_locked(), demand)
            if not answer.admitted:
                raise CapacityError(answer.reason or "the server is at capacity", details=answer.to_json())
            reservation = Reservation(demand, shape, answer)
            self._reservations.append(reservation)
            return reservation

    def admit_change(self, client: WorkerClient, shape: StreamShape) -> None:
        """A live change would give ``client``'s session ``shape``: admitted like an offer, or CapacityError with the numbers.

        A change that costs no more than what the session costs now is always
        admitted; one that costs more must keep every other session within its
        deadline and minimum rate, exactly as a new session must.
        """
        with self._cond:
            member = self._member(client)
            if member is None:
                return
            demand = self.demand_of(shape, member.slo)
            if demand.bucket == member.demand.bucket and demand.work <= member.demand.work:
                member.demand = demand
                return
            answer = admit(self.latency, self._demands_locked(excluding=member), demand)
            if not answer.admitted:
                raise CapacityError(
                    f"this change would make the stream cost the model more than the server can give it now: {answer.reason}",
                    details=answer.to_json(),
                )
            member.demand = demand
            member.reservation = Reservation(demand, shape, answer)

    def _demands_locked(self, excluding: _Member | None = None) -> list[Demand]:
        """What every attached session costs now, and the places reserved for sessions being set up."""
        return [m.demand for m in self._members if m is not excluding] + [r.demand for r in self._reservations]

    def choose_video_mode(self, shape: StreamShape, slo: Slo) -> bool:
        """Stream batch (True) or sequential for a video stream of ``shape``, from the latency model (under its lock)."""
        chunk_period = shape.frames_per_unit / slo.target_fps  # input frames one step consumes: the model's fact
        with self._cond:
            choice = choose_video_mode(self.latency, shape.bucket, steps=shape.steps, chunk_period_s=chunk_period, deadline_s=slo.deadline_s)
        return choice.stream_batch

    def release(self, reservation: Reservation) -> None:
        with self._cond:
            if reservation in self._reservations:
                self._reservations.remove(reservation)

    def attach(self, client: WorkerClient, reservation: Reservation) -> None:
        with self._cond:
            if reservation in self._reservations:
                self._reservations.remove(reservation)
            self._keys += 1
            self._members.append(_Member(client, reservation, f"{self._keys:08d}", reservation.demand))
            self._cond.notify_all()

    def detach(self, client: WorkerClient) -> None:
        with self._cond:
            for member in [m for m in self._members if m.client is client]:
                self._members.remove(member)
                for future in [*member.resets, *([member.flush] if member.flush is not None else [])]:
                    if future.set_running_or_notify_cancel():
                        future.set_exception(RuntimeError("the session has ended"))
            self._cond.notify_all()

    def notify(self) -> None:
        """A slot has new frames."""
        with self._cond:
            self._cond.notify_all()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` on the setup thread, beside the model step (building states, encoding prompts)."""
        return self.setup.submit(fn, *args)

    def run_between_steps(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` on the model thread between two steps (warm-up: it must not race a step)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                future.set_exception(RuntimeError(STOPPED))
                return future
            self._model_jobs.append((lambda: fn(*args), future))
            self._cond.notify_all()
        return future

    def request_reset(self, client: WorkerClient) -> concurrent.futures.Future:
        """Forget a session's history before its next step (the step in flight, if any, finishes first)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            member = self._member(client)
            if member is None or self._stopping:
                future.set_exception(RuntimeError("the session has ended" if member is None else STOPPED))
                return future
            member.resets.append(future)
            self._cond.notify_all()
        return future

    def flush(self, client: WorkerClient) -> concurrent.futures.Future:
        """End of a finite stream: run the pipeline's drain (``flush``) for ``client`` once its waiting frames have been stepped.

        The drained frames go out like a step's; the future resolves, on the
        event loop, once they have been handed to it (False: the pipeline
        cannot flush, nothing was inside). The one end-of-stream drain of the
        contract, as ``streamgen run`` uses it.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            member = self._member(client)
            if member is None or self._stopping:
                future.set_exception(RuntimeError("the session has ended" if member is None else STOPPED))
                return future
            if not self.capabilities.flush:
                future.set_result(False)
                return future
            member.flush = future
            self._cond.notify_all()
        return future

    def describe_steering(self) -> dict[str, Any] | None:
        """What sessions of this worker's model may steer with (ControlNets, IP-Adapter, preprocessors), or None."""
        return self.pipeline.describe_steering() if self.capabilities.steerable else None

    def describe(self) -> dict[str, Any]:
        """For /health: sessions, the step in flight, and the fitted latency curve (ms per row count) of each bucket."""
        with self._cond:
            buckets = {}
            for member in self._members:
                bucket = member.demand.bucket
                samples = self.latency.samples(bucket)
                buckets["x".join(map(str, bucket[1:])) if isinstance(bucket, tuple) else str(bucket)] = {
                    str(rows): round(seconds * 1000, 2) for rows, seconds in samples.items()
                }
            return {
                "name": self.name,
                "sessions": len(self._members),
                "stepping": self._step_started is not None,
                "step_in_flight_s": None if self._step_started is None else round(time.monotonic() - self._step_started, 3),
                "predicted_step_ms": round(self._step_predicted * 1000, 2),
                **({"stages": self.pipeline.describe_stages()} if self.capabilities.staged else {}),
                "step_ms_by_rows": buckets,
            }

    def admitted(self, client: WorkerClient) -> Reservation | None:
        """The place admission control granted ``client`` (its demand and shape), while it is attached."""
        with self._cond:
            member = self._member(client)
            return member.reservation if member else None

    def admitted_fps(self, client: WorkerClient) -> float | None:
        with self._cond:
            member = self._member(client)
            return member.reservation.admission.fps if member else None

    def _member(self, client: WorkerClient) -> _Member | None:
        return next((m for m in self._members if m.client is client), None)

    # ------------------------------------------------------------------ threads
    def _guard(self, loop_body: Callable[[], bool]) -> Callable[[], None]:
        """Run a thread's cycle until it says stop; a bug in one cycle is logged, not fatal to every stream."""

        def run() -> None:
            while True:
                try:
                    if not loop_body():
                        return
                except Exception:  # noqa: BLE001
                    logger.exception("model worker %s: %s failed; carrying on", self.name, threading.current_thread().name)
                    time.sleep(0.01)

        return run

    # -- input -----------------------------------------------------------------
    def _input_loop(self) -> bool:
        with self._cond:
            self._cond.wait_for(self._input_may_plan, timeout=self._input_wait())
            if self._stopping:
                return False
            if not self._input_may_plan():
                return True
            now = time.monotonic()
            picked, plan = self._plan_locked(now)
            self._converting = [member for member, _, _ in picked]  # their frames left the slots: not drained before they are stepped
            if not picked:
                # Throttled or nothing ready: the next frame, or the first throttled frame's time, wakes us.
                wait = IDLE_WAIT if plan.wake_at is None else min(IDLE_WAIT, max(0.001, plan.wake_at - now))
                self._cond.wait(wait)
                return True
        started = time.perf_counter()
        prepared = self._convert(picked, plan)
        elapsed = time.perf_counter() - started
        with self._cond:
            self._prep_seconds += PREP_DECAY * (elapsed - self._prep_seconds)
            if prepared.entries:
                self._prepared = prepared
            self._converting = []
            self._cond.notify_all()
        return True

    def _input_may_plan(self) -> bool:
        """Time to prepare the next step: the hand-off is free and the step in flight is about to end."""
        if self._stopping:
            return True
        if self._prepared is not None or not any(m.client.slot.ready() and not m.client.closed for m in self._members):
            return False
        return self._step_started is None or time.monotonic() >= self._prepare_at()

    def _prepare_at(self) -> float:
        return (self._step_started or 0.0) + self._step_predicted - self._prep_seconds

    def _input_wait(self) -> float:
        if self._step_started is None or self._prepared is not None:
            return IDLE_WAIT
        return min(IDLE_WAIT, max(0.001, self._prepare_at() - time.monotonic()))

    def _plan_locked(self, now: float) -> tuple[list[tuple[_Member, list[tuple[Any, FrameTag]], StepShape]], StepPlan]:
        """Ask the policy for the next step and take the chosen sessions' frames (with the work each step will be)."""
        by_key: dict[str, _Member] = {}
        shapes: dict[str, StepShape] = {}
        candidates = []
        for member in self._members:
            client = member.client
            if client.closed or client.state is None or not client.slot.ready():
                continue
            arrivals = client.slot.arrivals()
            member.demand = self.demand_of(self.pipeline.stream_shape(client.state), member.slo)
            shape = self.pipeline.step_work(client.state, len(arrivals))
            by_key[member.key], shapes[member.key] = member, shape
            candidates.append(
                Candidate(
                    member.key, shape.bucket, shape.rows, arrivals, member.slo, client.slot.capacity, shape.passes,
                    member.last_served, member.served_arrival, member.deferred,
                )
            )
        plan = plan_step(now, candidates, self.latency, max_rows=self.max_rows)
        for key, count in plan.drops:
            by_key[key].client.slot.drop_oldest(count)
        for key in plan.deferred:
            by_key[key].deferred += 1
        picked = []
        for key in plan.sessions:
            member = by_key[key]
            items = member.client.slot.take()
            if not items:
                continue
            member.deferred = 0
            picked.append((member, items, shapes[key]))
        return picked, plan

    def _convert(self, picked: list[tuple[_Member, list[tuple[Any, FrameTag]], StepShape]], plan: StepPlan) -> _Prepared:
        """Frames → tensors for every member, outside the lock; a frame that cannot be converted fails only its session."""
        prepared = _Prepared([], [], [], plan)
        for member, items, shape in picked:
            client, state = member.client, member.client.state
            if client.closed or state is None:
                continue
            try:
                pipeline = self.pipeline
                frames = frames_to_tensor([f for f, _ in items], pipeline.frame_size(state)) if pipeline.takes_frames(state) else None
                if frames is not None:
                    frames = to_model_device(frames, pipeline.device)
                    if self.capabilities.prepares_input:
                        frames = pipeline.prepare_input(state, frames)  # control images made here, beside the model step
            except StreamgenError as error:
                client.fail(error, True)
                continue
            except Exception as error:  # noqa: BLE001 - a frame PyAV cannot convert came from the client
                client.fail(InputError(f"an input frame could not be converted ({error}); it was dropped"), True)
                continue
            prepared.members.append(member)
            prepared.entries.append(StepEntry(state, frames, tuple(tag for _, tag in items)))
            prepared.shapes.append(shape)
        return prepared

    # -- model -----------------------------------------------------------------
    def _model_loop(self) -> bool:
        with self._cond:
            self._cond.wait_for(self._model_has_work, timeout=IDLE_WAIT)
            if self._stopping:
                return False
            jobs = list(self._model_jobs)
            self._model_jobs.clear()
            resets = [(m, m.resets) for m in self._members if m.resets]
            for member, _ in resets:
                member.resets = []
            prepared, self._prepared = self._prepared, None
            collect, self._outputs_waiting = self._outputs_waiting, False
            self._cond.notify_all()  # the hand-off is free: the input thread may prepare the next step
        for job, future in jobs:
            run_job(job, future)
        for member, futures in resets:
            self._reset(member, futures)
        if prepared is not None:
            self._run_step(prepared)  # a step returns what came back too
        elif collect:
            self._collect_outputs()
        self._run_flushes()
        return True

    def _flushable_locked(self) -> list[_Member]:
        """Members whose drain was asked for and whose frames have all been stepped (none waiting, none prepared)."""
        busy = (self._prepared.members if self._prepared is not None else []) + self._converting
        return [m for m in self._members if m.flush is not None and not m.client.slot.ready() and m not in busy]

    def _run_flushes(self) -> None:
        with self._cond:
            due = [(m, m.flush) for m in self._flushable_locked()]
            for member, _ in due:
                member.flush = None
        for member, future in due:
            state = member.client.state
            try:
                output = self.pipeline.flush(state)
            except Exception as error:  # noqa: BLE001 - reported to whoever asked, and to the session
                if future.set_running_or_notify_cancel():
                    future.set_exception(error)
                continue
            self._hand_to_output(_Finished([member], [Outcome(output=output)], done=future))

    def _model_has_work(self) -> bool:
        return (
            self._stopping or bool(self._model_jobs) or self._prepared is not None or self._outputs_waiting
            or any(m.resets for m in self._members) or bool(self._flushable_locked())
        )

    def _pipeline_output(self) -> None:
        """The pipeline finished frames outside a step (called on its own thread)."""
        with self._cond:
            self._outputs_waiting = True
            self._cond.notify_all()

    def _collect_outputs(self) -> None:
        """Hand frames the pipeline finished between steps to the output thread, without waiting for the next input frame."""
        with self._cond:
            members = [m for m in self._members if not m.client.closed and m.client.state is not None]
        outputs = self.pipeline.collect([m.client.state for m in members])
        done = [(m, Outcome(output=o)) for m, o in zip(members, outputs) if o.frames.shape[0]]
        if done:
            self._hand_to_output(_Finished([m for m, _ in done], [o for _, o in done]))

    def _reset(self, member: _Member, futures: list[concurrent.futures.Future]) -> None:
        state = member.client.state
        try:
            if state is not None:
                self.pipeline.reset(state)
        except Exception as error:  # noqa: BLE001 - reported to whoever asked for the reset
            for future in futures:
                if future.set_running_or_notify_cancel():
                    future.set_exception(error)
            return
        for future in futures:
            if future.set_running_or_notify_cancel():
                future.set_result(None)

    def _run_step(self, prepared: _Prepared) -> None:
        live = [i for i, m in enumerate(prepared.members) if not m.client.closed and m.client.state is prepared.entries[i].state]
        if not live:
            return
        members = [prepared.members[i] for i in live]
        entries = [prepared.entries[i] for i in live]
        shapes = [prepared.shapes[i] for i in live]
        started = time.monotonic()
        with self._cond:
            self._step_started, self._step_predicted = started, prepared.plan.predicted_seconds
            for member, entry in zip(members, entries):
                member.last_served = started
                newest = max((t.received_at for t in entry.tags if isinstance(t, FrameTag)), default=started)
                member.served_arrival = served_mark(member.slo, member.served_arrival, newest)
        clock = time.perf_counter()
        try:
            report = step_with_report(self.pipeline, entries, checkpoints=self.capabilities.checkpoint)
        finally:
            seconds = time.perf_counter() - clock
            with self._cond:
                self._step_started = None
                self._cond.notify_all()
        if report.clean:  # a failed batch and its solo retries say nothing about what a step costs
            self.learn(shapes, self._service_seconds(seconds))
        self._metrics.observe_step(self.name, seconds, len(entries), late=len(prepared.plan.late), deferred=len(prepared.plan.deferred))
        self._hand_to_output(_Finished(members, report.outcomes))

    def _hand_to_output(self, finished: _Finished) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or len(self._finished) < 2)
            self._finished.append(finished)
            self._cond.notify_all()

    def _service_seconds(self, wall: float) -> float:
        """What the step cost the model: its wall time, or what a pipeline that hands work over (stages) says it cost."""
        service = self.pipeline.last_step_service if self.capabilities.staged else None
        return wall if service is None else service

    def learn(self, shapes: list[StepShape], seconds: float) -> None:
        """Feed the latency model with one measured step (see :func:`step_samples`)."""
        with self._cond:
            samples = step_samples(self.latency, shapes, seconds)
            for bucket, rows, per_pass in samples:
                self.latency.observe(bucket, rows, per_pass)
        if self._shared is not None:
            for bucket, rows, per_pass in samples:
                self._shared.observe(bucket, rows, per_pass)

    # -- output ----------------------------------------------------------------
    def _output_loop(self) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or bool(self._finished), timeout=IDLE_WAIT)
            if self._stopping:
                return False
            if not self._finished:
                return True
            finished = self._finished.popleft()
            self._cond.notify_all()
        for member, outcome in zip(finished.members, finished.outcomes):
            client = member.client
            if outcome.error is not None:
                self._fail(client, outcome.error)
                continue
            if client.closed or outcome.output is None:
                continue
            output = outcome.output
            if member.reservation.shape.generates:  # a generated chunk's frames share their tick's tag: give each its time
                output = spread_chunk_times(output, member.slo.target_fps)
            try:
                frames = to_output_frames(output, client.consumer_count(), client.fallback_pts)
            except Exception as error:  # noqa: BLE001 - the pipeline returned something unusable: a bug
                self._fail(client, error)
                continue
            if frames:
                self._deliver(client, frames)
        if finished.done is not None:
            self._resolve_on_loop(finished.done)
        return True

    def _resolve_on_loop(self, future: concurrent.futures.Future) -> None:
        """Resolve ``future`` after the deliveries queued before it (the loop runs callbacks in order)."""
        def resolve() -> None:
            if future.set_running_or_notify_cancel():
                future.set_result(True)

        loop = self._loop
        if loop is None or loop.is_closed():
            resolve()
            return
        try:
            loop.call_soon_threadsafe(resolve)
        except RuntimeError:
            resolve()

    @staticmethod
    def _fail(client: WorkerClient, error: Exception) -> None:
        user_error = isinstance(error, StreamgenError)
        if not user_error:
            logger.error("model step failed for a session; closing it", exc_info=error)
        client.fail(error, user_error)

    def _deliver(self, client: WorkerClient, frames: list[OutputFrame]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(client.deliver, frames, time.monotonic())
        except RuntimeError:  # the loop shut down between the check and the call
            pass


def step_samples(model: LatencyModel, shapes: list[StepShape], seconds: float) -> list[tuple[Any, int, float]]:
    """What one step of ``shapes`` that took ``seconds`` teaches the latency model: ``(bucket, rows, seconds per pass)`` samples.

    A step of one bucket and one pass count is one sample. A step that mixed
    them (sessions of two resolutions, or a prefilling stream beside a full
    one) ran one model call per bucket and pass: its time is split between
    them in proportion to what the model predicts each costs, so mixed
    sessions that always share steps keep the model learning instead of
    freezing it.
    """
    groups: dict[tuple[Any, int], int] = {}
    for shape in shapes:
        if shape.rows > 0:
            groups[(shape.bucket, shape.passes)] = groups.get((shape.bucket, shape.passes), 0) + shape.rows
    if not groups:
        return []
    if len(groups) == 1:
        ((bucket, passes), rows), = groups.items()
        return [(bucket, rows, seconds / passes)]
    predicted = {key: key[1] * model.predict(key[0], rows) for key, rows in groups.items()}
    total = sum(predicted.values())
    samples = []
    for (bucket, passes), rows in groups.items():
        share = predicted[(bucket, passes)] / total if total > 0 else 1.0 / len(groups)
        samples.append((bucket, rows, seconds * share / passes))
    return samples
