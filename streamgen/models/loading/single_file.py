"""Load a single original-layout checkpoint (``.safetensors``/``.ckpt``, A1111/ComfyUI style).

diffusers converts such files when it is given a diffusers-layout config
folder (``config=``). streamgen passes its shipped config folders, chosen by
the checkpoint's family (SD 1.x, SD 2.x, SDXL, as diffusers' key inspection
reports it), so no config is downloaded. A checkpoint kept inside a folder
that has ``unet/config.json`` uses that folder's configs instead (for custom
architectures, and for streamgen's own tests).

The tokenizer is not part of such files: it comes from ``tokenizer/``
(``tokenizer_2/``) next to the checkpoint when present, else from the
family's hub repository (cache first; offline without it is a
:class:`~streamgen.errors.ModelLoadError` that says what to download).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelLoadError
from .components import TEXT_ENCODER_FOLDERS, TOKENIZER_FOLDERS, ImageComponents, is_sdxl_unet_config, text_encoder_class
from .diffusers_dir import load_tokenizer, scheduler_config
from .hub import SnapshotRequest, fetch_snapshot
from .shipped_configs import component_config, shipped_config_dir
from .weight_files import select_folder_files

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


@dataclass(frozen=True)
class CheckpointFamily:
    """Which shipped configs fit a checkpoint family and where its tokenizers live on the hub."""

    label: str
    config: str
    tokenizer_repo: str


# Keys are diffusers' `infer_diffusers_model_type` answers.
CHECKPOINT_FAMILIES = {
    "v1": CheckpointFamily("Stable Diffusion 1.x", "sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "v2": CheckpointFamily("Stable Diffusion 2.x (512, epsilon)", "sd-turbo", "stabilityai/sd-turbo"),
    "xl_base": CheckpointFamily("Stable Diffusion XL", "sdxl-turbo", "stabilityai/sdxl-turbo"),
}


def is_single_file(source: str) -> bool:
    return source.lower().endswith(SINGLE_FILE_SUFFIXES)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The flat state dict of a checkpoint file (unwrapping a ``state_dict`` entry)."""
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint  # noqa: PLC0415

    try:
        return load_single_file_checkpoint(str(path), local_files_only=True)
    except Exception as error:  # noqa: BLE001 - corrupt or unreadable files of any kind
        raise ModelLoadError(f"could not read checkpoint {path} ({type(error).__name__}: {error})") from error


def checkpoint_family(checkpoint: dict[str, Any], path: Path) -> CheckpointFamily:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type  # noqa: PLC0415

    model_type = infer_diffusers_model_type(checkpoint)
    family = CHECKPOINT_FAMILIES.get(model_type)
    if family is None:
        supported = ", ".join(f.label for f in CHECKPOINT_FAMILIES.values())
        raise ModelLoadError(f"{path} looks like a {model_type!r} checkpoint; streamgen's single-file loader supports {supported}")
    return family


def local_config_dir(path: Path) -> Path | None:
    """The checkpoint's own folder when it holds diffusers configs (``unet/config.json``)."""
    folder = path.parent
    return folder if (folder / "unet" / "config.json").is_file() else None


def load_single_file(path: Path, *, dtype: torch.dtype, load_vae: bool) -> ImageComponents:
    """Components of the checkpoint at ``path``, converted with the fitting config folder, on the CPU."""
    checkpoint = read_checkpoint(path)
    config_dir = local_config_dir(path)
    family = None if config_dir is not None else checkpoint_family(checkpoint, path)
    if config_dir is None:
        config_dir = shipped_config_dir(family.config)
    components = convert_checkpoint(checkpoint, config_dir, dtype=dtype, load_vae=load_vae, what=str(path))
    components.tokenizers = tokenizers_for(path, family, len(components.text_encoders))
    return components


def convert_checkpoint(checkpoint: dict[str, Any], config_dir: Path, *, dtype: torch.dtype, load_vae: bool, what: str) -> ImageComponents:
    """UNet, text encoders and (optionally) the AutoencoderKL of an original-layout state dict."""
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: PLC0415

    sdxl = is_sdxl_unet_config(component_config(config_dir, "unet"))
    unet = _convert(what, "unet", lambda: UNet2DConditionModel.from_single_file(checkpoint, **_model_args(config_dir, "unet", dtype)))
    text_encoders = [_convert(what, name, lambda name=name: _text_encoder(checkpoint, config_dir, name, dtype)) for name in TEXT_ENCODER_FOLDERS[: 2 if sdxl else 1]]
    vae = _convert(what, "vae", lambda: AutoencoderKL.from_single_file(checkpoint, **_model_args(config_dir, "vae", dtype))) if load_vae else None
    return ImageComponents(unet=unet, text_encoders=text_encoders, tokenizers=[], scheduler_config=scheduler_config(config_dir), vae=vae)


def tokenizers_for(path: Path, family: CheckpointFamily | None, count: int) -> list[Any]:
    """Tokenizers next to the checkpoint, else from the family's hub repository."""
    names = TOKENIZER_FOLDERS[:count]
    beside = [path.parent / name for name in names]
    if all(folder.is_dir() for folder in beside):
        return [load_tokenizer(folder) for folder in beside]
    if family is None:
        raise ModelLoadError(f"{path}: its config folder has no {'/ and '.join(names)}/ folder(s) for the tokenizer")
    include = tuple(f"{name}/*" for name in names)
    request = SnapshotRequest(
        repo=family.tokenizer_repo,
        what=f"the tokenizer for {path.name} (checkpoint files carry none), from",
        select=lambda files: select_folder_files(files, list(names), prefer_half=False),
        missing=lambda folder: [f"{name}/" for name in names if not (folder / name).is_dir()],
        include=include,
    )
    folder = fetch_snapshot(request)
    return [load_tokenizer(folder / name) for name in names]


def _model_args(config_dir: Path, subfolder: str, dtype: torch.dtype) -> dict[str, Any]:
    return {"config": str(config_dir), "subfolder": subfolder, "local_files_only": True, "torch_dtype": dtype}


def _text_encoder(checkpoint: dict[str, Any], config_dir: Path, name: str, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm  # noqa: PLC0415

    cls = text_encoder_class(component_config(config_dir, name), str(config_dir / name))
    return create_diffusers_clip_model_from_ldm(cls, checkpoint, subfolder=name, config=str(config_dir), torch_dtype=dtype, local_files_only=True)


def _convert(what: str, component: str, action):
    """Convert one component; a failure or weights left unset (still on ``meta``) is a ModelLoadError."""
    try:
        module = action()
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: BLE001 - diffusers raises many kinds on mismatching files
        raise ModelLoadError(f"{what}: could not convert its {component} ({type(error).__name__}: {error})") from error
    unset = [name for name, p in module.named_parameters() if p.device.type == "meta"]
    if unset:
        raise ModelLoadError(f"{what}: the checkpoint has no weights for {len(unset)} {component} parameters (e.g. {unset[0]}); wrong model family?")
    return module
