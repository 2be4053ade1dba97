"""``tensorrt``: TensorRT engines built from the ONNX export, on CUDA only (``pip install 'streamgen[tensorrt]'``).

Per component (UNet, VAE encoder, VAE decoder) one engine is built from the
ONNX file the ONNX Runtime backend exports, with:

- fp16 (the causal DiT would need bf16; it is not exported: see
  :mod:`streamgen.runtime.ort_backend`),
- ONE optimisation profile spanning the batch-row range AND the resolution
  range of the engine cache, so a user changes resolution without a rebuild,
- the serialized engine stored in the engine cache under the full key
  (TensorRT version and GPU architecture included: a stale engine is never
  loaded).

Steered calls get engines the same way, as ControlNets are attached
(:mod:`streamgen.runtime.steering_engines`): one per ControlNet (control
image in, every residual out: the runner returns all outputs) and one
steered UNet whose residual inputs each get a profile range matching the
latents' (:class:`~streamgen.runtime.control_export.ResidualLayout`).

At run time :class:`~streamgen.runtime.tensorrt_runner.EngineRunner` gives
every input shape (row bucket, :mod:`streamgen.runtime.buckets`) its own
execution context, buffers in the engine's dtypes and a CUDA graph, all
captured at install for the native size; the model learns the engines'
limits (:class:`~streamgen.runtime.engine_limits.EngineLimits`), so the
scheduler never plans more rows than they take and a stream of a size they
do not cover is refused when it is created.

Nothing here can run without an NVIDIA GPU and TensorRT; the tests that need
them skip with a message elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import EngineError
from .backend import package_missing
from .engine_limits import EngineLimits
from .onnx_export import ComponentExport, InputRange, export_onnx, unet_inputs
from .steering_engines import SteeringEngines
from .tensorrt_runner import CudaOps, EngineRunner

logger = logging.getLogger(__name__)

WORKSPACE_BYTES = 4 << 30
ENGINE_COMPONENTS = ("unet", "vae_encoder", "vae_decoder")


class TensorRTBackend:
    name = "tensorrt"

    def unavailable_reason(self, device: Any) -> str | None:
        missing = package_missing("tensorrt", "tensorrt")
        if missing is not None:
            return missing
        if getattr(device, "type", None) != "cuda" or not torch.cuda.is_available():
            return "TensorRT needs an NVIDIA GPU (CUDA device); this model is on " + str(device)
        return None

    def accelerate_image(self, model: Any, cache: Any) -> None:
        from . import ort_backend  # noqa: PLC0415  (its ONNX export is the input of every engine)

        exports = ort_backend.export_image_components(model, cache)
        runners = {}
        for component in ENGINE_COMPONENTS:
            onnx_path, input_names, ranges = exports.onnx_path(component), exports.input_names(component), exports.shape_ranges(component)
            key = exports.key(component, backend=self.name, library_version=_trt_version())
            engine_path = cache.get_or_build(key, lambda out, p=onnx_path, r=ranges: build_engine(p, r, out, model.device))
            runner = load_engine_runner(engine_path, input_names, model.device, model.dtype, component)
            # Every row bucket at the native size is captured now, before any stream runs (never lazily mid-stream
            # for the shapes nearly every stream uses); other sizes are captured on first use, in thread_local mode.
            runner.prepare(runner.bucket_shapes({name: r.optimum for name, r in ranges.items()}))
            runners[component] = runner
        model.unet_forward = engine_slot(runners["unet"], "unet")
        model.vae_encode_forward = engine_slot(runners["vae_encoder"], "vae_encoder")
        model.vae_decode_forward = engine_slot(runners["vae_decoder"], "vae_decoder")
        model.engine_limits = EngineLimits(
            self.name, max_rows=runners["unet"].row_limit, side_range=tuple(int(v) for v in exports.resolution_range)
        )
        SteeringEngines(model, steering_engine_builder(model, cache), self.name).install()

    def accelerate_video(self, model: Any, cache: Any) -> None:
        raise EngineError(
            "TensorRT engines are built from the ONNX export, and the causal DiT chunk forward updates its KV cache in "
            "place, which a static engine cannot; use --acceleration compile for video models"
        )


def steering_engine_builder(model: Any, cache: Any) -> Callable[[ComponentExport, str], Callable[..., list[torch.Tensor]]]:
    """Export a steered component (a ControlNet, the UNet with residual inputs), build its engine, capture its buckets."""
    from . import ort_backend  # noqa: PLC0415

    def build(component: ComponentExport, model_id: str) -> Callable[..., list[torch.Tensor]]:
        export_key = ort_backend.export_key(model, component, model_id)
        onnx_path = cache.get_or_build(export_key, lambda out: export_onnx(component, out))
        ranges = component.shape_ranges(cache.batch_range, cache.resolution_range, tuple(model.default_size))
        key = replace(
            export_key, backend="tensorrt", backend_version=_trt_version(),
            batch_range=tuple(cache.batch_range), resolution_range=tuple(cache.resolution_range),
        )
        engine_path = cache.get_or_build(key, lambda out: build_engine(onnx_path, ranges, out, model.device))
        runner = load_engine_runner(engine_path, component.input_names, model.device, model.dtype, component.name)
        runner.prepare(runner.bucket_shapes({name: r.optimum for name, r in ranges.items()}))
        return runner.run

    return build


def _trt_version() -> str:
    import tensorrt as trt  # noqa: PLC0415

    return str(trt.__version__)


def build_engine(onnx_path: Path, ranges: dict[str, InputRange], out: Path, device: torch.device | None = None) -> None:
    """Parse ``onnx_path``, build an fp16 engine with one profile over ``ranges`` (on ``device``), write it to ``out``."""
    with torch.cuda.device(device) if device is not None and device.type == "cuda" else contextlib.nullcontext():
        _build_engine(onnx_path, ranges, out)


def _build_engine(onnx_path: Path, ranges: dict[str, InputRange], out: Path) -> None:
    import tensorrt as trt  # noqa: PLC0415

    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in ranges:
            raise EngineError(f"no shape range for engine input {name!r} of {onnx_path.name}")
        r = ranges[name]
        profile.set_shape(name, r.minimum, r.optimum, r.maximum)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    out.write_bytes(bytes(serialized))


class TensorRTEngineMeta:
    """:class:`~.tensorrt_runner.EngineMeta` over a deserialised ``ICudaEngine`` (TensorRT 10)."""

    def __init__(self, engine: Any, trt: Any) -> None:
        self.engine = engine
        self.trt = trt
        self._names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]

    def input_names(self) -> list[str]:
        return [n for n in self._names if self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT]

    def output_names(self) -> list[str]:
        return [n for n in self._names if self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.OUTPUT]

    def dtype(self, name: str) -> torch.dtype:
        return torch_dtype(self.engine.get_tensor_dtype(name), self.trt)

    def profile(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        low, best, high = self.engine.get_tensor_profile_shape(name, 0)
        return tuple(low), tuple(best), tuple(high)

    def memory_size(self) -> int:
        size = getattr(self.engine, "device_memory_size_v2", None)  # TensorRT >= 10.1
        return int(size if size is not None else self.engine.device_memory_size)

    def new_context(self, memory: torch.Tensor) -> Any:
        """A context without memory of its own, given ``memory`` (shared by the runner's contexts)."""
        strategy = getattr(self.trt, "ExecutionContextAllocationStrategy", None)
        if strategy is not None:
            context = self.engine.create_execution_context(strategy.USER_MANAGED)
        else:
            context = self.engine.create_execution_context_without_device_memory()
        if context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        if hasattr(context, "set_device_memory"):
            context.set_device_memory(memory.data_ptr(), memory.numel())
        else:
            context.device_memory = memory.data_ptr()
        return context


def load_engine_runner(engine_path: Path, input_names: tuple[str, ...], device: torch.device, output_dtype: torch.dtype, name: str) -> EngineRunner:
    """Deserialise ``engine_path`` on ``device`` (not on whatever device is current) and wrap it in a runner."""
    import tensorrt as trt  # noqa: PLC0415

    with torch.cuda.device(device):
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise EngineError(f"TensorRT could not load {engine_path} (built for another TensorRT or GPU?)")
    runner = EngineRunner(TensorRTEngineMeta(engine, trt), input_names, CudaOps(device), output_dtype=output_dtype, name=name)
    runner.engine = engine  # keeps the engine alive as long as its contexts
    runner.trt_runtime = runtime
    return runner


def engine_slot(runner: EngineRunner, component: str) -> Callable[..., torch.Tensor]:
    """A call with the model slot's signature (the UNet slot takes the SDXL dict too)."""
    if component != "unet":
        return lambda images: runner(images.contiguous())

    def unet(latents, timesteps, hidden, added=None):
        return runner(*(a.contiguous() for a in unet_inputs(latents, timesteps, hidden, added, added is not None)))

    return unet


def torch_dtype(trt_dtype: Any, trt: Any) -> torch.dtype:
    table = {trt.float16: torch.float16, trt.float32: torch.float32, trt.bfloat16: torch.bfloat16, trt.int32: torch.int32, trt.int64: torch.int64}
    if trt_dtype not in table:
        raise EngineError(f"unsupported TensorRT tensor dtype {trt_dtype}")
    return table[trt_dtype]
