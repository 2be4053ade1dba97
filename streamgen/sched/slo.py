"""Service-level objectives: the frame rate a session wants and the latency it tolerates.

The server has a default SLO (``--slo-ms``, ``--target-fps``); a client may
ask for another one per session, but only within the limits the operator set
(:class:`SloLimits`), so no client can claim a deadline the server cannot
honour for everyone else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

SLO_FIELDS = ("deadline_ms", "fps", "min_fps")


@dataclass(frozen=True)
class Slo:
    """One session's objective: ``target_fps`` frames out per second, each within ``deadline_s`` of its arrival.

    ``min_fps`` is the rate below which the session would rather not run:
    admission refuses a new session that would push any session (itself
    included) below its ``min_fps``. The server's default SLO is best effort
    (a low floor: more sessions share the model and every one slows down
    evenly); a client that asks for ``fps`` gets that rate as its floor
    unless it also names a lower ``min_fps``.
    """

    target_fps: float = 30.0
    deadline_s: float = 0.5
    min_fps: float = 1.0

    def __post_init__(self) -> None:
        for name in ("target_fps", "deadline_s", "min_fps"):
            value = getattr(self, name)
            if not _finite_positive(value):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.min_fps > self.target_fps:
            raise ConfigError(f"min_fps ({self.min_fps:g}) must not be above the target fps ({self.target_fps:g})")

    @property
    def frame_period(self) -> float:
        return 1.0 / self.target_fps


@dataclass(frozen=True)
class SloLimits:
    """What a client may ask for: deadlines in ``[min_deadline_s, max_deadline_s]``, fps up to ``max_fps``."""

    min_deadline_s: float = 0.03
    max_deadline_s: float = 5.0
    max_fps: float = 60.0

    def __post_init__(self) -> None:
        if not (_finite_positive(self.min_deadline_s) and _finite_positive(self.max_deadline_s) and _finite_positive(self.max_fps)):
            raise ConfigError("SLO limits must be positive numbers")
        if self.min_deadline_s > self.max_deadline_s:
            raise ConfigError(f"the shortest deadline ({self.min_deadline_s}s) is longer than the longest ({self.max_deadline_s}s)")

    def parse(self, value: Any, default: Slo) -> Slo:
        """A client's ``{"deadline_ms", "fps", "allow_lower_fps"}`` object over ``default``; ConfigError says what is wrong."""
        if value is None:
            return default
        if not isinstance(value, Mapping):
            raise ConfigError('"slo" must be a JSON object like {"deadline_ms": 200, "fps": 15, "min_fps": 8}')
        unknown = sorted(set(value) - set(SLO_FIELDS))
        if unknown:
            raise ConfigError(f"unknown slo field(s) {', '.join(map(repr, unknown))}; an slo has {', '.join(SLO_FIELDS)}")
        deadline = default.deadline_s
        if "deadline_ms" in value:
            ms = value["deadline_ms"]
            low, high = self.min_deadline_s * 1000, self.max_deadline_s * 1000
            if not _finite_positive(ms) or not low <= ms <= high:
                raise ConfigError(f"slo.deadline_ms must be a number between {low:g} and {high:g} on this server, got {_short(ms)}")
            deadline = ms / 1000.0
        fps, floor = default.target_fps, default.min_fps
        if "fps" in value:
            fps = self._rate("fps", value["fps"])
            floor = fps  # asking for a rate means wanting it
        if "min_fps" in value:
            floor = self._rate("min_fps", value["min_fps"])
            if floor > fps:
                raise ConfigError(f"slo.min_fps ({floor:g}) must not be above slo.fps ({fps:g})")
        return Slo(target_fps=float(fps), deadline_s=float(deadline), min_fps=float(min(floor, fps)))

    def _rate(self, name: str, value: Any) -> float:
        if not _finite_positive(value) or value > self.max_fps:
            raise ConfigError(f"slo.{name} must be a number above 0 and at most {self.max_fps:g} on this server, got {_short(value)}")
        return float(value)


def _finite_positive(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and value > 0
    except OverflowError:  # a 400-digit integer
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
