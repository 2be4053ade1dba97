"""What the compiled engines in force accept: the most rows one call may carry and the side lengths they were built for.

A TensorRT engine is built for an optimisation profile: rows and image sides
within fixed ranges. A call outside it fails inside TensorRT, so the limits
travel from the engines to the places that decide shapes before a step:
the scheduler never plans more rows than ``max_rows`` (its row limit), and a
stream whose size no engine covers is refused when it is created, with the
range in the message. Backends with dynamic shapes (eager, compile, ONNX
Runtime) set none.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class EngineLimits:
    """Rows per model call and pixels per side that ``backend``'s engines accept (None: unbounded)."""

    backend: str
    max_rows: int | None = None
    side_range: tuple[int, int] | None = None

    def check_stream(self, width: int, height: int, rows: int) -> None:
        """ConfigError naming the range when a stream of ``width``x``height`` needing ``rows`` rows per step cannot run."""
        if self.side_range is not None:
            low, high = self.side_range
            if not (low <= width <= high and low <= height <= high):
                raise ConfigError(
                    f"{width}x{height} is outside what the {self.backend} engines were built for: each side from {low} to {high} "
                    f"pixels; pick a size in that range, or rebuild the engines for it (build-engines --resolution MIN-MAX)"
                )
        if self.max_rows is not None and rows > self.max_rows:
            raise ConfigError(
                f"this stream needs {rows} model rows per step, more than the {self.backend} engines take ({self.max_rows}); "
                f"use fewer denoising steps, frames per call or cfg_type other than 'full', or rebuild the engines with a larger --batch range"
            )


def engine_limits_of(model: object) -> EngineLimits | None:
    """The limits a model's installed backend set, if any."""
    limits = getattr(model, "engine_limits", None)
    return limits if isinstance(limits, EngineLimits) else None
