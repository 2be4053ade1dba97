"""Scheduling policy: which sessions' frames run next, whether a new session fits, which blocks each pipeline stage runs.

Pure decision code (docs/architecture.md, "Layers"): it takes numbers
(arrival times, deadlines, a latency model fitted from the worker's own
measurements, measured stage times, ``now``) and returns plain dataclasses.
It imports no torch and no asyncio, so every decision is tested with a fake
clock.
"""

from .admission import HEADROOM, Admission, Demand, admit, predicted_rates, replica_order, utilization
from .blocks import BlockBalancer, BlockMove, BlockSplit, RebalanceConfig, StageTiming, balanced_split, stage_times
from .latency import LatencyModel
from .policy import Candidate, StepPlan, choose_video_mode, plan_step, served_mark
from .slo import Slo, SloLimits

__all__ = [
    "HEADROOM",
    "Admission",
    "BlockBalancer",
    "BlockMove",
    "BlockSplit",
    "Candidate",
    "Demand",
    "LatencyModel",
    "RebalanceConfig",
    "Slo",
    "SloLimits",
    "StageTiming",
    "StepPlan",
    "balanced_split",
    "stage_times",
    "admit",
    "predicted_rates",
    "replica_order",
    "choose_video_mode",
    "plan_step",
    "served_mark",
    "utilization",
]
