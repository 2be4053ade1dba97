"""A discrete-event simulation of a pipeline of S stages running one causal video stream.

It answers "what would S ranks deliver" from per-stage costs alone, so the
same numbers can be projected from measurements on a CPU, from a profile of
one GPU, or from published figures (``bench/scaling_projection.py``), and
checked against what a real multi-rank run delivers.

The model, and why each part is there:

- **A ring of stages.** Stage s computes a micro-batch, then hands it over
  link s to stage s+1; the last stage hands it back to stage 0 for the next
  denoising step (the stream-batch state returns to rank 0).
- **Stream batch in every micro-batch.** ``micro_batches`` of them circulate
  (default: one per stage, enough to keep every stage busy). A micro-batch's
  rows are chunks at different denoising steps: each pass through all the
  stages advances every one of them by a step. When a micro-batch starts a
  pass on stage 0, a new chunk joins it (encode); when it ends a pass on the
  last stage, the chunk that has now had ``steps`` passes leaves it
  (decode). A chunk is ``frames_per_chunk`` video frames (4 per latent frame).
- **Stages are serial and FIFO.** Stage s takes ``compute_seconds`` per
  micro-batch (its fixed work plus its blocks), one at a time, in arrival order.
- **Links are asynchronous but bounded.** Link s sends one message at a
  time (``send_seconds`` each) while the sender computes on; it holds at
  most ``link_slots`` messages (being sent, or delivered and waiting for the
  receiver to start on them). A sender whose link is full keeps its output
  and waits, as a rank does when its isend buffers are all in use.
- **Inputs.** Back-to-back (a chunk is always ready: the throughput a
  pipeline can give) or a camera at ``input_fps`` (frame j of chunk k
  arrives at ``(k·F + j) / fps``; the chunk is ready with its last frame). A
  micro-batch that reaches stage 0 before the next chunk is ready waits for
  it: a stream batch runs one step per new input.

The ring holds ``stages × (1 + link_slots)`` micro-batches at most before
every stage waits on a full link; more in flight than that would deadlock
(a real pipeline would hang too), so :class:`PipelineSpec` refuses it.

Results (:class:`SimResult`) cover the chunks after a warm-up (by default
the ``micro_batches × steps`` chunks that fill the stream batches): output
frames per second, per-frame latency (output time − that frame's arrival;
back-to-back, the time the chunk was taken), each stage's and link's busy
share, and deadline misses. Deterministic: the same spec gives the same
result, event for event. Pure: no clock, no torch.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StageCost:
    """Seconds per micro-batch: a stage's compute, and the transfer of its output over its outgoing link."""

    compute_seconds: float
    send_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("compute_seconds", "send_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class PipelineSpec:
    """The pipeline to simulate (see the module docstring for the model)."""

    stages: tuple[StageCost, ...]
    steps: int = 1
    micro_batches: int | None = None  # in flight; None: one per stage
    frames_per_chunk: int = 4
    link_slots: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages or not all(isinstance(s, StageCost) for s in self.stages):
            raise ValueError("a pipeline needs at least one stage, each a StageCost")
        for name in ("steps", "frames_per_chunk", "link_slots"):
            _check_positive_int(name, getattr(self, name))
        if self.micro_batches is not None:
            _check_positive_int("micro_batches", self.micro_batches)
        limit = len(self.stages) * (1 + self.link_slots)
        if self.in_flight >= limit:
            raise ValueError(
                f"{self.in_flight} micro-batches in a {len(self.stages)}-stage ring with {self.link_slots} slot(s) per link "
                f"would deadlock (every stage waiting on a full link); use fewer than {limit}"
            )
        if self.pass_seconds <= 0:
            raise ValueError("a pass through the pipeline must take some time (all stage costs are 0)")

    @property
    def in_flight(self) -> int:
        return self.micro_batches if self.micro_batches is not None else len(self.stages)

    @property
    def pass_seconds(self) -> float:
        """One micro-batch alone, once around the ring."""
        return sum(s.compute_seconds + s.send_seconds for s in self.stages)


@dataclass(frozen=True)
class SimResult:
    """What the pipeline delivered over the measured chunks (after the warm-up)."""

    fps: float  # output video frames per second
    chunks: int  # chunks measured
    frames: int  # video frames measured
    latency_p50_s: float  # per video frame
    latency_p99_s: float
    latency_max_s: float
    stage_utilisation: tuple[float, ...]  # busy share of each stage over the measured window
    link_utilisation: tuple[float, ...]  # busy share of each link (link s: stage s → the next)
    deadline_s: float | None
    misses: int  # measured frames later than the deadline (0 without one)
    window_s: float  # the measured window: from the last warm-up chunk's output to the last output


def simulate(
    spec: PipelineSpec,
    *,
    chunks: int = 200,
    input_fps: float | None = None,
    deadline_s: float | None = None,
    warmup_chunks: int | None = None,
) -> SimResult:
    """Run ``spec`` until ``warmup_chunks + chunks`` chunks came out; measure the last ``chunks``.

    ``input_fps`` None: back-to-back inputs (throughput); otherwise a camera
    at that frame rate (latency under a given load).
    """
    _check_positive_int("chunks", chunks)
    warmup = max(1, spec.in_flight * spec.steps) if warmup_chunks is None else warmup_chunks
    _check_positive_int("warmup_chunks", warmup)
    if input_fps is not None and (isinstance(input_fps, bool) or not math.isfinite(input_fps) or input_fps <= 0):
        raise ValueError(f"input_fps must be a positive number (or None for back-to-back), got {input_fps!r}")
    if deadline_s is not None and (not math.isfinite(deadline_s) or deadline_s <= 0):
        raise ValueError(f"deadline_s must be a positive number, got {deadline_s!r}")
    run = _Run(spec, warmup + chunks, input_fps)
    run.run()
    return run.result(warmup, deadline_s)


# ---------------------------------------------------------------- the simulation
_COMPUTE_END, _SENT, _INPUT = 0, 1, 2


class _Run:
    """Event-driven state of one simulation (see the module docstring); events at equal times run in order of scheduling."""

    def __init__(self, spec: PipelineSpec, total_chunks: int, input_fps: float | None) -> None:
        self.spec = spec
        self.size = len(spec.stages)
        self.total = total_chunks
        self.input_fps = input_fps
        self.now = 0.0
        self.events: list[tuple[float, int, int, int, int]] = []
        self.order = itertools.count()
        self.queue: list[deque[tuple[int, bool]]] = [deque() for _ in range(self.size)]  # (micro-batch, came over a link)
        self.busy = [False] * self.size
        self.held: list[int | None] = [None] * self.size  # an output waiting for a slot on the stage's link
        self.link_load = [0] * self.size
        self.link_queue: list[deque[int]] = [deque() for _ in range(self.size)]
        self.link_busy = [False] * self.size
        self.rows: list[list[list[int]]] = [[] for _ in range(spec.in_flight)]  # per micro-batch: [chunk, passes]
        self.next_chunk = 0
        self.arrivals: list[tuple[float, ...]] = []
        self.done: dict[int, float] = {}
        self.stage_intervals: list[list[tuple[float, float]]] = [[] for _ in range(self.size)]
        self.link_intervals: list[list[tuple[float, float]]] = [[] for _ in range(self.size)]

    # ------------------------------------------------------------------ driving
    def run(self) -> None:
        self.queue[0].extend((m, False) for m in range(self.spec.in_flight))
        if self.input_fps is not None:
            self._schedule(self._ready_at(0), _INPUT, 0, 0)
        self._try_start(0)
        while self.events and len(self.done) < self.total:
            self.now, _, kind, a, b = heapq.heappop(self.events)
            if kind == _COMPUTE_END:
                self._compute_end(a, b)
            elif kind == _SENT:
                self._sent(a, b)
            else:
                self._schedule(self._ready_at(a + 1), _INPUT, a + 1, 0)
                self._try_start(0)

    def _schedule(self, at: float, kind: int, a: int, b: int) -> None:
        heapq.heappush(self.events, (at, next(self.order), kind, a, b))

    def _ready_at(self, chunk: int) -> float:
        """When chunk ``chunk``'s last frame has arrived (camera input)."""
        assert self.input_fps is not None
        return ((chunk + 1) * self.spec.frames_per_chunk - 1) / self.input_fps

    # ----------------------------------------------------------------- stages
    def _try_start(self, stage: int) -> None:
        if self.busy[stage] or self.held[stage] is not None or not self.queue[stage]:
            return
        if stage == 0 and self.input_fps is not None and self._ready_at(self.next_chunk) > self.now:
            return  # the stream batch waits for its next input
        micro_batch, over_link = self.queue[stage].popleft()
        if stage == 0:
            self._admit(micro_batch)
        self.busy[stage] = True
        self.stage_intervals[stage].append((self.now, self.now + self.spec.stages[stage].compute_seconds))
        self._schedule(self.now + self.spec.stages[stage].compute_seconds, _COMPUTE_END, stage, micro_batch)
        if over_link:
            self._free_slot((stage - 1) % self.size)

    def _admit(self, micro_batch: int) -> None:
        chunk = self.next_chunk
        self.next_chunk += 1
        frames = self.spec.frames_per_chunk
        if self.input_fps is None:
            self.arrivals.append((self.now,) * frames)
        else:
            self.arrivals.append(tuple((chunk * frames + j) / self.input_fps for j in range(frames)))
        self.rows[micro_batch].append([chunk, 0])

    def _compute_end(self, stage: int, micro_batch: int) -> None:
        self.busy[stage] = False
        if stage == self.size - 1:
            self._finish_pass(micro_batch)
        if self.link_load[stage] < self.spec.link_slots:
            self._push(stage, micro_batch)
        else:
            self.held[stage] = micro_batch
        self._try_start(stage)

    def _finish_pass(self, micro_batch: int) -> None:
        rows = self.rows[micro_batch]
        for row in rows:
            row[1] += 1
        for chunk, passes in rows:
            if passes >= self.spec.steps and chunk < self.total:  # later chunks only keep the pipeline loaded
                self.done[chunk] = self.now
        self.rows[micro_batch] = [row for row in rows if row[1] < self.spec.steps]

    # ------------------------------------------------------------------ links
    def _push(self, link: int, micro_batch: int) -> None:
        self.link_load[link] += 1
        self.link_queue[link].append(micro_batch)
        if not self.link_busy[link]:
            self._send_next(link)

    def _send_next(self, link: int) -> None:
        if not self.link_queue[link]:
            self.link_busy[link] = False
            return
        micro_batch = self.link_queue[link].popleft()
        self.link_busy[link] = True
        seconds = self.spec.stages[link].send_seconds
        self.link_intervals[link].append((self.now, self.now + seconds))
        self._schedule(self.now + seconds, _SENT, link, micro_batch)

    def _sent(self, link: int, micro_batch: int) -> None:
        receiver = (link + 1) % self.size
        self.queue[receiver].append((micro_batch, True))
        self._send_next(link)
        self._try_start(receiver)

    def _free_slot(self, link: int) -> None:
        """The receiver started on a message: its link has a slot again, and a sender waiting on it may go on."""
        self.link_load[link] -= 1
        held = self.held[link]
        if held is not None:
            self.held[link] = None
            self._push(link, held)
            self._try_start(link)

    # ---------------------------------------------------------------- results
    def result(self, warmup: int, deadline_s: float | None) -> SimResult:
        measured = range(warmup, self.total)
        start = self.done[warmup - 1]
        end = max(self.done[c] for c in measured)
        window = end - start
        latencies = [self.done[c] - arrival for c in measured for arrival in self.arrivals[c]]
        frames = len(latencies)
        misses = 0 if deadline_s is None else sum(1 for latency in latencies if latency > deadline_s * (1 + 1e-12))
        return SimResult(
            fps=frames / window if window > 0 else math.inf,
            chunks=len(measured),
            frames=frames,
            latency_p50_s=percentile(latencies, 0.50),
            latency_p99_s=percentile(latencies, 0.99),
            latency_max_s=max(latencies),
            stage_utilisation=tuple(_busy_share(intervals, start, end) for intervals in self.stage_intervals),
            link_utilisation=tuple(_busy_share(intervals, start, end) for intervals in self.link_intervals),
            deadline_s=deadline_s,
            misses=misses,
            window_s=window,
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (``q`` in (0, 1]) of non-empty ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _busy_share(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    if end <= start:
        return 0.0
    busy = sum(max(0.0, min(b, end) - max(a, start)) for a, b in intervals)
    return min(1.0, busy / (end - start))


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
