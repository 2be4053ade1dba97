"""``weights="dummy"``: a real architecture with random weights, built without any download.

Benchmarks need the true size of SD-turbo or SDXL-turbo (the speed of a
2.6B-parameter UNet does not depend on its weights' values) on machines that
cannot or should not download gigabytes. The architecture comes from the
JSON configs shipped in the package (:mod:`streamgen.models.loading.shipped_configs`).

Modules are constructed directly on the target device and in the target
dtype (``torch.device`` as a context manager plus a temporary default dtype),
so random initialisation runs on the GPU in half precision instead of
filling gigabytes of float32 on the CPU first. On the ``meta`` device nothing
is allocated at all, which lets tests check the full-size architectures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from ...errors import ModelLoadError
from .components import TEXT_ENCODER_FOLDERS, ImageComponents, is_sdxl_unet_config, text_encoder_class, vae_class
from .diffusers_dir import scheduler_config
from .shipped_configs import TINY_VAE_CONFIGS, component_config, read_json, shipped_config_dir
from .tokenizer import offline_clip_tokenizer


@contextlib.contextmanager
def building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """New parameters are created on ``device`` in ``dtype`` inside this block."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_dummy_components(
    config_dir: Path, *, device: torch.device, dtype: torch.dtype, seed: int = 0, with_vae: bool = False
) -> ImageComponents:
    """UNet, text encoders (offline tokenizers) and, ``with_vae``, the config's own VAE, randomly initialised."""
    from diffusers import UNet2DConditionModel  # noqa: PLC0415

    unet_config = component_config(config_dir, "unet")
    count = 2 if is_sdxl_unet_config(unet_config) else 1
    encoder_configs = [component_config(config_dir, name) for name in TEXT_ENCODER_FOLDERS[:count]]
    with _seeded(seed, device), building_on(device, dtype):
        unet = UNet2DConditionModel.from_config(unet_config)
        text_encoders = [_build_text_encoder(config, str(config_dir)) for config in encoder_configs]
        vae = build_dummy_vae(config_dir / "vae") if with_vae and (config_dir / "vae" / "config.json").is_file() else None
    return ImageComponents(
        unet=_freeze(unet),
        text_encoders=[_freeze(e) for e in text_encoders],
        tokenizers=[offline_clip_tokenizer() for _ in range(count)],
        scheduler_config=scheduler_config(config_dir),
        vae=None if vae is None else _freeze(vae),
    )


def build_dummy_tiny_vae(family: str, *, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """TAESD (or TAESDXL) with random weights, from the shipped config."""
    with _seeded(seed + 1, device), building_on(device, dtype):
        return _freeze(build_dummy_vae(shipped_config_dir(TINY_VAE_CONFIGS["sdxl" if family == "sdxl" else "sd"])))


def build_dummy_vae(folder: Path) -> torch.nn.Module:
    """An AutoencoderKL/AutoencoderTiny from ``folder/config.json`` (call inside :func:`building_on`)."""
    config = read_json(folder / "config.json")
    return vae_class(config, str(folder)).from_config(config)


def dummy_config_dir(source: str, preset_config: str | None) -> Path:
    """The config folder for dummy weights: a preset's shipped folder or a local diffusers-layout folder."""
    if preset_config is not None:
        return shipped_config_dir(preset_config)
    folder = Path(source).expanduser()
    if (folder / "unet" / "config.json").is_file():
        return folder
    raise ModelLoadError(
        f"weights='dummy' needs a preset with shipped configs or a local folder with unet/config.json; {source!r} is neither"
    )


def _build_text_encoder(config: dict, where: str) -> torch.nn.Module:
    cls = text_encoder_class(config, where)
    settings = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    return cls(cls.config_class(**settings))


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    return module.eval().requires_grad_(False)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Deterministic random init for ``seed`` without disturbing the caller's RNG state."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
