"""ONNX export of an image model's components: UNet, VAE encoder, VAE decoder, text encoder(s).

Exporter: ``torch.onnx.export(..., dynamo=False)``, the TorchScript tracer.
The torch.export-based exporter (``dynamo=True``, the default since torch
2.9) imports the ``onnxscript`` package, which is not a dependency of
streamgen (nor of its ``onnx`` extra): with torch 2.13 it fails with
``ModuleNotFoundError: onnxscript`` before exporting anything. The tracer
needs nothing beyond torch, exports the diffusers UNet, TAESD and CLIP with
``dynamic_axes`` as they are, and matches torch to ~1e-6 in float32. Torch
warns that the tracer is deprecated; those warnings are silenced here, and
the exporter revision is part of every export's cache key, so moving to the
new exporter later just rebuilds the cache.

Each component is traced through the model's OWN eager call (the functions
behind the model's slots), so the exported graph cannot drift from what the
eager backend runs. Dynamic axes: rows (batch) everywhere; height and width
for the UNet and the VAE.

One trace subtlety: the UNet decides in Python whether to force its
upsamplers' output size (only when the latent side is not a multiple of
2**num_upsamplers); a trace records the branch it took. The example latents
are therefore deliberately NOT multiples, so the graph always takes the
output size from the skip connection, which is right for every size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import EngineError
from .buckets import bucket_for

logger = logging.getLogger(__name__)

OPSET = 17
EXPORT_REVISION = 1  # bump when the export code changes what it writes
EXPORTER_VERSION = f"torchscript-opset{OPSET}-r{EXPORT_REVISION}"
EXTERNAL_DATA_SUFFIX = ".data"
EXAMPLE_ROWS = 2

# (rows, height px, width px) → an input's shape
ShapeOf = Callable[[int, int, int], tuple[int, ...]]


@dataclass(frozen=True)
class InputRange:
    """min / opt / max shape of one graph input (a TensorRT optimisation profile entry)."""

    minimum: tuple[int, ...]
    optimum: tuple[int, ...]
    maximum: tuple[int, ...]


class TracedCall(torch.nn.Module):
    """The module that is traced: calls ``call`` (the model's eager function) and owns ``modules``' weights."""

    def __init__(self, call: Callable[..., Any], modules: list[torch.nn.Module]) -> None:
        super().__init__()
        self.parts = torch.nn.ModuleList(modules)
        self.call = call

    def forward(self, *args: torch.Tensor) -> Any:
        return self.call(*args)


@dataclass(frozen=True)
class ComponentExport:
    """What to trace for one component, with which example inputs and which dynamic axes."""

    name: str
    module: torch.nn.Module  # whose weights the graph holds (cache key)
    traced: torch.nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    shapes: dict[str, ShapeOf]  # per input, for shape ranges
    pixel_factor: int = 1  # pixels per spatial element of the image-like input
    signature: str = ""  # graph inputs/outputs beyond the plain component's (ControlNet residuals): part of the cache key

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def shape_ranges(self, batch_range: tuple[int, int], resolution_range: tuple[int, int], default_size: tuple[int, int]) -> dict[str, InputRange]:
        """min / opt / max of every input: rows over ``batch_range`` (up to its bucket), sides over ``resolution_range``."""
        rows_min, rows_max = batch_range[0], bucket_for(batch_range[1])
        side_min, side_max = resolution_range
        width, height = (min(max(s, side_min), side_max) for s in default_size)
        return {
            name: InputRange(shape(rows_min, side_min, side_min), shape(rows_max, height, width), shape(rows_max, side_max, side_max))
            for name, shape in self.shapes.items()
        }


# ------------------------------------------------------------------ components
def image_components(model: Any) -> list[ComponentExport]:
    """UNet, VAE encoder, VAE decoder and every text encoder of an :class:`~streamgen.models.image.image_model.ImageModel`."""
    return [unet_export(model), vae_encoder_export(model), vae_decoder_export(model), *text_encoder_exports(model)]


def unet_export(model: Any) -> ComponentExport:
    unet, device = model.unet, model.device
    dtype = next(unet.parameters()).dtype
    channels, factor = model.latent_channels, model.vae_scale_factor
    up = 2 ** int(getattr(unet, "num_upsamplers", 0))
    h, w = 2 * up + 1, 3 * up + 1  # not multiples of the upsampling factor: see the module docstring
    tokens = int(model.tokenizers[0].model_max_length)
    width = int(unet.config.cross_attention_dim)
    rows = EXAMPLE_ROWS
    example = [
        torch.randn(rows, channels, h, w, device=device, dtype=dtype),
        torch.tensor([999, 499][:rows], device=device, dtype=torch.long),
        torch.randn(rows, tokens, width, device=device, dtype=dtype),
    ]
    names = ["latents", "timesteps", "hidden"]
    shapes: dict[str, ShapeOf] = {
        "latents": lambda r, hp, wp: (r, channels, hp // factor, wp // factor),
        "timesteps": lambda r, hp, wp: (r,),
        "hidden": lambda r, hp, wp: (r, tokens, width),
    }
    if model.is_sdxl:
        time_ids = 6
        pooled = int(unet.config.projection_class_embeddings_input_dim) - time_ids * int(unet.config.addition_time_embed_dim)
        example += [torch.randn(rows, pooled, device=device, dtype=dtype), torch.full((rows, time_ids), 64.0, device=device, dtype=dtype)]
        names += ["text_embeds", "time_ids"]
        shapes["text_embeds"] = lambda r, hp, wp: (r, pooled)
        shapes["time_ids"] = lambda r, hp, wp: (r, time_ids)

        def call(latents, timesteps, hidden, text_embeds, time_ids_):
            return model.eager_unet(latents, timesteps, hidden, {"text_embeds": text_embeds, "time_ids": time_ids_})
    else:

        def call(latents, timesteps, hidden):
            return model.eager_unet(latents, timesteps, hidden, None)

    axes = {name: {0: "rows"} for name in names}
    axes["latents"] = {0: "rows", 2: "height", 3: "width"}
    axes["eps"] = {0: "rows", 2: "height", 3: "width"}
    return ComponentExport("unet", unet, TracedCall(call, [unet]), tuple(example), tuple(names), ("eps",), axes, shapes, factor)


def unet_inputs(latents: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor, added: dict[str, torch.Tensor] | None, is_sdxl: bool) -> list[torch.Tensor]:
    """A UNet slot's arguments as :func:`unet_export`'s graph inputs, in order; shared conditioning (one row) broadcast to the rows."""
    rows = latents.shape[0]
    args = [latents, _rows(timesteps.reshape(-1), rows), _rows(hidden, rows)]
    if is_sdxl:
        args += [_rows(added["text_embeds"], rows), _rows(added["time_ids"], rows)]
    return args


def _rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    return tensor if tensor.shape[0] == rows else tensor.expand(rows, *tensor.shape[1:])


def vae_encoder_export(model: Any) -> ComponentExport:
    vae, factor = model.vae, model.vae_scale_factor
    dtype = next(vae.parameters()).dtype
    images = torch.rand(EXAMPLE_ROWS, 3, 5 * factor, 7 * factor, device=model.device, dtype=dtype) * 2 - 1
    axes = {"images": {0: "rows", 2: "height", 3: "width"}, "latents": {0: "rows", 2: "latent_height", 3: "latent_width"}}
    shapes: dict[str, ShapeOf] = {"images": lambda r, hp, wp: (r, 3, hp, wp)}
    return ComponentExport("vae_encoder", vae, TracedCall(model._eager_vae_encode, [vae]), (images,), ("images",), ("latents",), axes, shapes)


def vae_decoder_export(model: Any) -> ComponentExport:
    vae, factor = model.vae, model.vae_scale_factor
    dtype = next(vae.parameters()).dtype
    channels = int(vae.config.latent_channels)
    latents = torch.randn(EXAMPLE_ROWS, channels, 5, 7, device=model.device, dtype=dtype)
    axes = {"latents": {0: "rows", 2: "height", 3: "width"}, "images": {0: "rows", 2: "image_height", 3: "image_width"}}
    shapes: dict[str, ShapeOf] = {"latents": lambda r, hp, wp: (r, channels, hp // factor, wp // factor)}
    return ComponentExport("vae_decoder", vae, TracedCall(model._eager_vae_decode, [vae]), (latents,), ("latents",), ("images",), axes, shapes, factor)


def text_encoder_name(index: int) -> str:
    """``text_encoder``, ``text_encoder_2``: diffusers' folder names."""
    return "text_encoder" if index == 0 else f"text_encoder_{index + 1}"


def text_encoder_exports(model: Any) -> list[ComponentExport]:
    exports = []
    for index, (tokenizer, encoder) in enumerate(zip(model.tokenizers, model.text_encoders)):
        tokens = int(tokenizer.model_max_length)
        ids = tokenizer([""], padding="max_length", max_length=tokens, truncation=True, return_tensors="pt").input_ids.to(model.device)
        with torch.no_grad():
            _, pooled = model.eager_text_encode(index, ids)
        outputs = ("hidden",) if pooled is None else ("hidden", "pooled")

        def call(token_ids, index=index, with_pooled=pooled is not None):
            hidden, pooled_ = model.eager_text_encode(index, token_ids)
            return (hidden, pooled_) if with_pooled else hidden

        axes = {"input_ids": {0: "rows"}, **{name: {0: "rows"} for name in outputs}}
        shapes: dict[str, ShapeOf] = {"input_ids": lambda r, hp, wp, n=tokens: (1, n)}
        exports.append(ComponentExport(text_encoder_name(index), encoder, TracedCall(call, [encoder]), (ids,), ("input_ids",), outputs, axes, shapes))
    return exports


# ---------------------------------------------------------------------- export
def export_onnx(component: ComponentExport, path: Path) -> None:
    """Trace ``component`` into an ONNX file at ``path`` (weights over 2 GB go to ``<path>.data`` beside it)."""
    path = Path(path)
    before = set(os.listdir(path.parent))
    try:
        with _quiet_tracer(), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                component.traced,
                component.example,
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(component.input_names),
                output_names=list(component.output_names),
                dynamic_axes=component.dynamic_axes,
                do_constant_folding=True,
            )
    except Exception as error:  # noqa: BLE001 - the exporter raises anything; the message names the op
        raise EngineError(f"ONNX export of the {component.name} failed: {type(error).__name__}: {error}") from error
    extra = sorted(set(os.listdir(path.parent)) - before - {path.name})
    if extra:
        _gather_external_data(path, [path.parent / name for name in extra])


@contextlib.contextmanager
def _quiet_tracer() -> Iterator[None]:
    """Silence the tracer's expected warnings (deprecation; Python-level shape checks it records as constants)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        # CLIP picks its pooled row by argmax (never a negative index), which the warning is about
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        yield


def _gather_external_data(path: Path, written: list[Path]) -> None:
    """The tracer writes one file per weight tensor beyond 2 GB; gather them into ``<path>.data`` (one cache sidecar)."""
    try:
        import onnx  # noqa: PLC0415
    except ImportError as error:
        raise EngineError(f"the {path.name} export is over 2 GB and needs the onnx package to store its weights (pip install 'streamgen[onnx]'): {error}") from None
    graph = onnx.load(str(path), load_external_data=True)
    for file in written:
        file.unlink()
    onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + EXTERNAL_DATA_SUFFIX, size_threshold=1024)
    logger.info("ONNX export %s: weights stored in %s", path.name, path.name + EXTERNAL_DATA_SUFFIX)
