"""The parts of a Stable Diffusion family model, however they were obtained.

Every way of loading (diffusers directory, hub snapshot, single file, dummy
weights) ends in an :class:`ImageComponents`; :mod:`streamgen.models.loading.assemble`
turns that into the :class:`~streamgen.models.ImageModel` the pipeline uses.
Keeping this seam lets the tests check each loader's output the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import ModelLoadError

TEXT_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2")
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")
SUPPORTED_TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")
SUPPORTED_VAES = ("AutoencoderKL", "AutoencoderTiny")


@dataclass
class ImageComponents:
    """UNet, text encoders, tokenizers and scheduler config of one model; ``vae`` is its own VAE if loaded."""

    unet: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    tokenizers: list[Any]
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    vae: torch.nn.Module | None = None


def is_sdxl_unet_config(config: Any) -> bool:
    """SDXL-style UNets take pooled text + size conditioning ("text_time" added embeddings)."""
    value = config.get("addition_embed_type") if isinstance(config, dict) else getattr(config, "addition_embed_type", None)
    return value == "text_time"


def text_encoder_class(config: dict[str, Any], where: str) -> type:
    """CLIPTextModel or CLIPTextModelWithProjection, as the config's ``architectures`` says."""
    import transformers  # noqa: PLC0415

    names = config.get("architectures") or ["CLIPTextModel"]
    name = names[0]
    if name not in SUPPORTED_TEXT_ENCODERS:
        raise ModelLoadError(f"{where}: text encoder {name!r} is not supported; streamgen loads {', '.join(SUPPORTED_TEXT_ENCODERS)}")
    return getattr(transformers, name)


def vae_class(config: dict[str, Any], where: str) -> type:
    """AutoencoderKL or AutoencoderTiny, as the config's ``_class_name`` says."""
    import diffusers  # noqa: PLC0415

    name = config.get("_class_name", "AutoencoderKL")
    if name not in SUPPORTED_VAES:
        raise ModelLoadError(f"{where}: VAE class {name!r} is not supported; streamgen loads {', '.join(SUPPORTED_VAES)}")
    return getattr(diffusers, name)


def transformers_dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``dtype=`` for transformers >= 5, ``torch_dtype=`` before (the argument was renamed)."""
    import transformers  # noqa: PLC0415

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


CPU_ALIGNMENT = 64  # bytes: a cache line, what oneDNN/MKL kernels vectorise over


def place(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> torch.nn.Module:
    """Move to ``device``/``dtype`` (float32 where the model keeps it), own aligned memory on the CPU, freeze for inference.

    No-op moves and casts are skipped (diffusers warns about casts).
    """
    device = torch.device(device)
    parameters = list(module.parameters())
    if any(p.device != device for p in parameters):
        module = module.to(device=device)
    if any(p.dtype != dtype for p in parameters) and not _only_kept_differ(module, dtype):
        module = module.to(dtype=dtype)
    keep_fp32_modules(module)
    realign_cpu_tensors(module)
    return module.eval().requires_grad_(False)


def _kept_names(module: torch.nn.Module) -> list[tuple[torch.nn.Module, set[str]]]:
    return [(owner, set(names)) for owner in module.modules() if (names := getattr(type(owner), "_keep_in_fp32_modules", None))]


def _only_kept_differ(module: torch.nn.Module, dtype: torch.dtype) -> bool:
    """True when every parameter not in ``dtype`` is one the model keeps in float32 (placed before)."""
    if dtype == torch.float32:
        return False
    kept = {id(t) for owner, keep in _kept_names(module) for name, t in owner.named_parameters() if keep & set(name.split("."))}
    return all(p.dtype == dtype or (id(p) in kept and p.dtype == torch.float32) for p in module.parameters())


def keep_fp32_modules(module: torch.nn.Module) -> int:
    """Put back into float32 what the model's authors keep there in a half-precision model; returns how many tensors moved.

    diffusers and transformers name them in ``_keep_in_fp32_modules`` (Wan's
    time embedder, modulation tables and norms; UMT5's ``wo`` projections,
    which overflow in float16) and their forwards cast around them; a plain
    ``.to(dtype)`` would undo that. Checked on every submodule, so a model
    held inside a wrapper is covered too.
    """
    moved = 0
    with torch.no_grad():
        for owner, keep in _kept_names(module):
            for name, tensor in [*owner.named_parameters(), *owner.named_buffers()]:
                if tensor.dtype in (torch.float16, torch.bfloat16) and keep & set(name.split(".")):
                    tensor.data = tensor.data.float()
                    moved += 1
    return moved


def realign_cpu_tensors(module: torch.nn.Module) -> int:
    """Copy CPU parameters and buffers that start off a cache-line boundary into memory of their own; returns how many.

    Recent safetensors/transformers releases hand out tensors that are views
    into one buffer per file, at whatever offset the file puts them. CPU
    kernels pick their vector path by alignment, so the same weights at
    another offset round differently (a saved model would not reproduce the
    frames of the one it was saved from) and run on the slower path. A GPU
    move copies anyway; on the CPU this does it once, at load.
    """
    moved = 0
    with torch.no_grad():
        for sub in module.modules():
            for table in (sub._parameters, sub._buffers):  # noqa: SLF001 - the tensors themselves, tied ones included
                for tensor in table.values():
                    if tensor is None or tensor.device.type != "cpu" or tensor.data_ptr() % CPU_ALIGNMENT == 0:
                        continue
                    tensor.data = tensor.data.clone(memory_format=torch.preserve_format)
                    moved += 1
    return moved
