"""``onnxruntime``: the image model's components as ONNX Runtime sessions (``pip install 'streamgen[onnx]'``).

Every component (UNet, VAE encoder, VAE decoder, text encoder(s)) is
exported once into the engine cache (:mod:`streamgen.runtime.onnx_export`,
:mod:`streamgen.runtime.engine_cache`) and run by an ORT session; the
callables installed into the model's slots take and return torch tensors.
Steered calls get engines too: each ControlNet and the UNet with ControlNet
residuals as inputs, exported as ControlNets are attached
(:mod:`streamgen.runtime.steering_engines`). The callables:

- CPU (:class:`CpuRunner`): tensors cross as numpy arrays that share memory
  with them where layout and dtype allow;
- CUDA (:class:`CudaRunner`): the CUDA execution provider with IO binding.
  Inputs and outputs are bound to torch's own device buffers, so no frame
  goes through host memory; an output shape is learnt with one probing run
  per new input shape, then outputs are preallocated by torch.

Memory format, on purpose: with the eager and compile backends the VAE
gets frames in channels_last layout (``uint8_to_model`` permutes HWC frames
into an NCHW-shaped view without copying; tests hold the pipeline to that).
An ONNX graph takes dense NCHW buffers only, so the runners call
``.contiguous()`` on every input: for channels_last frames that is one
explicit layout copy, made here and nowhere else.

The UNet slot is wrapped with :func:`streamgen.runtime.buckets.bucketed`:
row counts are padded to the bucket sizes (the graph is dynamic, but a
bounded set of shapes keeps ORT's per-shape work and memory arena small and
is what the TensorRT profiles, built from these exports, are sized for).

Video models are refused: the causal DiT's chunk forward reads and WRITES
its rolling KV cache in place (ring indices move every chunk), and an ONNX
graph has no in-place state; exporting it would mean returning the whole
cache from every call and copying it back. Use ``compile`` for video.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import EngineError
from .backend import package_missing
from .buckets import bucketed
from .engine_cache import EngineKey, gpu_arch, lora_fingerprint, weights_fingerprint
from .onnx_export import EXPORTER_VERSION, ComponentExport, InputRange, export_onnx, image_components, text_encoder_name, unet_inputs
from .steering_engines import SteeringEngines

EXPORT_BACKEND = "onnx"  # the cache's name for the exported graphs (shared with TensorRT, which builds from them)
# The exported graphs have dynamic rows, height and width: they serve every range, so their keys carry this
# instead of the cache's ranges (a server with other ranges reuses them); artefacts built FROM them for fixed
# ranges (TensorRT profiles) get the real ranges through ImageExports.key.
ANY_RANGE = (0, 0)

_TORCH_DTYPES = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(bfloat16)": torch.bfloat16,
    "tensor(double)": torch.float64,
    "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32,
}


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def unavailable_reason(self, device: Any) -> str | None:
        missing = package_missing("onnxruntime", "onnx")
        if missing is not None:
            return missing
        device = torch.device(device)
        if device.type == "cuda":
            import onnxruntime  # noqa: PLC0415

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                return "this onnxruntime has no CUDA execution provider (install onnxruntime-gpu in place of onnxruntime)"
        elif device.type != "cpu":
            return f"ONNX Runtime runs streamgen models on cpu or cuda devices, not {device.type}"
        return None

    def accelerate_image(self, model: Any, cache: Any) -> None:
        if torch.bfloat16 in (model.dtype, next(model.vae.parameters()).dtype):
            raise EngineError("the onnxruntime backend takes float16 or float32 models (numpy and IO binding have no bfloat16); load with dtype float16")
        exports = export_image_components(model, cache)
        runners = {name: make_runner(exports.onnx_path(name), model.device) for name in exports.names()}
        model.unet_forward = bucketed(unet_slot(runners["unet"], model.is_sdxl))
        model.vae_encode_forward = image_slot(runners["vae_encoder"], model.dtype)
        model.vae_decode_forward = image_slot(runners["vae_decoder"], model.dtype)
        text_runners = [runners[text_encoder_name(i)] for i in range(len(model.text_encoders))]
        model.text_encode_forward = text_slot(text_runners)
        SteeringEngines(model, export_runner(model, cache), self.name).install()

    def accelerate_video(self, model: Any, cache: Any) -> None:
        raise EngineError(
            "ONNX export of the causal DiT chunk forward is not supported: it updates its rolling KV cache in place, "
            "state that a static ONNX graph cannot keep; use acceleration 'compile' for video models"
        )


# --------------------------------------------------------------------- exports
@dataclass
class ImageExports:
    """The ONNX files of an image model's components in the engine cache (TensorRT builds its engines from them)."""

    components: dict[str, ComponentExport]
    paths: dict[str, Path]
    keys: dict[str, EngineKey]
    batch_range: tuple[int, int]
    resolution_range: tuple[int, int]
    default_size: tuple[int, int]

    def names(self) -> list[str]:
        return list(self.components)

    def onnx_path(self, component: str) -> Path:
        return self.paths[component]

    def input_names(self, component: str) -> tuple[str, ...]:
        return self.components[component].input_names

    def shape_ranges(self, component: str) -> dict[str, InputRange]:
        return self.components[component].shape_ranges(self.batch_range, self.resolution_range, self.default_size)

    def key(self, component: str, *, backend: str, library_version: str) -> EngineKey:
        """The key of an artefact built from this export by ``backend`` for the cache's shape ranges."""
        return replace(
            self.keys[component],
            backend=backend,
            backend_version=library_version,
            batch_range=tuple(self.batch_range),
            resolution_range=tuple(self.resolution_range),
        )


def export_image_components(model: Any, cache: Any) -> ImageExports:
    """Export every component of ``model`` into ``cache`` (or reuse the cached export)."""
    components = {c.name: c for c in image_components(model)}
    keys = {name: export_key(model, c) for name, c in components.items()}
    paths = {}
    for name, component in components.items():
        paths[name] = cache.get_or_build(keys[name], lambda out, c=component: export_onnx(c, out))
    return ImageExports(components, paths, keys, cache.batch_range, cache.resolution_range, tuple(model.default_size))


def export_key(model: Any, component: ComponentExport, model_id: str | None = None) -> EngineKey:
    """The cache key of one component's ONNX export (shape ranges: :data:`ANY_RANGE`, the graph is dynamic)."""
    return EngineKey(
        model_id=str(model.name) if model_id is None else model_id,
        weights=weights_fingerprint(component.module),
        component=component.name,
        dtype=str(component.dtype).removeprefix("torch."),
        batch_range=ANY_RANGE,
        resolution_range=ANY_RANGE,
        lora=lora_fingerprint(component.module),
        backend=EXPORT_BACKEND,
        backend_version=EXPORTER_VERSION,
        torch_version=torch.__version__,
        gpu_arch=gpu_arch(model.device),
        inputs=component.signature,
    )


def export_runner(model: Any, cache: Any) -> Callable[[ComponentExport, str], "Runner"]:
    """Export a component into ``cache`` (or reuse it) and run it with ONNX Runtime: how steering engines are built here."""

    def build(component: ComponentExport, model_id: str) -> Runner:
        path = cache.get_or_build(export_key(model, component, model_id), lambda out: export_onnx(component, out))
        return make_runner(path, model.device)

    return build


# ----------------------------------------------------------------------- slots
Runner = Callable[..., list[torch.Tensor]]


def unet_slot(runner: Runner, is_sdxl: bool) -> Callable[..., torch.Tensor]:
    """The UNet slot's signature over a runner; shared conditioning (one row) is broadcast to the rows."""

    def unet(latents, timesteps, hidden, added=None):
        return runner(*unet_inputs(latents, timesteps, hidden, added, is_sdxl))[0].to(latents.dtype)

    return unet


def image_slot(runner: Runner, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """A VAE slot: one image-like tensor in, one out, in the model's dtype (as the eager float32-VAE route returns)."""
    return lambda x: runner(x)[0].to(dtype)


def text_slot(runners: list[Runner]) -> Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]:
    def encode(index: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        outputs = runners[index](ids)
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)

    return encode


# --------------------------------------------------------------------- runners
CUDA_PROVIDER = "CUDAExecutionProvider"


def session_options(threads: int) -> Any:
    """ORT session options within the process's thread budget, with waiting threads that sleep.

    ORT's intra-op pool spins while it waits for work (``OMP_WAIT_POLICY``
    does not reach it): on a shared 2-core machine that kept about two cores
    busy for 1.1-1.2x eager's speed. Like torch's threads (streamgen.threads),
    its pools get the budget's thread count and spinning is turned off.
    """
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT warns about every CPU-placed shape op
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def make_runner(path: Path, device: torch.device) -> Runner:
    """A CPU or CUDA runner of the ONNX file at ``path``."""
    import onnxruntime as ort  # noqa: PLC0415

    options = session_options(torch.get_num_threads())
    try:
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            session = ort.InferenceSession(str(path), options, providers=[(CUDA_PROVIDER, {"device_id": index}), "CPUExecutionProvider"])
            check_providers(session, CUDA_PROVIDER, path.name)
            return CudaRunner(session, torch.device("cuda", index))
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except EngineError:
        raise
    except Exception as error:  # noqa: BLE001 - ORT raises its own exception types
        raise EngineError(f"ONNX Runtime could not load {path.name}: {type(error).__name__}: {error}") from error
    return CpuRunner(session, device)


def check_providers(session: Any, wanted: str, what: str) -> None:
    """EngineError when ORT quietly fell back to the CPU (its CUDA provider could not load), with what it said it has."""
    providers = list(session.get_providers())
    if wanted in providers:
        return
    try:
        import onnxruntime as ort  # noqa: PLC0415

        available, version = ort.get_available_providers(), ort.__version__
    except ImportError:  # pragma: no cover - a session exists, so onnxruntime imports
        available, version = [], "?"
    raise EngineError(
        f"ONNX Runtime {version} could not use {wanted} for {what} and would have run it on the CPU "
        f"(session providers: {', '.join(providers) or 'none'}; this onnxruntime offers: {', '.join(available) or 'none'}). "
        "Its CUDA provider loads only with the CUDA and cuDNN versions this onnxruntime-gpu was built for: install "
        "the matching ones (or the onnxruntime-gpu build for your CUDA), or use --acceleration compile"
    )


def _input_dtypes(session: Any) -> list[tuple[str, torch.dtype]]:
    found = []
    for arg in session.get_inputs():
        if arg.type not in _TORCH_DTYPES:
            raise EngineError(f"unsupported ONNX input type {arg.type} for {arg.name}")
        found.append((arg.name, _TORCH_DTYPES[arg.type]))
    return found


class CpuRunner:
    """Runs a session on the CPU: torch → numpy (dense NCHW, the session's dtypes) → ORT → torch."""

    def __init__(self, session: Any, device: torch.device) -> None:
        self.session = session
        self.device = device
        self.inputs = _input_dtypes(session)
        self.outputs = [o.name for o in session.get_outputs()]

    def __call__(self, *args: torch.Tensor) -> list[torch.Tensor]:
        feeds = {name: arg.detach().to("cpu", dtype).contiguous().numpy() for (name, dtype), arg in zip(self.inputs, args)}
        return [torch.from_numpy(out).to(self.device) for out in self.session.run(self.outputs, feeds)]


class CudaRunner:
    """Runs a session with the CUDA execution provider and IO binding: inputs and outputs stay in torch's device memory."""

    def __init__(self, session: Any, device: torch.device) -> None:
        self.session = session
        self.device = device
        self.inputs = _input_dtypes(session)
        self.outputs = [(o.name, _TORCH_DTYPES[o.type]) for o in session.get_outputs()]
        self._output_shapes: dict[tuple, list[tuple[int, ...]]] = {}

    def __call__(self, *args: torch.Tensor) -> list[torch.Tensor]:
        feeds = [(name, arg.to(self.device, dtype).contiguous()) for (name, dtype), arg in zip(self.inputs, args)]
        signature = tuple(tuple(t.shape) for _, t in feeds)
        shapes = self._output_shapes.get(signature) or self._learn_shapes(signature, feeds)
        outputs = [torch.empty(shape, device=self.device, dtype=dtype) for shape, (_, dtype) in zip(shapes, self.outputs)]
        binding = self._bind(feeds)
        for (name, _), out in zip(self.outputs, outputs):
            binding.bind_output(name, "cuda", self.device.index, _numpy_dtype(out.dtype), tuple(out.shape), out.data_ptr())
        self._run(binding)
        return outputs

    def _bind(self, feeds: list[tuple[str, torch.Tensor]]) -> Any:
        binding = self.session.io_binding()
        for name, tensor in feeds:
            binding.bind_input(name, "cuda", self.device.index, _numpy_dtype(tensor.dtype), tuple(tensor.shape), tensor.data_ptr())
        return binding

    def _run(self, binding: Any) -> None:
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream: torch's writes must be done
        self.session.run_with_iobinding(binding)  # returns when the outputs are written

    def _learn_shapes(self, signature: tuple, feeds: list[tuple[str, torch.Tensor]]) -> list[tuple[int, ...]]:
        """One run with ORT-allocated device outputs, to read their shapes (once per input shape)."""
        binding = self._bind(feeds)
        for name, _ in self.outputs:
            binding.bind_output(name, "cuda", self.device.index)
        self._run(binding)
        shapes = [tuple(value.shape()) for value in binding.get_outputs()]
        self._output_shapes[signature] = shapes
        return shapes


def _numpy_dtype(dtype: torch.dtype) -> Any:
    import numpy as np  # noqa: PLC0415

    table = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32, torch.float64: np.float64}
    if dtype not in table:
        raise EngineError(f"ONNX Runtime IO binding does not take {dtype} tensors here; use float16 or float32")
    return table[dtype]
