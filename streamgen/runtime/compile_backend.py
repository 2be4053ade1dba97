"""``compile``: torch.compile (inductor) of the image UNet/VAE and of the causal video DiT; CUDA graphs for images on CUDA.

Image models
------------
The UNet, VAE encoder and VAE decoder slots each get a compiled callable
(``fullgraph=True``: a graph break is an error, not a silent slow path),
wrapped in :func:`~streamgen.runtime.buckets.bucketed` so that varying row
counts are padded to a few sizes. The row dimension is marked dynamic, so
inductor compiles a component once for 1 row (PyTorch always specialises
size-1 dims) and once for the other rows (on CPU one more from 16 rows on:
inductor's CPU convolution guards ``rows <= 15``). Measured on the tiny model
(CPU, one thread): a static graph per bucket costs one UNet compile per
bucket seen (1, 2, 4, 8: four compiles of ~25-35 s each); the dynamic row
dim costs two (rows 1; rows 2..15), and the 4- and 8-row buckets reuse the
second.

On CUDA the components use ``mode="reduce-overhead"``: inductor's CUDA graph
trees record one graph per bucket size (the buckets bound how many) over
static input buffers that each call copies into; a step boundary is marked
before every call and the output is copied out of the graph's static output
buffer, so a later replay never overwrites a tensor the pipeline still
holds. The compiled region holds no host sync (a ``.item()`` would be a
graph break, and ``fullgraph=True`` refuses those).

Memory format, on purpose: frames reach the VAE encoder channels_last
(:func:`~streamgen.frames.uint8_to_model` permutes HWC to CHW without a
copy, and eager receives exactly that), so the compiled encoder is traced
for channels_last input and every call is given channels_last (a no-op for
the pipeline's frames; padding rows or another caller's layout cannot cause
a recompile). The compiled decoder returns channels_last: the pipeline's
next step, :func:`~streamgen.frames.model_to_uint8`, turns the image into HWC
bytes, and for a channels_last image that permute is already contiguous (no
copy), where eager's NCHW output needs one. Latents enter the UNet and the
decoder in the plain (contiguous) layout: the pipeline's arithmetic on
channels_last encoder output may hand over either, and one layout means one
graph.

Causal video models
-------------------
:meth:`~streamgen.models.video.causal_wan.CausalWanTransformer.chunk_core`
(every layer of a chunk forward, over plain tensors: the planned cache
buffers, the chunk's frame indices, the masks) is compiled as one graph
(``fullgraph=True``, no graph breaks, no host syncs); planning and committing
the caches run eagerly around it (:meth:`run_chunks`). The compiled core is
installed into ``VideoModel.forward_chunks`` and ``forward_chunk``. A graph
is specialised on the number of segments (streams in the forward), on
whether the forward attends with masks (all segments do while any stream's
window fills: see ``run_chunks``) and on size-1 row counts; other row
counts become dynamic after the first change (automatic dynamic shapes).
Measured: one sequential stream compiles 2 graphs (window filling, window
full); three 4-step stream-batch streams joining 2 chunks apart compiled 8
while they joined and warmed up (10 before one mask decision per forward). The recompile limit is raised
(64) so that such variants do not push dynamo into its eager fallback. On
CUDA the video core runs inductor's kernels without CUDA graphs: it writes
the chunk into per-stream KV caches (and row views of them) in place, and
CUDA graph trees only replay graphs whose mutated inputs keep one static
address.

Caches
------
torch.compile's cache artefacts (AOT graphs, kernels, autotuning, dynamic
shapes) are kept in the engine cache under the model's key and loaded before
anything compiles (:mod:`~streamgen.runtime.compile_artifacts`). Inductor's on-disk caches (FX graphs, compiled kernels, triton) are pointed
at ``<engine cache>/inductor`` (``TORCHINDUCTOR_CACHE_DIR``; process-wide:
the latest ``accelerate`` call sets it), so a restart reuses the compiled
kernels instead of compiling again (tiny-video's first DiT graph: 19.5 s
cold, 3.1 s from the cache in a new process; dynamo still traces).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import EngineError
from .buckets import bucketed
from .compile_artifacts import load_compile_artifacts

logger = logging.getLogger(__name__)

RECOMPILE_LIMIT = 64  # per compiled function (dynamo's default is 8)
_EAGER = "__streamgen_eager__"  # attribute of an installed callable: the slot's eager callable


class CompileBackend:
    name = "compile"

    def unavailable_reason(self, device: Any) -> str | None:
        device = torch.device(device)
        if device.type == "cuda":
            if importlib.util.find_spec("triton") is None:
                return "triton is not installed (torch.compile needs it for CUDA kernels; it comes with the CUDA wheels of torch)"
            return None
        if device.type == "cpu":
            compiler = _cpp_compiler()
            if shutil.which(compiler) is None:
                return f"no C++ compiler {compiler!r} found (inductor compiles CPU kernels with one: install g++ or set CXX)"
            return None
        return f"torch.compile is not supported here on {device.type} devices"

    # ------------------------------------------------------------------ image
    def accelerate_image(self, model: Any, cache: Any) -> None:
        cuda = model.device.type == "cuda"
        use_cache_dir(cache)
        load_compile_artifacts(model, cache)
        unet = _eager_of(model.unet_forward)
        encode = _eager_of(model.vae_encode_forward)
        decode = _eager_of(model.vae_decode_forward)
        unet_call = _Compiled("UNet", unet, cuda, arrange=_plain_latents)
        encode_call = _Compiled("VAE encoder", encode, cuda, arrange=_channels_last_images)
        decode_call = _Compiled("VAE decoder", _channels_last_out(decode), cuda, arrange=_plain_latents)
        model.unet_forward = _installed(bucketed(unet_call), unet)
        model.vae_encode_forward = _installed(bucketed(encode_call), encode)
        model.vae_decode_forward = _installed(bucketed(decode_call), decode)
        # Steered steps: the ControlNets (one graph per attached ControlNet: its name is a guard) and the UNet
        # with their residuals as inputs (and, below, IP-Adapter references). No CUDA graphs here: the
        # residuals are a nested, per-step list of tensors, and inductor's kernels are most of the gain; rows
        # are dynamic as for the plain UNet.
        steered = _eager_of(model.unet_steered_forward)
        control = _eager_of(model.controlnet_forward)
        reference = _eager_of(model.unet_reference_forward)
        steered_call = _Compiled("UNet with control inputs", steered, False, arrange=_plain_latents)
        model.unet_steered_forward = _installed(steered_call, steered)
        # IP-Adapter calls: the same compiled UNet inside the adapter's per-row scales (dynamo guards on the
        # processors' scale and the row-scale tensor, so reference calls get their own graph variant).
        model.unet_reference_forward = _installed(functools.partial(model.reference_call, steered_call), reference)
        model.controlnet_forward = _installed(
            _Compiled("ControlNet", control, False, rows_at=1, arrange=_plain_latents), control
        )

    # ------------------------------------------------------------------ video
    def accelerate_video(self, model: Any, cache: Any) -> None:
        use_cache_dir(cache)
        load_compile_artifacts(model, cache)
        transformer = model.transformer
        core = _Compiled("causal DiT chunk", transformer.chunk_core, cuda=False, mark_rows=False)
        model.forward_chunks = _installed(functools.partial(transformer.run_chunks, core), transformer.forward_chunks)
        model.forward_chunk = _installed(functools.partial(transformer.run_chunk, core), transformer.forward_chunk)


# ---------------------------------------------------------------------- parts
def compiled_call(what: str, call: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` compiled as one graph (no CUDA graphs: it writes caches in place), failures raised as EngineError naming ``what``.

    For the layers of a pipeline stage (:mod:`streamgen.parallel`), which
    compile their own part of the DiT the way :meth:`accelerate_video`
    compiles the whole chunk core.
    """
    return _Compiled(what, call, cuda=False, mark_rows=False)


class _Compiled:
    """``torch.compile(call, fullgraph=True)`` whose first dim is dynamic; failures become EngineError naming ``what``.

    ``arrange`` puts the arguments in the layout the graph was made for,
    before the call: dynamo guards on input strides, so a layout fixed here
    is a recompile avoided.
    """

    def __init__(
        self,
        what: str,
        call: Callable[..., Any],
        cuda: bool,
        *,
        mark_rows: bool = True,
        arrange: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None,
        rows_at: int = 0,
    ) -> None:
        _raise_recompile_limit()
        self.what = what
        self.cuda = cuda
        self.mark_rows = mark_rows
        self.rows_at = rows_at  # the argument whose first dim is the row count (the ControlNet's comes after its name)
        self.arrange = arrange
        options = {"mode": "reduce-overhead"} if cuda else {}
        self.compiled = torch.compile(call, fullgraph=True, **options)

    def __call__(self, *args: Any) -> Any:
        if self.arrange is not None:
            args = self.arrange(args)
        if self.mark_rows:
            for tensor in _row_tensors(args, args[self.rows_at].shape[0]):
                torch._dynamo.maybe_mark_dynamic(tensor, 0)
        if self.cuda:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            out = self.compiled(*args)
        except EngineError:
            raise
        except Exception as error:  # dynamo/inductor raise many types; the caller needs to know which part failed
            if not _is_compile_error(error):
                raise
            raise EngineError(f"torch.compile of the {self.what} failed: {type(error).__name__}: {error}") from error
        return out.clone() if self.cuda else out  # out of the CUDA graph's static output buffer


def _is_compile_error(error: Exception) -> bool:
    module = type(error).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor", "torch.fx", "torch._subclasses"))


def _row_tensors(args: Any, rows: int) -> list[torch.Tensor]:
    """Arguments (and dict, list and tuple entries: a ControlNet's residuals) whose first dim is the row count."""
    if isinstance(args, torch.Tensor):
        return [args] if args.ndim and args.shape[0] == rows else []
    if isinstance(args, dict):
        args = tuple(args.values())
    if isinstance(args, (list, tuple)):
        return [t for value in args for t in _row_tensors(value, rows)]
    return []


def _plain_latents(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Every tensor (and dict entry) contiguous.

    Encoded latents come out channels_last and per-row prompt states may be
    broadcast views (stride 0): the graph takes one layout of each.
    """
    return tuple(_contiguous(a) for a in args)


def _contiguous(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.contiguous()
    if isinstance(value, dict):
        return {k: _contiguous(v) for k, v in value.items()}
    return value


def _channels_last_images(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Images channels_last, as :func:`~streamgen.frames.uint8_to_model` makes them (then this is free)."""
    return (args[0].contiguous(memory_format=torch.channels_last),)


def _channels_last_out(decode: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(latents: torch.Tensor) -> torch.Tensor:
        return decode(latents).contiguous(memory_format=torch.channels_last)

    return run


def _installed(call: Callable[..., Any], eager: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` marked with the eager callable it replaces (accelerating twice compiles the eager one again)."""
    setattr(call, _EAGER, eager)
    return call


def _eager_of(call: Callable[..., Any]) -> Callable[..., Any]:
    return getattr(call, _EAGER, call)


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    if config.recompile_limit < RECOMPILE_LIMIT:
        config.recompile_limit = RECOMPILE_LIMIT


# --------------------------------------------------------------------- caches
def use_cache_dir(cache: Any) -> Path | None:
    """Point inductor's on-disk caches at ``<cache.root>/inductor`` (None: leave them where they are)."""
    root = getattr(cache, "root", None)
    if root is None:
        return None
    directory = Path(root) / "inductor"
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    logger.debug("inductor cache: %s", directory)
    return directory


def _cpp_compiler() -> str:
    """The C++ compiler inductor will look for (its default: $CXX, else g++, clang++ on macOS)."""
    return os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
