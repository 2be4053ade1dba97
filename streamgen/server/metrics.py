"""Prometheus text exposition (format 0.0.4) for ``GET /metrics``, without a client library.

Server-wide histograms (frame latency, time to first frame, model step time)
are observed from the event loop and the worker threads, so they lock. Per
session numbers are read from the sessions' own
:class:`~streamgen.server.sessions.stats.SessionStats` when the page is rendered.

``/metrics`` names no session unless the operator asks
(``--metrics-sessions``, ``session_labels=True``): by default it has only
server-wide series. Frame counters over every session since start are the
live sessions' counts plus those of the sessions that ended (added up when
each one ends, :meth:`ServerMetrics.retire`), so they never go down.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
TTFF_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
STEP_BUCKETS = (0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
FRAME_COUNTERS = ("frames_in", "frames_out", "dropped", "skipped")  # SessionSample fields summed server-wide


class Histogram:
    """Cumulative-bucket histogram, safe to observe from any thread."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._sum += value
            self._count += 1
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {c}' for bound, c in zip(self.buckets, counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {count}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {total:.6f}", f"{name}_count{suffix} {count}"]
        return out


@dataclass
class ServerMetrics:
    """Server-wide counters and histograms (per-session numbers live with the sessions)."""

    frame_latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    time_to_first_frame: Histogram = field(default_factory=lambda: Histogram(TTFF_BUCKETS))
    sessions_created: int = 0
    sessions_rejected: int = 0
    sessions_displaced: int = 0
    admission_refusals: int = 0
    deadline_misses: int = 0
    steps: int = 0
    steps_predicted_late: int = 0
    sessions_deferred: int = 0
    retired_frames: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FRAME_COUNTERS, 0))
    _step_times: dict[str, Histogram] = field(default_factory=dict)
    _batch_rows: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe_step(self, replica: str, seconds: float, batch: int, *, late: int = 0, deferred: int = 0) -> None:
        """One model step of ``batch`` sessions; ``late``/``deferred``: the scheduler's view of it."""
        with self._lock:
            histogram = self._step_times.setdefault(replica, Histogram(STEP_BUCKETS))
            self._batch_rows[replica] = batch
            self.steps += 1
            self.steps_predicted_late += late > 0
            self.sessions_deferred += deferred
        histogram.observe(seconds)

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a server-wide counter from any thread."""
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def retire(self, sample: SessionSample) -> None:
        """A session ended: keep its frame counts in the server-wide totals."""
        with self._lock:
            for attr in FRAME_COUNTERS:
                self.retired_frames[attr] += getattr(sample, attr)

    def retired_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.retired_frames)

    def step_histograms(self) -> list[tuple[str, Histogram, int]]:
        with self._lock:
            return [(name, h, self._batch_rows.get(name, 0)) for name, h in self._step_times.items()]


@dataclass(frozen=True)
class SessionSample:
    """One session's numbers at render time."""

    session_id: str
    kind: str
    fps_in: float
    fps_out: float
    frames_in: int
    frames_out: int
    dropped: int
    skipped: int
    ttff: float | None
    viewers: int
    deadline_misses: int = 0
    deadline_ms: float | None = None
    target_fps: float | None = None


def render_metrics(metrics: ServerMetrics, sessions: Iterable[SessionSample], model: str, *, session_labels: bool = False) -> str:
    """The ``/metrics`` page; per-session series (labelled with session ids) only with ``session_labels``."""
    sessions = list(sessions)
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(samples)

    def per_session(attr: str) -> list[str]:
        out = []
        for s in sessions:
            value = getattr(s, attr)
            if value is not None:
                out.append(f'{{session="{s.session_id}",kind="{s.kind}"}} {value:g}' if isinstance(value, float) else f'{{session="{s.session_id}",kind="{s.kind}"}} {value}')
        return out

    family("streamgen_info", "gauge", "The model this server runs.", [f'streamgen_info{{model="{_escape(model)}"}} 1'])
    family("streamgen_sessions_active", "gauge", "Sessions currently open.", [f"streamgen_sessions_active {len(sessions)}"])
    family("streamgen_sessions_created_total", "counter", "Sessions created since start.", [f"streamgen_sessions_created_total {metrics.sessions_created}"])
    family("streamgen_sessions_rejected_total", "counter", "Sessions refused because the server was full.", [f"streamgen_sessions_rejected_total {metrics.sessions_rejected}"])
    family(
        "streamgen_sessions_displaced_total", "counter", "Sessions whose peer never connected, closed to make room for a newcomer.",
        [f"streamgen_sessions_displaced_total {metrics.sessions_displaced}"],
    )
    family("streamgen_admission_refusals_total", "counter", "Sessions refused by admission control (they would have broken the admitted sessions' objectives).", [f"streamgen_admission_refusals_total {metrics.admission_refusals}"])
    family("streamgen_deadline_misses_total", "counter", "Output frames that reached the encoder after their session's deadline.", [f"streamgen_deadline_misses_total {metrics.deadline_misses}"])
    family("streamgen_sched_steps_total", "counter", "Model steps the scheduler planned.", [f"streamgen_sched_steps_total {metrics.steps}"])
    family("streamgen_sched_steps_predicted_late_total", "counter", "Steps the scheduler knew would miss a deadline (overload).", [f"streamgen_sched_steps_predicted_late_total {metrics.steps_predicted_late}"])
    family("streamgen_sched_deferrals_total", "counter", "Times a ready session was left for a later step (its frames would not fit this one).", [f"streamgen_sched_deferrals_total {metrics.sessions_deferred}"])
    retired = metrics.retired_counts()
    for name, attr, kind, help_text in SERVER_FRAME_FAMILIES:
        value = sum(getattr(s, attr) or 0 for s in sessions) + retired.get(attr, 0)
        family(name, kind, help_text, [f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"])
    if session_labels:
        for name, attr, kind, help_text in (
            ("streamgen_session_input_fps", "fps_in", "gauge", "Input frames per second received by a session."),
            ("streamgen_session_output_fps", "fps_out", "gauge", "Output frames per second a session produced."),
            ("streamgen_session_frames_received_total", "frames_in", "counter", "Input frames a session received."),
            ("streamgen_session_frames_output_total", "frames_out", "counter", "Output frames a session produced."),
            ("streamgen_session_frames_dropped_total", "dropped", "counter", "Input frames dropped (a newer frame replaced them before the model was free, or over the fps cap)."),
            ("streamgen_session_frames_skipped_total", "skipped", "counter", "Frames the similarity filter skipped (previous output reused)."),
            ("streamgen_session_time_to_first_frame_seconds", "ttff", "gauge", "Seconds from session creation to its first output frame."),
            ("streamgen_session_viewers", "viewers", "gauge", "WHEP viewers watching a session."),
            ("streamgen_session_deadline_misses_total", "deadline_misses", "counter", "Output frames of a session that missed its deadline."),
            ("streamgen_session_deadline_milliseconds", "deadline_ms", "gauge", "A session's per-frame latency deadline."),
            ("streamgen_session_target_fps", "target_fps", "gauge", "The frame rate admission control predicted for a session."),
        ):
            family(name, kind, help_text, [name + sample for sample in per_session(attr)])
    family("streamgen_frame_latency_seconds", "histogram", "Server latency of a frame: received (decoded) to output frame ready for the encoder.", metrics.frame_latency.lines("streamgen_frame_latency_seconds"))
    family("streamgen_time_to_first_frame_seconds", "histogram", "Seconds from session creation to its first output frame.", metrics.time_to_first_frame.lines("streamgen_time_to_first_frame_seconds"))
    steps = metrics.step_histograms()
    family("streamgen_model_step_seconds", "histogram", "Wall time of one batched pipeline step.", [line for name, h, _ in steps for line in h.lines("streamgen_model_step_seconds", f'replica="{name}"')])
    family("streamgen_model_batch_streams", "gauge", "Streams in the latest batched step.", [f'streamgen_model_batch_streams{{replica="{name}"}} {rows}' for name, _, rows in steps])
    return "\n".join(lines) + "\n"


SERVER_FRAME_FAMILIES = (
    ("streamgen_input_fps", "fps_in", "gauge", "Input frames per second received, all sessions together."),
    ("streamgen_output_fps", "fps_out", "gauge", "Output frames per second produced, all sessions together."),
    ("streamgen_viewers", "viewers", "gauge", "WHEP viewers watching, all sessions together."),
    ("streamgen_frames_received_total", "frames_in", "counter", "Input frames received by every session since start."),
    ("streamgen_frames_output_total", "frames_out", "counter", "Output frames produced for every session since start."),
    ("streamgen_frames_dropped_total", "dropped", "counter", "Input frames dropped (a newer frame replaced them before the model was free, or over the fps cap), every session since start."),
    ("streamgen_frames_skipped_total", "skipped", "counter", "Frames the similarity filter skipped (previous output reused), every session since start."),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
