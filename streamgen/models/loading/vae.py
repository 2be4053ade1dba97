"""Choosing the VAE: TAESD by default, the checkpoint's own AutoencoderKL on request.

``vae="tiny"`` uses the family's tiny autoencoder (TAESD for SD 1.x/2.x,
TAESDXL for SDXL); it is many times faster than the full VAE and is what
real-time streaming wants. A checkpoint whose own VAE already is an
AutoencoderTiny uses that one. ``vae="full"`` uses the checkpoint's
AutoencoderKL. Any other string is a local folder or hub id of an
AutoencoderTiny/AutoencoderKL to use instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from ...errors import ModelLoadError
from .diffusers_dir import load_vae_folder
from .hub import SnapshotRequest, fetch_snapshot
from .weight_files import choose_weight_files, select_folder_files

VaeChoice = Literal["tiny", "full", "other"]
TINY_VAE_REPOS = {"sd": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}


def vae_choice(vae: str) -> VaeChoice:
    return vae if vae in ("tiny", "full") else "other"  # type: ignore[return-value]


def tiny_vae_repo(family: str) -> str:
    return TINY_VAE_REPOS["sdxl" if family == "sdxl" else "sd"]


def load_vae_source(source: str, dtype: torch.dtype) -> torch.nn.Module:
    """An AutoencoderTiny/KL from a local folder (flat, or a pipeline folder with ``vae/``) or a hub id."""
    prefer_half = dtype in (torch.float16, torch.bfloat16)
    path = Path(source).expanduser()
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"VAE folder {path} has no config.json (expected a diffusers AutoencoderTiny/AutoencoderKL folder)")
        return _load_folder(folder, dtype, prefer_half, source)
    if path.exists() or source.startswith((".", "/", "~")):
        raise ModelLoadError(f"VAE {source!r}: no such directory")
    request = SnapshotRequest(
        repo=source,
        what="VAE",
        select=lambda files: select_folder_files(files, [""], prefer_half),
        missing=_missing_vae_files,
        include=("config.json", "diffusion_pytorch_model*.safetensors"),
    )
    return _load_folder(fetch_snapshot(request), dtype, prefer_half, source)


def _load_folder(folder: Path, dtype: torch.dtype, prefer_half: bool, source: str) -> torch.nn.Module:
    try:
        return load_vae_folder(folder, dtype, prefer_half)
    except ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"could not load VAE {source!r} ({type(error).__name__}: {error})") from error


def _missing_vae_files(folder: Path) -> list[str]:
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    if choose_weight_files(names, prefer_half=False) is None:
        missing.append("weights")
    return missing


def needs_fp32_vae(vae: torch.nn.Module, is_sdxl: bool, dtype: torch.dtype) -> bool:
    """SDXL's AutoencoderKL overflows in float16 (its config says ``force_upcast``); run it in float32."""
    return is_sdxl and dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False)) and _is_kl(vae)


def _is_kl(vae: torch.nn.Module) -> bool:
    return type(vae).__name__ == "AutoencoderKL"

