"""The one contract between the server (or any driver) and a stream pipeline.

A driver (the server's worker, ``streamgen run``, ``streamgen camera``)
learns everything it needs of a pipeline through :class:`StreamPipeline`,
and what a pipeline can do beyond the core once, when it is loaded
(:class:`Capabilities`): it never probes attributes or reads state
internals at run time. A renamed field inside a pipeline's state cannot
silently switch the scheduler to defaults; a pipeline that lacks a method
the contract asks for fails when it is loaded.

The scheduler reasons in *rows* of a *shape bucket* (:mod:`streamgen.sched`).
Each pipeline says what its sessions cost in those units:

- :meth:`StreamPipeline.settings_shape` validates a session's settings and
  says what it will ask of the model, before any state is built (admission
  runs on it);
- :meth:`StreamPipeline.stream_shape` says the same of a live state under
  its newest parameters, a queued update included (a live update may change
  the steps or the CFG rows; the next step applies it), and
  :meth:`StreamPipeline.shape_with` of a live state with other parameters
  (what a live update would cost, before it is queued);
- :meth:`StreamPipeline.step_work` is the work of the next step of a state
  fed ``new_frames`` frames (a video stream buffering frames costs nothing,
  an image stream filling its stream batch costs one pass per slot).

Capabilities: :class:`Checkpointable` (a failed batched step is undone,
:mod:`streamgen.server.worker.transaction`), :class:`Flushable` (a finite stream's
end drains what is inside the pipeline), :class:`OutputListener` (work
finishes between steps: pipeline stages) and :class:`Staged` (the model
runs as pipeline stages: service time, fill latency, description, close),
:class:`PreparesInput` (input work ahead of the step, on the input thread)
and :class:`Steerable` (ControlNets, an IP-Adapter, preprocessor estimators).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .output import StepOutput


# A ControlNet is a copy of the UNet's encoder and middle block: about half a UNet's work per row.
CONTROLNET_ROW_WORK = 0.5


@dataclass(frozen=True)
class StepShape:
    """A step's work for the scheduler: ``rows`` rows in each of ``passes`` passes of bucket ``bucket``."""

    bucket: Hashable
    rows: int
    passes: int = 1

    @property
    def work(self) -> int:
        """Rows over all passes: what the step costs the model, in the scheduler's unit."""
        return self.rows * self.passes


@dataclass(frozen=True)
class StreamShape:
    """What a session asks of the model: its size, its rows per step, and how many input frames one step consumes.

    ``frames_per_unit``: frames one model step consumes (an image stream's
    frames per call; a causal video chunk's input frames, the VAE's temporal
    factor times its latent frames) or, for a stream that ``generates``
    (txt2vid), makes. The scheduler turns it into the stream's step period.
    """

    kind: str
    width: int
    height: int
    frames_per_call: int
    steps: int
    stream_batch: bool
    cfg_rows: int = 1  # rows per frame per step: 2 with full CFG
    chunk_frames: int = 1
    frames_per_unit: int = 1
    controlnets: int = 0  # ControlNets steering every row (each runs over the rows it steers)
    generates: bool = False  # makes frames with no input (txt2vid): a step per chunk period, nothing to wait for

    @property
    def bucket(self) -> Hashable:
        if self.kind == "video":
            return ("video", self.width, self.height, self.chunk_frames)
        if self.controlnets:
            # its own bucket (learned apart); the last element scales the work per row for an unmeasured one
            return (self.kind, self.width, self.height, 1.0 + CONTROLNET_ROW_WORK * self.controlnets)
        return (self.kind, self.width, self.height)

    @property
    def model_work(self) -> float:
        """One step's work in UNet rows, a ControlNet's rows counted at their share of a UNet row: what limits compare."""
        return self.unit().work * (1.0 + CONTROLNET_ROW_WORK * self.controlnets)

    def unit(self) -> StepShape:
        """The work of one step that runs the model for this session."""
        if self.kind == "identity":
            return StepShape(self.bucket, 1)
        per_step = self.frames_per_call * self.cfg_rows
        if self.stream_batch:
            return StepShape(self.bucket, per_step * self.steps, 1)
        return StepShape(self.bucket, per_step, self.steps)


@runtime_checkable
class StreamPipeline(Protocol):
    """What every pipeline offers a driver (see module docstring)."""

    kind: str  # "image", "video" or "identity"

    @property
    def model_name(self) -> str: ...

    @property
    def native_size(self) -> tuple[int, int]: ...

    @property
    def live_params(self) -> tuple[str, ...]: ...

    @property
    def device(self) -> Any: ...

    @property
    def engine_limits(self) -> Any: ...

    def settings_shape(self, settings: Mapping[str, Any]) -> StreamShape: ...

    def state_from_settings(self, settings: Mapping[str, Any]) -> Any: ...

    def stream_shape(self, state: Any) -> StreamShape: ...

    def shape_with(self, state: Any, params: Any) -> StreamShape: ...

    def step_work(self, state: Any, new_frames: int) -> StepShape: ...

    def frames_per_step(self, state: Any) -> int: ...

    def frame_size(self, state: Any) -> tuple[int, int] | None: ...

    def takes_frames(self, state: Any) -> bool: ...

    def params_json(self, state: Any) -> dict[str, Any]: ...

    def parse_update(self, state: Any, changes: Mapping[str, Any]) -> Any: ...

    def prepare_update(self, params: Any) -> None: ...

    def update(self, state: Any, changes: Mapping[str, Any] | None = None, **kwargs: Any) -> Any: ...

    def step(self, states: Sequence[Any], frames: Sequence[Any], tags: Sequence[Any] | None = None) -> list[StepOutput]: ...

    def reset(self, state: Any) -> None: ...


@runtime_checkable
class Checkpointable(Protocol):
    def checkpoint(self, state: Any) -> Any: ...

    def restore(self, state: Any, saved: Any) -> None: ...


@runtime_checkable
class Flushable(Protocol):
    def flush(self, state: Any) -> StepOutput: ...


@runtime_checkable
class OutputListener(Protocol):
    def add_output_listener(self, listener: Callable[[], None]) -> None: ...

    def collect(self, states: Sequence[Any]) -> list[StepOutput]: ...


@runtime_checkable
class Staged(Protocol):
    """A pipeline whose model runs as pipeline stages (streamgen.parallel)."""

    @property
    def last_step_service(self) -> float | None: ...

    def latency_floor(self, shape: StreamShape) -> float: ...

    def describe_stages(self) -> dict[str, Any]: ...

    def close_stages(self) -> None: ...


@runtime_checkable
class PreparesInput(Protocol):
    """A pipeline that does part of a step's input work ahead, on the driver's input thread (overlapping the model)."""

    def prepare_input(self, state: Any, frames: Any) -> Any: ...


@runtime_checkable
class Steerable(Protocol):
    """An image pipeline that ControlNets, an IP-Adapter and preprocessor estimators steer (loaded once, shared)."""

    load_on_demand: bool

    def attach_controlnet(self, source: str) -> None: ...

    def attach_ip_adapter(self, source: str, **options: Any) -> None: ...

    def load_estimator(self, kind: str, source: str) -> None: ...

    def describe_steering(self) -> dict[str, Any]: ...

    def control_preview(self, state: Any, index: int) -> Any: ...


@dataclass(frozen=True)
class Capabilities:
    """What a pipeline can do beyond the core, found once at load (never probed at run time)."""

    checkpoint: bool
    flush: bool
    output_listener: bool
    staged: bool
    prepares_input: bool = False
    steerable: bool = False

    @classmethod
    def of(cls, pipeline: Any) -> Capabilities:
        """The capabilities of ``pipeline``; TypeError naming what is missing when it is not a :class:`StreamPipeline`."""
        missing = [name for name in _core_members() if not hasattr(pipeline, name)]
        if missing:
            raise TypeError(f"{type(pipeline).__name__} is not a stream pipeline: it lacks {', '.join(missing)}")
        return cls(
            checkpoint=isinstance(pipeline, Checkpointable),
            flush=isinstance(pipeline, Flushable),
            output_listener=isinstance(pipeline, OutputListener),
            staged=isinstance(pipeline, Staged),
            prepares_input=isinstance(pipeline, PreparesInput),
            steerable=isinstance(pipeline, Steerable),
        )


def _core_members() -> list[str]:
    return sorted(name for name in contract_members(StreamPipeline) if name != "kind") + ["kind"]


def contract_members(*protocols: type) -> set[str]:
    """The member names the given protocols declare (for checks of who may use what)."""
    names: set[str] = set()
    for protocol in protocols:
        for klass in protocol.__mro__:
            if klass in (Protocol, object) or not getattr(klass, "_is_protocol", False):
                continue
            names |= {n for n in vars(klass) if not n.startswith("_")}
            names |= set(getattr(klass, "__annotations__", {}))
    return names
