"""ControlNets: loading them like any model, checking they fit the base UNet, and the ``tiny`` one.

A ControlNet is a copy of the UNet's encoder that reads a control image and
adds residuals to the UNet's skip connections (diffusers' ``ControlNetModel``,
SD1.5, SD2.x and SDXL alike). Its weights are shared by every stream that
attaches it; which image it reads and how strongly it steers are per stream
(:mod:`streamgen.control_params`).

Sources, as for base models: a preset name (below), a local diffusers
directory, a single ``.safetensors`` file (its config from a ``config.json``
beside it, else diffusers' own inference from the keys), or a hub id. ``tiny``
is built from the tiny UNet's config with random weights, its zero
convolutions randomised too, so that in tests it really steers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ControlNetModel

from ...errors import ConfigError, ModelLoadError
from ..loading.hub import how_to_get, hub_offline
from .image_model import ImageModel


@dataclass(frozen=True)
class ControlNetPreset:
    """A published ControlNet, the preprocessor it was trained on, and the base family it fits."""

    name: str
    repo: str
    preprocessor: str
    family: str  # "sd15", "sd21" (SD-turbo) or "sdxl" (SDXL-turbo)


CONTROLNET_PRESETS: dict[str, ControlNetPreset] = {
    p.name: p
    for p in (
        ControlNetPreset("canny-sd15", "lllyasviel/control_v11p_sd15_canny", "canny", "sd15"),
        ControlNetPreset("depth-sd15", "lllyasviel/control_v11f1p_sd15_depth", "depth", "sd15"),
        ControlNetPreset("pose-sd15", "lllyasviel/control_v11p_sd15_openpose", "pose", "sd15"),
        ControlNetPreset("lineart-sd15", "lllyasviel/control_v11p_sd15_lineart", "lineart", "sd15"),
        ControlNetPreset("softedge-sd15", "lllyasviel/control_v11p_sd15_softedge", "soft_edge", "sd15"),
        ControlNetPreset("tile-sd15", "lllyasviel/control_v11f1e_sd15_tile", "tile", "sd15"),
        ControlNetPreset("temporalnet-sd15", "CiaraRowles/TemporalNet", "feedback", "sd15"),
        ControlNetPreset("canny-sd21", "thibaud/controlnet-sd21-canny-diffusers", "canny", "sd21"),
        ControlNetPreset("depth-sd21", "thibaud/controlnet-sd21-depth-diffusers", "depth", "sd21"),
        ControlNetPreset("canny-sdxl", "diffusers/controlnet-canny-sdxl-1.0", "canny", "sdxl"),
        ControlNetPreset("depth-sdxl", "diffusers/controlnet-depth-sdxl-1.0", "depth", "sdxl"),
    )
}
TINY_CONTROLNET = "tiny"


def controlnet_names() -> list[str]:
    return [TINY_CONTROLNET, *CONTROLNET_PRESETS]


def load_controlnet(source: str, base: ImageModel, *, seed: int = 0) -> ControlNetModel:
    """The ControlNet ``source`` names, on the base model's device and dtype, checked to fit its UNet."""
    if source == TINY_CONTROLNET:
        controlnet = tiny_controlnet(base.unet, seed=seed)
    else:
        controlnet = _load_weights(source, base.dtype)
    check_controlnet_fits(controlnet, base, source)
    controlnet = controlnet.to(device=base.device)
    if next(controlnet.parameters()).dtype != base.dtype:
        controlnet = controlnet.to(dtype=base.dtype)
    return controlnet.eval().requires_grad_(False)


def tiny_controlnet(unet: torch.nn.Module, *, seed: int = 0) -> ControlNetModel:
    """A ControlNet shaped by ``unet``'s config, random weights (zero convolutions included, the image encoder scaled so the image steers), deterministic for ``seed``."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            torch.nn.init.normal_(conv.weight, std=0.05)
            torch.nn.init.normal_(conv.bias, std=0.05)
        # the control image must matter as much as the latents do: a variance-keeping init of the image encoder
        embedding = controlnet.controlnet_cond_embedding
        for conv in embedding.modules():
            if isinstance(conv, torch.nn.Conv2d) and conv is not embedding.conv_out:
                torch.nn.init.kaiming_normal_(conv.weight)
        torch.nn.init.normal_(embedding.conv_out.weight, std=0.5)
    finally:
        torch.random.set_rng_state(generator_state)
    return controlnet.float()


def check_controlnet_fits(controlnet: torch.nn.Module, base: ImageModel, source: str) -> None:
    """Refuse a ControlNet made for another base architecture, naming what differs."""
    mine, theirs = controlnet.config, base.unet.config
    differences = []
    for key in ("cross_attention_dim", "block_out_channels", "in_channels", "addition_embed_type"):
        a, b = getattr(mine, key, None), getattr(theirs, key, None)
        if isinstance(a, list):
            a = tuple(a)
        if isinstance(b, list):
            b = tuple(b)
        if a != b:
            differences.append(f"{key} {a} (ControlNet) vs {b} ({base.name})")
    if differences:
        raise ConfigError(
            f"ControlNet {source!r} does not fit {base.name}: {'; '.join(differences)}. "
            "A ControlNet is trained for one base architecture (SD1.5, SD2.x/SD-turbo or SDXL); pick one made for this model"
        )


def _load_weights(source: str, dtype: torch.dtype) -> ControlNetModel:
    preset = CONTROLNET_PRESETS.get(source)
    location = preset.repo if preset is not None else source
    path = Path(location).expanduser()
    try:
        if path.is_dir():
            return ControlNetModel.from_pretrained(str(path), torch_dtype=dtype)
        if path.is_file():
            if path.suffix not in (".safetensors", ".pth", ".pt", ".ckpt", ".bin"):
                raise ModelLoadError(f"ControlNet {source!r} is a file but not a checkpoint (expected .safetensors, .pth, .pt, .ckpt or .bin)")
            config = path.with_name("config.json")
            kwargs = {"config": str(path.parent)} if config.is_file() else {}
            return ControlNetModel.from_single_file(str(path), torch_dtype=dtype, **kwargs)
        if "/" not in location or location.startswith((".", "/", "~")):
            known = ", ".join(controlnet_names())
            raise ModelLoadError(f"unknown ControlNet {source!r}: not a preset ({known}), an existing directory or file, or a hub id (owner/name)")
        return ControlNetModel.from_pretrained(location, torch_dtype=dtype, local_files_only=hub_offline())
    except (ModelLoadError, ConfigError):
        raise
    except Exception as error:  # noqa: BLE001 - diffusers/hub raise many kinds; the message says what to do
        hint = how_to_get(location) if not path.exists() else "check that it is a diffusers ControlNet (config.json + weights) or a ControlNet checkpoint"
        raise ModelLoadError(f"ControlNet {source!r} could not be loaded ({type(error).__name__}: {str(error)[:200]}). {hint}") from None
