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

At run time every batch bucket (:mod:`streamgen.runtime.buckets`) gets its
own preallocated device buffers and its own CUDA graph capturing
``execute_async_v3`` on a private stream: a call copies its inputs into the
bucket's static buffers, replays the graph and returns a copy of the output
rows it asked for. No host sync happens inside the captured region.

Nothing here can run without an NVIDIA GPU and TensorRT; the tests that need
them skip with a message elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import EngineError
from .backend import package_missing
from .buckets import DEFAULT_BUCKETS, bucket_for, pad_rows
from .onnx_export import InputRange

logger = logging.getLogger(__name__)

WORKSPACE_BYTES = 4 << 30


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
        for slot, component in (("unet_forward", "unet"), ("vae_encode_forward", "vae_encoder"), ("vae_decode_forward", "vae_decoder")):
            onnx_path, input_names, ranges = exports.onnx_path(component), exports.input_names(component), exports.shape_ranges(component)
            key = exports.key(component, backend=self.name, library_version=_trt_version())
            engine_path = cache.get_or_build(key, lambda out, p=onnx_path, r=ranges: build_engine(p, r, out))
            runner = EngineRunner(engine_path, input_names, model.device)
            setattr(model, slot, runner.as_slot(component))

    def accelerate_video(self, model: Any, cache: Any) -> None:
        raise EngineError(
            "TensorRT engines are built from the ONNX export, and the causal DiT chunk forward updates its KV cache in "
            "place, which a static engine cannot; use --acceleration compile for video models"
        )


def _trt_version() -> str:
    import tensorrt as trt  # noqa: PLC0415

    return str(trt.__version__)


def build_engine(onnx_path: Path, ranges: dict[str, InputRange], out: Path) -> None:
    """Parse ``onnx_path``, build an fp16 engine with one profile over ``ranges``, write it to ``out``."""
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


@dataclass
class _Bucket:
    """Static buffers and the captured graph of one input shape."""

    inputs: dict[str, torch.Tensor]
    output: torch.Tensor
    graph: torch.cuda.CUDAGraph | None = None


@dataclass
class EngineRunner:
    """Runs one engine: static buffers and a CUDA graph per input shape (see module docstring)."""

    engine_path: Path
    input_names: tuple[str, ...]
    device: torch.device
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    _state: dict[tuple, _Bucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import tensorrt as trt  # noqa: PLC0415

        self._trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(self.engine_path).read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT could not load {self.engine_path} (built for another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = torch.cuda.Stream(device=self.device)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        rows = args[0].shape[0]
        size = bucket_for(rows, self.buckets)
        feeds = {name: pad_rows(arg, size) if arg.shape[0] == rows else arg for name, arg in zip(self.input_names, args)}
        shape_key = tuple((n, tuple(t.shape), t.dtype) for n, t in feeds.items())
        bucket = self._state.get(shape_key) or self._prepare(shape_key, feeds)
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            for name, value in feeds.items():
                bucket.inputs[name].copy_(value, non_blocking=True)
            bucket.graph.replay()
        current.wait_stream(self.stream)
        return bucket.output[:rows].clone()

    def _prepare(self, shape_key: tuple, feeds: dict[str, torch.Tensor]) -> _Bucket:
        """Allocate the bucket's buffers, bind them, run once, then capture the enqueue in a CUDA graph."""
        inputs = {name: torch.empty_like(value, memory_format=torch.contiguous_format) for name, value in feeds.items()}
        for name, buffer in inputs.items():
            self.context.set_input_shape(name, tuple(buffer.shape))
            self.context.set_tensor_address(name, buffer.data_ptr())
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        output = torch.empty(out_shape, device=self.device, dtype=_torch_dtype(self.engine.get_tensor_dtype(self.output_name)))
        self.context.set_tensor_address(self.output_name, output.data_ptr())
        bucket = _Bucket(inputs, output)
        with torch.cuda.stream(self.stream):
            for name, value in feeds.items():
                inputs[name].copy_(value)
            if not self.context.execute_async_v3(self.stream.cuda_stream):  # warm-up outside the capture
                raise EngineError(f"TensorRT failed to run {Path(self.engine_path).name}")
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)
        bucket.graph = graph
        self._state[shape_key] = bucket
        return bucket

    def as_slot(self, component: str) -> Callable[..., torch.Tensor]:
        """A call with the model slot's signature (the UNet slot takes the SDXL dict too)."""
        if component != "unet":
            return lambda images: self(images.contiguous())

        def unet(latents, timesteps, hidden, added=None):
            args = [latents.contiguous(), timesteps.expand(latents.shape[0]).contiguous(), hidden.contiguous()]
            if added is not None:
                args += [added["text_embeds"].contiguous(), added["time_ids"].contiguous()]
            return self(*args).to(latents.dtype)

        return unet


def _torch_dtype(trt_dtype: Any) -> torch.dtype:
    import tensorrt as trt  # noqa: PLC0415

    table = {trt.float16: torch.float16, trt.float32: torch.float32, trt.bfloat16: torch.bfloat16, trt.int32: torch.int32, trt.int64: torch.int64}
    if trt_dtype not in table:
        raise EngineError(f"unsupported TensorRT output dtype {trt_dtype}")
    return table[trt_dtype]
