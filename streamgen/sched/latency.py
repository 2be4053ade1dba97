"""An online model of how long one model step takes, fitted from the worker's own measurements.

A step's latency depends on its *shape bucket* (resolution, frames per chunk,
model kind: anything that changes the work per row) and on the number of
*rows* it carries (UNet/DiT batch rows summed over the sessions in it). On a
GPU the curve is flat while the step is memory-bound and grows linearly once
it is compute-bound (StreamDiffusionV2 §4.1: throughput ∝ B/(1+B) up to the
roofline knee B*); on a CPU it is linear almost from the start. So the model
keeps, per bucket, an exponentially weighted mean latency for every row count
it has seen and predicts between them by linear interpolation; beyond the
largest count it extrapolates with the slope of a least-squares line through
the measured points. That follows any curve shape without assuming one, and
old measurements fade (``decay``) so the model tracks a machine whose load
changes (another process starts, the GPU clocks down).

A step never costs less than a step of fewer rows of the same bucket: the
means are read through their running maximum, so noise that makes 2 rows
look cheaper than 1 never makes a loaded worker look cheaper than an idle one.

A bucket never measured is predicted, in this order, from what a *prior*
measured of that very bucket (another replica of the same model: see
:class:`LatencyPrior`), from the nearest bucket this model measured, scaled
by the ratio of work per row (``bucket_work``, e.g. pixels), and from the
prior's own guess; so the first session at a new resolution already gets a
sensible estimate, and replicas that compare their predictions to pick a
home for a session compare measurements of the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

Bucket = Hashable


class LatencyPrior(Protocol):
    """What a model that has not measured a bucket may ask of another one (thread-safe on the caller's side)."""

    def measured(self, bucket: Bucket) -> bool: ...

    def predict(self, bucket: Bucket, rows: int) -> float: ...

    def any_measured(self) -> bool: ...


@dataclass
class _Curve:
    """EWMA latency per row count for one bucket."""

    means: dict[int, float] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)

    def observe(self, rows: int, seconds: float, decay: float) -> None:
        old = self.means.get(rows)
        self.counts[rows] = self.counts.get(rows, 0) + 1
        # The first few samples average plainly (an EWMA seeded by one outlier would linger).
        weight = max(decay, 1.0 / self.counts[rows])
        self.means[rows] = seconds if old is None else old + weight * (seconds - old)

    def predict(self, rows: int) -> float:
        """The fitted curve at ``rows``, never below what fewer rows were measured to cost."""
        floor = max((s for r, s in self.means.items() if r < rows), default=0.0)
        return max(floor, self._fitted(rows))

    def _fitted(self, rows: int) -> float:
        points = sorted(self.means.items())
        if rows in self.means:
            return self.means[rows]
        below = [(r, s) for r, s in points if r < rows]
        above = [(r, s) for r, s in points if r > rows]
        if below and above:
            (r0, s0), (r1, s1) = below[-1], above[0]
            return s0 + (s1 - s0) * (rows - r0) / (r1 - r0)
        slope = self.slope(points)
        if above:  # fewer rows than ever measured: never predict below zero or above the smallest point
            r1, s1 = above[0]
            return max(0.0, min(s1, s1 - slope * (r1 - rows)))
        r0, s0 = below[-1]
        return s0 + slope * (rows - r0)

    @staticmethod
    def slope(points: list[tuple[int, float]]) -> float:
        """Least-squares seconds per row (non-negative); a single point gives the proportional slope."""
        if len(points) == 1:
            r, s = points[0]
            return s / r if r > 0 else 0.0
        n = len(points)
        mean_r = sum(r for r, _ in points) / n
        mean_s = sum(s for _, s in points) / n
        var = sum((r - mean_r) ** 2 for r, _ in points)
        cov = sum((r - mean_r) * (s - mean_s) for r, s in points)
        return max(0.0, cov / var) if var > 0 else 0.0


class LatencyModel:
    """Predicted seconds of a step, per bucket and row count (see module docstring).

    ``bucket_work(bucket)`` gives a bucket's work per row (any consistent
    unit, e.g. pixels per row); it is only used to predict buckets never
    measured from ones that were. ``default_seconds_per_row`` is the guess
    before anything at all was measured. ``prior`` answers for buckets this
    model has not measured (see module docstring).
    """

    def __init__(
        self,
        *,
        decay: float = 0.2,
        bucket_work: Callable[[Bucket], float] | None = None,
        default_seconds_per_row: float = 0.01,
        prior: LatencyPrior | None = None,
    ) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self._decay = decay
        self._curves: dict[Bucket, _Curve] = {}
        self._bucket_work = bucket_work
        self._default = default_seconds_per_row
        self._prior = prior

    # ---------------------------------------------------------------- fitting
    def observe(self, bucket: Bucket, rows: int, seconds: float) -> None:
        """Record one measured step of ``rows`` rows in ``bucket``."""
        if rows < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        self._curves.setdefault(bucket, _Curve()).observe(rows, seconds, self._decay)

    def measured(self, bucket: Bucket) -> bool:
        return bucket in self._curves

    def any_measured(self) -> bool:
        return bool(self._curves)

    def samples(self, bucket: Bucket) -> dict[int, float]:
        """The fitted mean latency per measured row count (for /metrics and benchmarks)."""
        curve = self._curves.get(bucket)
        return dict(sorted(curve.means.items())) if curve else {}

    # ------------------------------------------------------------- predicting
    def predict(self, bucket: Bucket, rows: int) -> float:
        """Seconds for one step of ``rows`` rows in ``bucket`` (0 for no rows)."""
        if rows <= 0:
            return 0.0
        curve = self._curves.get(bucket)
        if curve is not None:
            return curve.predict(rows)
        prior = self._prior
        if prior is not None and prior.measured(bucket):
            return prior.predict(bucket, rows)
        if not self._curves and prior is not None and prior.any_measured():
            return prior.predict(bucket, rows)
        return self._predict_unmeasured(bucket, rows)

    def knee(self, bucket: Bucket, *, gain: float = 0.1) -> int | None:
        """The batch size past which more rows buy little throughput (None until two row counts are measured).

        Throughput at r rows is r / L(r). Walking up the measured row counts,
        the knee is the last count whose next step up still raised
        throughput by at least ``gain`` per doubling of rows.
        """
        curve = self._curves.get(bucket)
        if curve is None or len(curve.means) < 2:
            return None
        points = sorted(curve.means.items())
        knee = points[0][0]
        for (r0, s0), (r1, s1) in zip(points, points[1:]):
            if s0 <= 0 or s1 <= 0:
                knee = r1
                continue
            speedup = (r1 / s1) / (r0 / s0)
            doublings = math.log2(r1 / r0)
            if speedup < (1.0 + gain) ** doublings:
                break
            knee = r1
        return knee

    def _predict_unmeasured(self, bucket: Bucket, rows: int) -> float:
        """From the nearest measured bucket, scaled by work per row; among equally near ones the costlier estimate
        (never a guess that depends on which bucket happened to be measured first)."""
        if not self._curves:
            return self._default * rows
        if self._bucket_work is None:
            return max(curve.predict(rows) for curve in self._curves.values())
        work = self._bucket_work(bucket)
        scored = []
        for other, curve in self._curves.items():
            other_work = self._bucket_work(other)
            if other_work <= 0:
                continue
            distance = abs(math.log(max(work, 1e-12) / other_work))
            scored.append((round(distance, 9), curve.predict(rows) * work / other_work))
        if not scored:
            return self._default * rows
        nearest = min(distance for distance, _ in scored)
        return max(estimate for distance, estimate in scored if distance == nearest)
