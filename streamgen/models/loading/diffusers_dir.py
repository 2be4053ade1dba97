"""Load the components of a model stored in diffusers' directory layout.

A hub snapshot, a ``save_pretrained`` folder and a user's local copy all look
the same on disk (``unet/``, ``text_encoder/``, ``tokenizer/``, ``vae/``,
``scheduler/``, plus ``text_encoder_2/`` and ``tokenizer_2/`` for SDXL), so
they all load through :func:`load_diffusers_dir`. Nothing here touches the
network: hub ids are turned into local folders by :mod:`streamgen.models.loading.hub`
first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelLoadError
from .components import (
    TEXT_ENCODER_FOLDERS,
    TOKENIZER_FOLDERS,
    ImageComponents,
    is_sdxl_unet_config,
    text_encoder_class,
    transformers_dtype_kwargs,
    vae_class,
)
from .shipped_configs import component_config, read_json
from .weight_files import choose_weight_files

# The folders a pipeline repository needs for streamgen (``vae`` only for vae="full").
PIPELINE_FOLDERS = ("unet", *TEXT_ENCODER_FOLDERS, *TOKENIZER_FOLDERS, "scheduler")


def is_diffusers_dir(folder: Path) -> bool:
    return (folder / "unet" / "config.json").is_file() or (folder / "model_index.json").is_file()


def vae_class_name(folder: Path) -> str | None:
    """``_class_name`` of the folder's own VAE, or None when it has none."""
    path = folder / "vae" / "config.json"
    return read_json(path).get("_class_name", "AutoencoderKL") if path.is_file() else None


def missing_parts(folder: Path, *, need_vae: bool) -> list[str]:
    """What ``folder`` lacks to be loaded as an image model (empty when complete)."""
    missing: list[str] = []
    unet_config = folder / "unet" / "config.json"
    if not unet_config.is_file():
        return ["unet/config.json"]
    sdxl = is_sdxl_unet_config(read_json(unet_config))
    weighted = ["unet", "text_encoder", *(["text_encoder_2"] if sdxl else []), *(["vae"] if need_vae else [])]
    for component in weighted:
        sub = folder / component
        if not (sub / "config.json").is_file():
            missing.append(f"{component}/config.json")
        elif choose_weight_files(_names(sub), prefer_half=False) is None:
            missing.append(f"{component} weights")
    for tokenizer in TOKENIZER_FOLDERS[: 2 if sdxl else 1]:
        if not (folder / tokenizer).is_dir():
            missing.append(f"{tokenizer}/")
    return missing


def load_diffusers_dir(folder: Path, *, dtype: torch.dtype, load_vae: bool, what: str) -> ImageComponents:
    """UNet, text encoders, tokenizers, scheduler config (and the VAE when asked) from ``folder``, on the CPU."""
    missing = missing_parts(folder, need_vae=load_vae)
    if missing:
        raise ModelLoadError(
            f"{what}: {folder} is not a complete diffusers model directory (missing {', '.join(missing)}). "
            "Expected unet/, text_encoder/, tokenizer/ and scheduler/ (plus text_encoder_2/ and tokenizer_2/ for "
            "SDXL, vae/ for vae='full'), as written by `save_pretrained` or `hf download`."
        )
    prefer_half = dtype in (torch.float16, torch.bfloat16)
    unet = _load(what, "unet", lambda: _load_unet(folder, dtype, prefer_half))
    sdxl = is_sdxl_unet_config(unet.config)
    count = 2 if sdxl else 1
    text_encoders = [
        _load(what, name, lambda name=name: load_text_encoder(folder, name, dtype, prefer_half)) for name in TEXT_ENCODER_FOLDERS[:count]
    ]
    tokenizers = [_load(what, name, lambda name=name: load_tokenizer(folder / name)) for name in TOKENIZER_FOLDERS[:count]]
    vae = _load(what, "vae", lambda: load_vae_folder(folder / "vae", dtype, prefer_half)) if load_vae else None
    return ImageComponents(unet=unet, text_encoders=text_encoders, tokenizers=tokenizers, scheduler_config=scheduler_config(folder), vae=vae)


def scheduler_config(folder: Path) -> dict[str, Any]:
    """The scheduler config when the folder has one (its betas and prediction type matter), else {}."""
    path = folder / "scheduler" / "scheduler_config.json"
    return component_config(folder, "scheduler") if path.is_file() else {}


def load_text_encoder(folder: Path, name: str, dtype: torch.dtype, prefer_half: bool) -> torch.nn.Module:
    sub = folder / name
    cls = text_encoder_class(read_json(sub / "config.json"), str(sub))
    variant = _variant(sub, prefer_half)
    return cls.from_pretrained(str(folder), subfolder=name, variant=variant, **transformers_dtype_kwargs(dtype))


def load_tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer  # noqa: PLC0415

    return CLIPTokenizer.from_pretrained(str(folder))


def load_vae_folder(folder: Path, dtype: torch.dtype, prefer_half: bool) -> torch.nn.Module:
    """An AutoencoderKL/AutoencoderTiny saved in ``folder`` (config.json + weights)."""
    cls = vae_class(read_json(folder / "config.json"), str(folder))
    return cls.from_pretrained(str(folder), torch_dtype=dtype, variant=_variant(folder, prefer_half))


def _load_unet(folder: Path, dtype: torch.dtype, prefer_half: bool) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel  # noqa: PLC0415

    config = component_config(folder, "unet")
    if config.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise ModelLoadError(f"{folder / 'unet'} holds a {config.get('_class_name')}; streamgen's image models use UNet2DConditionModel")
    return UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", torch_dtype=dtype, variant=_variant(folder / "unet", prefer_half))


def _variant(folder: Path, prefer_half: bool) -> str | None:
    choice = choose_weight_files(_names(folder), prefer_half)
    if choice is None:
        raise ModelLoadError(f"no weight files in {folder}")
    return choice.variant


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _load(what: str, component: str, action):
    """Run one component load; library errors become a ModelLoadError that names the model and part."""
    try:
        return action()
    except ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{what}: could not load its {component} ({type(error).__name__}: {error})") from error
