"""The TensorRT runner's choices, checked against a STAND-IN for the engine's metadata interface on the CPU.

Nothing here runs TensorRT. :class:`StandInEngine` answers the few calls of
``ICudaEngine`` the runner makes (input names, dtypes, profile ranges,
device-memory size, new contexts) and its contexts compute a known function
from the buffers bound to them, refusing a buffer whose dtype is not the
engine's (TensorRT would read its bytes as the engine's dtype). Replaying a
"captured graph" re-runs the context with whatever shapes and addresses it
holds at replay time, which is what makes sharing one context between
shapes visible. :class:`StandInOps` stands in for the CUDA device and
records what happened under the device guard.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from streamgen.errors import ConfigError, EngineError
from streamgen.runtime.engine_limits import EngineLimits
from streamgen.runtime.tensorrt_runner import EngineRunner

ENGINE_DTYPES = {"x": torch.float32, "scale": torch.float16, "out": torch.float32, "twice": torch.float16}  # fp32 and fp16 inputs and outputs
PROFILE = {"x": ((1, 4), (2, 4), (8, 4)), "scale": ((1, 1), (2, 1), (8, 1))}


class StandInOps:
    """The device side on the CPU: tensors registered by address, a guard that records, capture = replay later."""

    def __init__(self) -> None:
        self.tensors: dict[int, torch.Tensor] = {}
        self.guarded = 0
        self.outside_guard: list[str] = []

    @contextlib.contextmanager
    def guard(self):
        self.guarded += 1
        try:
            yield
        finally:
            self.guarded -= 1

    def note(self, what: str) -> None:
        if not self.guarded:
            self.outside_guard.append(what)

    def new_stream(self):
        self.note("stream")
        return object()

    def on_stream(self, stream):
        return contextlib.nullcontext()

    def handle(self, stream) -> int:
        return 7

    def order(self, first, then) -> None:
        pass

    def current_stream(self):
        return None

    def synchronize(self, stream) -> None:
        pass

    def empty(self, shape, dtype) -> torch.Tensor:
        self.note("allocation")
        tensor = torch.empty(tuple(shape), dtype=dtype)
        self.tensors[tensor.data_ptr()] = tensor
        return tensor

    def capture(self, run, stream):
        self.note("capture")
        return run


class StandInContext:
    def __init__(self, engine: StandInEngine, memory: torch.Tensor) -> None:
        self.engine = engine
        self.memory = memory
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name, shape) -> bool:
        lo, _, hi = PROFILE[name]
        if not all(a <= n <= b for a, n, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, address) -> bool:
        self.addresses[name] = address
        return True

    def get_tensor_shape(self, name):
        return self.shapes["x"]

    def execute_async_v3(self, handle) -> bool:
        bound = {name: self.engine.ops.tensors[address] for name, address in self.addresses.items()}
        for name, tensor in bound.items():
            if tensor.dtype != ENGINE_DTYPES[name]:
                raise AssertionError(f"{name} bound as {tensor.dtype}; the engine reads {ENGINE_DTYPES[name]}")
        bound["out"].copy_(bound["x"] * bound["scale"].float())
        if "twice" in bound:
            bound["twice"].copy_(bound["x"] * 2)
        self.engine.runs += 1
        return True


class StandInEngine:
    """A stand-in for ``ICudaEngine``'s metadata calls (not TensorRT)."""

    def __init__(self, ops: StandInOps, *, memory: int = 4096, outputs: tuple[str, ...] = ("out",)) -> None:
        self.ops = ops
        self.outputs = list(outputs)
        self.contexts: list[StandInContext] = []
        self.runs = 0
        self._memory = memory

    def input_names(self):
        return ["x", "scale"]

    def output_names(self):
        return self.outputs

    def dtype(self, name):
        return ENGINE_DTYPES[name]

    def profile(self, name):
        return PROFILE[name]

    def memory_size(self):
        return self._memory

    def new_context(self, memory):
        self.ops.note("context")
        context = StandInContext(self, memory)
        self.contexts.append(context)
        return context


def _runner(**options) -> tuple[EngineRunner, StandInEngine, StandInOps]:
    ops = StandInOps()
    engine = StandInEngine(ops)
    return EngineRunner(engine, ("x", "scale"), ops, output_dtype=torch.float16, name="unet", **options), engine, ops


def _inputs(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(rows * 4, dtype=torch.float16).reshape(rows, 4)  # the caller's fp16, the engine's fp32
    scale = torch.full((rows, 1), 0.5, dtype=torch.float32)  # the caller's fp32, the engine's fp16
    return x, scale


def test_buffers_take_the_engines_dtypes_and_the_output_comes_back_in_the_models():
    runner, _, ops = _runner()
    x, scale = _inputs(3)
    out = runner(x, scale)
    assert out.dtype == torch.float16 and out.shape == (3, 4)
    assert torch.equal(out, (x.float() * 0.5).half())
    bucket = next(iter(runner._buckets.values()))
    assert {n: t.dtype for n, t in bucket.inputs.items()} == {"x": torch.float32, "scale": torch.float16}


def test_every_shape_has_a_context_of_its_own_sharing_one_block_of_memory():
    runner, engine, _ = _runner()
    one, two = _inputs(1), _inputs(2)
    first = runner(*one)
    runner(*two)  # with one shared context, replaying rows=1 after this would run with rows=2's shapes and buffers
    again = runner(*one)
    assert torch.equal(first, again) and torch.equal(again, (one[0].float() * 0.5).half())
    assert runner.contexts == 2 and len({id(c) for c in engine.contexts}) == 2
    assert len({c.memory.data_ptr() for c in engine.contexts}) == 1


def test_every_row_bucket_is_captured_at_install_and_calls_then_capture_nothing():
    runner, engine, _ = _runner()
    made = runner.prepare(runner.bucket_shapes({"x": (2, 4), "scale": (2, 1)}))
    assert made == len(runner.buckets) == 4 and runner.buckets == (1, 2, 4, 8)
    contexts = len(engine.contexts)
    for rows in (1, 2, 3, 5, 8):
        runner(*_inputs(rows))
    assert len(engine.contexts) == contexts


def test_the_row_limit_is_the_profiles_and_more_rows_are_refused_naming_it():
    runner, _, _ = _runner()
    assert runner.row_limit == 8
    with pytest.raises(EngineError, match="at most 8 rows"):
        runner(*_inputs(9))


def test_a_shape_outside_the_profile_is_refused_naming_the_range():
    runner, _, _ = _runner()
    with pytest.raises(EngineError, match=r"input x takes shapes from 1x4 to 8x4, got 1x5"):
        runner(torch.zeros(1, 5), torch.zeros(1, 1))


def test_tensorrt_refusing_a_shape_is_an_engine_error_not_a_silent_run():
    runner, engine, _ = _runner()
    runner.profiles["x"] = type(runner.profiles["x"])((1, 4), (2, 4), (16, 4))  # the runner believes more than the engine takes
    runner.profiles["scale"] = type(runner.profiles["scale"])((1, 1), (2, 1), (16, 1))
    runner.row_limit = 16
    runner.buckets = (1, 2, 4, 8, 16)
    with pytest.raises(EngineError, match="TensorRT refused shape 16x4"):
        runner(*_inputs(12))
    assert engine.runs == 0


def test_contexts_buffers_and_captures_are_made_under_the_models_device_guard():
    runner, _, ops = _runner()
    runner.prepare(runner.bucket_shapes({"x": (2, 4), "scale": (2, 1)}))
    runner(*_inputs(3))
    assert ops.outside_guard == []


def test_an_engine_with_several_outputs_returns_each_in_the_models_dtype():
    """A ControlNet engine gives one residual per skip connection: every output has its buffer, cut to the call's rows."""
    ops = StandInOps()
    engine = StandInEngine(ops, outputs=("out", "twice"))
    runner = EngineRunner(engine, ("x", "scale"), ops, output_dtype=torch.float32, name="controlnet")
    x, scale = _inputs(3)  # padded to the 4-row bucket inside
    out, twice = runner.run(x, scale)
    assert out.dtype == twice.dtype == torch.float32 and out.shape == twice.shape == (3, 4)
    assert torch.equal(out, x.float() * 0.5) and torch.equal(twice, x.float() * 2)
    with pytest.raises(EngineError, match="has 2 outputs; run"):
        runner(x, scale)


def test_an_engine_whose_inputs_differ_from_the_models_is_refused():
    ops = StandInOps()
    with pytest.raises(EngineError, match="rebuild the engine"):
        EngineRunner(StandInEngine(ops), ("x", "scale", "extra"), ops, output_dtype=torch.float16)


# ------------------------------------------------------------------ limits
def test_engine_limits_name_the_range_a_stream_is_outside_of():
    limits = EngineLimits("tensorrt", max_rows=8, side_range=(256, 1024))
    limits.check_stream(512, 512, 8)
    with pytest.raises(ConfigError, match="each side from 256 to 1024"):
        limits.check_stream(128, 512, 1)
    with pytest.raises(ConfigError, match=r"16 model rows per step, more than the tensorrt engines take \(8\)"):
        limits.check_stream(512, 512, 16)
