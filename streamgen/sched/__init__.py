"""Scheduling policy: which sessions' frames run next, and whether a new session fits.

Pure decision code (DESIGN.md, "Policy vs. mechanism"): it takes numbers
(arrival times, deadlines, a latency model fitted from the worker's own
measurements, ``now``) and returns plain dataclasses. It imports no torch and
no asyncio, so every decision is tested with a fake clock.
"""

from .admission import Admission, Demand, admit, predicted_rates
from .latency import LatencyModel
from .policy import Candidate, StepPlan, choose_video_mode, plan_step, served_mark
from .slo import Slo, SloLimits

__all__ = [
    "Admission",
    "Candidate",
    "Demand",
    "LatencyModel",
    "Slo",
    "SloLimits",
    "StepPlan",
    "admit",
    "predicted_rates",
    "choose_video_mode",
    "plan_step",
    "served_mark",
]
