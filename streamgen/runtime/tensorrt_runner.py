"""Running one TensorRT engine: buffers in the engine's dtypes, one execution context and CUDA graph per shape, checked shapes.

What a careful read of the TensorRT 10 runtime asks of a caller, and how
:class:`EngineRunner` answers it:

- **Binding dtypes come from the engine.** Every input buffer is allocated
  in ``engine.get_tensor_dtype(name)`` and the caller's tensor is cast on
  the copy into it (an fp32 VAE engine fed fp16 data would otherwise read
  half the bytes as garbage and past the end); the output comes back in the
  model's dtype.
- **One execution context per captured graph.** A CUDA graph captures the
  context's shapes and addresses; two shapes sharing one context would
  replay stale state. Each shape gets its own context; they share one
  block of device memory (user-managed allocation), which is safe because
  every replay is queued on the runner's one stream.
- **Shapes inside the profile.** A shape outside the engine's optimisation
  profile is refused with :class:`~streamgen.errors.EngineError` naming the
  range (``set_input_shape``'s answer is checked too), and
  :attr:`EngineRunner.row_limit` tells the scheduler the most rows a call
  may carry, so it never plans more.
- **Capture safely and early.** Graphs are captured in ``thread_local``
  mode (the input and text-encoder threads issue CUDA work meanwhile), and
  :meth:`EngineRunner.prepare` captures every row bucket of the native size
  while the backend is installed, before any stream runs.
- **The model's device.** Contexts, buffers and captures are made under a
  device guard, so a replica on ``cuda:1`` does not get them on ``cuda:0``.

The engine is reached through :class:`EngineMeta`, the few calls of
``ICudaEngine`` the runner needs; tests drive the runner's choices with a
stand-in for it (and for :class:`DeviceOps`) on the CPU, which checks the
choices, not TensorRT.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import EngineError
from .buckets import DEFAULT_BUCKETS, bucket_for, pad_rows


class EngineContext(Protocol):
    """The calls of ``IExecutionContext`` the runner makes."""

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool: ...

    def set_tensor_address(self, name: str, address: int) -> bool: ...

    def get_tensor_shape(self, name: str) -> Sequence[int]: ...

    def execute_async_v3(self, stream_handle: int) -> bool: ...


class EngineMeta(Protocol):
    """What the runner needs of an engine: its inputs and outputs, their dtypes and profile, and new contexts."""

    def input_names(self) -> list[str]: ...

    def output_names(self) -> list[str]: ...

    def dtype(self, name: str) -> torch.dtype: ...

    def profile(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]: ...

    def memory_size(self) -> int: ...

    def new_context(self, memory: torch.Tensor) -> EngineContext: ...


class DeviceOps(Protocol):
    """The device side: a guard, a stream, buffers, and graph capture."""

    def guard(self) -> contextlib.AbstractContextManager: ...

    def new_stream(self) -> Any: ...

    def on_stream(self, stream: Any) -> contextlib.AbstractContextManager: ...

    def handle(self, stream: Any) -> int: ...

    def order(self, first: Any, then: Any) -> None: ...

    def current_stream(self) -> Any: ...

    def synchronize(self, stream: Any) -> None: ...

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor: ...

    def capture(self, run: Callable[[], None], stream: Any) -> Callable[[], None]: ...


class CudaOps:
    """:class:`DeviceOps` on a CUDA device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def guard(self) -> contextlib.AbstractContextManager:
        return torch.cuda.device(self.device)

    def new_stream(self) -> Any:
        return torch.cuda.Stream(device=self.device)

    def on_stream(self, stream: Any) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(stream)

    def handle(self, stream: Any) -> int:
        return int(stream.cuda_stream)

    def order(self, first: Any, then: Any) -> None:
        then.wait_stream(first)

    def current_stream(self) -> Any:
        return torch.cuda.current_stream(self.device)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(tuple(shape), dtype=dtype, device=self.device)

    def capture(self, run: Callable[[], None], stream: Any) -> Callable[[], None]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            run()
        return graph.replay


@dataclass(frozen=True)
class Profile:
    """An input's optimisation-profile range."""

    minimum: tuple[int, ...]
    optimum: tuple[int, ...]
    maximum: tuple[int, ...]

    def covers(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.minimum) and all(lo <= n <= hi for lo, n, hi in zip(self.minimum, shape, self.maximum))

    def describe(self) -> str:
        return f"{_dims(self.minimum)} to {_dims(self.maximum)}"


@dataclass
class _Bucket:
    context: EngineContext
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    replay: Callable[[], None]


class EngineRunner:
    """Runs one engine (see module docstring). ``output_dtype``: the dtype callers get back (the model's).

    Calling it returns the engine's one output (UNet, VAE); :meth:`run`
    returns every output in the engine's order (a ControlNet's residuals).
    """

    def __init__(
        self,
        meta: EngineMeta,
        input_names: Sequence[str],
        ops: DeviceOps,
        *,
        output_dtype: torch.dtype,
        name: str = "engine",
        buckets: Sequence[int] = DEFAULT_BUCKETS,
    ) -> None:
        self.meta = meta
        self.ops = ops
        self.name = name
        self.output_dtype = output_dtype
        engine_inputs = meta.input_names()
        if sorted(engine_inputs) != sorted(input_names):
            raise EngineError(f"the {name} engine takes inputs {engine_inputs}, the model gives {list(input_names)}: rebuild the engine")
        self.input_names = tuple(input_names)
        self.output_names = tuple(meta.output_names())
        if not self.output_names:
            raise EngineError(f"the {name} engine has no outputs: rebuild the engine")
        self.dtypes = {n: meta.dtype(n) for n in (*self.input_names, *self.output_names)}
        self.profiles = {n: Profile(*(tuple(int(d) for d in s) for s in meta.profile(n))) for n in self.input_names}
        self.row_limit = min(p.maximum[0] for p in self.profiles.values())
        self.row_minimum = max(p.minimum[0] for p in self.profiles.values())
        self.buckets = tuple(b for b in buckets if self.row_minimum <= b <= self.row_limit) or (self.row_limit,)
        self._buckets: dict[tuple, _Bucket] = {}
        with ops.guard():
            self.stream = ops.new_stream()
            self.memory = ops.empty((max(1, int(meta.memory_size())),), torch.uint8)

    # ------------------------------------------------------------------ calls
    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if len(self.output_names) != 1:
            raise EngineError(f"the {self.name} engine has {len(self.output_names)} outputs; run() returns them all")
        return self.run(*args)[0]

    def run(self, *args: torch.Tensor) -> list[torch.Tensor]:
        """Every output of one call, cut to the call's rows, in ``output_dtype``."""
        rows = args[0].shape[0]
        if rows > self.row_limit:
            raise EngineError(f"the {self.name} engine takes at most {self.row_limit} rows per call, got {rows} (the scheduler plans within this)")
        size = self._bucket(rows)
        feeds = {name: pad_rows(arg, size) if arg.shape[0] == rows else arg for name, arg in zip(self.input_names, args)}
        key = tuple((name, tuple(tensor.shape)) for name, tensor in feeds.items())
        bucket = self._buckets.get(key) or self._prepare_shapes(dict(key))
        current = self.ops.current_stream()
        self.ops.order(current, self.stream)
        with self.ops.on_stream(self.stream):
            for name, value in feeds.items():
                bucket.inputs[name].copy_(value, non_blocking=True)  # casts to the engine's dtype
            bucket.replay()
        self.ops.order(self.stream, current)
        # Copied out on the caller's stream: the result's memory belongs to that stream's pool, and the next
        # call's replay waits for this copy (it orders the runner's stream after the caller's first).
        return [bucket.outputs[name][:rows].to(self.output_dtype, copy=True) for name in self.output_names]

    def prepare(self, shapes: Iterable[dict[str, tuple[int, ...]]]) -> int:
        """Capture the graphs of ``shapes`` now (at install, never while streams run); returns how many were new."""
        made = 0
        for shape in shapes:
            key = tuple((name, tuple(shape[name])) for name in self.input_names)
            if key not in self._buckets:
                self._prepare_shapes(dict(key))
                made += 1
        return made

    def bucket_shapes(self, example: dict[str, tuple[int, ...]]) -> list[dict[str, tuple[int, ...]]]:
        """``example`` at every row bucket the engine takes (the row count is every input's first dimension)."""
        return [{name: (rows, *example[name][1:]) for name in self.input_names} for rows in self.buckets]

    @property
    def contexts(self) -> int:
        return len(self._buckets)

    # ---------------------------------------------------------------- helpers
    def _bucket(self, rows: int) -> int:
        size = bucket_for(rows, self.buckets)
        return min(max(size, self.row_minimum), self.row_limit)

    def _check(self, shapes: dict[str, tuple[int, ...]]) -> None:
        for name, shape in shapes.items():
            profile = self.profiles[name]
            if not profile.covers(shape):
                raise EngineError(
                    f"the {self.name} engine's input {name} takes shapes from {profile.describe()}, got {_dims(shape)}; "
                    "rebuild the engines for this size (build-engines --resolution/--batch)"
                )

    def _prepare_shapes(self, shapes: dict[str, tuple[int, ...]]) -> _Bucket:
        """A context of its own, buffers in the engine's dtypes bound to it, one warm-up run, then the capture."""
        self._check(shapes)
        with self.ops.guard():
            context = self.meta.new_context(self.memory)
            inputs = {}
            for name in self.input_names:
                if not context.set_input_shape(name, shapes[name]):
                    raise EngineError(f"TensorRT refused shape {_dims(shapes[name])} for the {self.name} engine's input {name} ({self.profiles[name].describe()})")
                inputs[name] = self.ops.empty(shapes[name], self.dtypes[name])
                context.set_tensor_address(name, inputs[name].data_ptr())
            outputs = {}
            for name in self.output_names:
                outputs[name] = self.ops.empty(tuple(int(d) for d in context.get_tensor_shape(name)), self.dtypes[name])
                context.set_tensor_address(name, outputs[name].data_ptr())
            handle = self.ops.handle(self.stream)
            with self.ops.on_stream(self.stream):
                for buffer in inputs.values():
                    buffer.zero_()
                if not context.execute_async_v3(handle):  # warm-up outside the capture (lazy initialisation)
                    raise EngineError(f"TensorRT failed to run the {self.name} engine at {', '.join(_dims(s) for s in shapes.values())}")
            self.ops.synchronize(self.stream)
            replay = self.ops.capture(lambda: context.execute_async_v3(handle), self.stream)
        bucket = _Bucket(context, inputs, outputs, replay)
        self._buckets[tuple(shapes.items())] = bucket
        return bucket


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(n)) for n in shape)
