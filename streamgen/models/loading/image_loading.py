"""Turn a :class:`~streamgen.config.ModelSpec` into a loaded :class:`ImageModel`.

One entry point for every kind of source (see :mod:`streamgen.models.loading.sources`):

- ``tiny``: built in code, random, offline (LoRAs still apply);
- a preset or hub id: resolved to a local snapshot by :mod:`~streamgen.models.loading.hub`
  (cache first, fast failure offline), then loaded like a local directory;
- a local diffusers directory: :mod:`~streamgen.models.loading.diffusers_dir`;
- a single checkpoint file: :mod:`~streamgen.models.loading.single_file`;
- ``weights="dummy"``: the real architecture from shipped configs, random
  weights, built on the target device (:mod:`~streamgen.models.loading.dummy`).

Whatever the source, components are loaded in the target dtype, LoRAs are
applied, the VAE is chosen (:mod:`~streamgen.models.loading.vae`) and
:func:`~streamgen.models.loading.assemble.assemble_image_model` builds the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ...config import ModelSpec
from ...errors import ConfigError, ModelLoadError
from .assemble import ModelTraits, assemble_image_model, default_params_for, guess_x0_formula
from .components import ImageComponents, is_sdxl_unet_config
from .device import resolve_device, resolve_dtype
from .diffusers_dir import PIPELINE_FOLDERS, load_diffusers_dir, missing_parts, vae_class_name
from .dummy import build_dummy_components, build_dummy_tiny_vae, dummy_config_dir
from .hub import SnapshotRequest, download_command, fetch_file, fetch_snapshot
from ..image.image_model import ImageModel
from .lora import apply_loras, lora_state_dict_path
from .presets import ImagePreset
from .single_file import load_single_file
from .sources import ModelSource, resolve_source
from ..image.tiny import build_tiny_image_model
from .vae import load_vae_source, tiny_vae_repo, vae_choice
from .weight_files import select_folder_files

WEIGHT_KINDS = ("pretrained", "dummy")


def load_image_model(spec: ModelSpec | str) -> ImageModel:
    """Load the image model ``spec`` names (preset, hub id, local dir, checkpoint or dummy)."""
    if isinstance(spec, str):
        spec = ModelSpec(source=spec)
    check_spec(spec)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    source = resolve_source(spec.source)
    preset = source.preset
    if preset is not None and preset.family == "tiny":
        model = build_tiny_image_model(seed=spec.seed, device=device, dtype=dtype)
        apply_loras(model.unet, model.text_encoders, spec.lora, fuse=spec.fuse_lora, is_sdxl=False)
        return model
    if spec.weights == "dummy":
        return _load_dummy(spec, source, device, dtype)
    try:
        return _load_pretrained(spec, source, device, dtype)
    except ModelLoadError as error:
        if source.kind != "preset" or preset is None:
            raise
        raise ModelLoadError(f"{error}\n{preset_download_hint(preset, spec.vae)}") from error


def preset_download_hint(preset: ImagePreset, vae: str) -> str:
    """Every repository a preset needs, so one look at the error is enough to fetch them all."""
    repos = [_hub_download_line(preset.repo, need_vae=vae_choice(vae) == "full")]
    if vae_choice(vae) == "tiny" and preset.tiny_vae_repo:
        repos.append(f"hf download {preset.tiny_vae_repo}")
    repos += [f"hf download {repo}" for repo in preset.lora]
    return f"Preset {preset.name!r} needs: " + "; ".join(f"`{line}`" for line in repos)


def _load_pretrained(spec: ModelSpec, source: ModelSource, device: torch.device, dtype: torch.dtype) -> ImageModel:
    preset = source.preset
    loras = {**(preset.lora if preset is not None and source.kind == "preset" else {}), **spec.lora}
    custom_vae = _check_extras(spec.vae, spec.lora, dtype)  # the preset's own LoRAs: after its base model
    components = _load_components(spec, source, dtype)
    family = "sdxl" if is_sdxl_unet_config(components.unet.config) else "sd"
    apply_loras(components.unet, components.text_encoders, loras, fuse=spec.fuse_lora, is_sdxl=family == "sdxl")
    vae = custom_vae if custom_vae is not None else _pick_vae(spec.vae, components, family, preset, dtype)
    traits = _traits(spec.source, preset, components, loras)
    return assemble_image_model(components, vae, traits, device=device, dtype=dtype)


def check_spec(spec: ModelSpec) -> None:
    """Reject malformed specs before anything is loaded."""
    if spec.weights not in WEIGHT_KINDS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_KINDS)}; got {spec.weights!r}")
    if not isinstance(spec.vae, str) or not spec.vae:
        raise ConfigError(f"vae must be 'tiny', 'full' or a VAE folder / hub id; got {spec.vae!r}")
    if not isinstance(spec.lora, Mapping) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in spec.lora.items()
    ):
        raise ConfigError(f"lora must map LoRA paths or hub ids to numeric scales; got {spec.lora!r}")


def _check_extras(vae: str, loras: Mapping[str, float], dtype: torch.dtype) -> torch.nn.Module | None:
    """Find the user's LoRA files and load a VAE given by folder/hub id BEFORE the (large) base model is built.

    A typo in a LoRA or VAE path must fail in milliseconds, not after minutes of
    loading or initialising gigabytes of UNet. Returns the custom VAE, if any.
    """
    for source in loras:
        lora_state_dict_path(source)
    return load_vae_source(vae, dtype) if vae_choice(vae) == "other" else None


def _own_vae_wanted(vae: str, own_vae_class: str | None) -> bool:
    """Load the checkpoint's VAE for vae='full', or for vae='tiny' when it already is a tiny one."""
    choice = vae_choice(vae)
    return choice == "full" or (choice == "tiny" and own_vae_class == "AutoencoderTiny")


def _load_components(spec: ModelSpec, source: ModelSource, dtype: torch.dtype) -> ImageComponents:
    if source.kind == "directory":
        folder = Path(source.location)
        return load_diffusers_dir(folder, dtype=dtype, load_vae=_own_vae_wanted(spec.vae, vae_class_name(folder)), what=f"model {spec.source!r}")
    if source.kind == "single_file":
        return load_single_file(Path(source.location), dtype=dtype, load_vae=vae_choice(spec.vae) == "full")
    if source.kind == "hub_file":
        path = fetch_file(source.location, source.filename or "", what="checkpoint")
        return load_single_file(path, dtype=dtype, load_vae=vae_choice(spec.vae) == "full")
    what = f"preset {spec.source!r}: model" if source.kind == "preset" else "model"
    folder = _hub_snapshot(source.location, need_vae=vae_choice(spec.vae) == "full", dtype=dtype, what=what)
    return load_diffusers_dir(folder, dtype=dtype, load_vae=vae_choice(spec.vae) == "full", what=f"model {spec.source!r} ({source.location})")


def _hub_snapshot(repo: str, *, need_vae: bool, dtype: torch.dtype, what: str) -> Path:
    """The cached or downloaded snapshot of a pipeline repository (only the folders streamgen loads)."""
    prefer_half = dtype in (torch.float16, torch.bfloat16)
    folders = [*PIPELINE_FOLDERS, *(["vae"] if need_vae else [])]

    def select(files: list[str]) -> list[str]:
        return [f for f in ("model_index.json",) if f in files] + select_folder_files(files, folders, prefer_half)

    request = SnapshotRequest(repo=repo, what=what, select=select, missing=lambda f: missing_parts(f, need_vae=need_vae), include=_pipeline_patterns(need_vae))
    return fetch_snapshot(request)


def _pipeline_patterns(need_vae: bool) -> tuple[str, ...]:
    return ("model_index.json", "unet/*", "text_encoder*/*", "tokenizer*/*", "scheduler/*", *(["vae/*"] if need_vae else []))


def _hub_download_line(repo: str | None, *, need_vae: bool) -> str:
    return download_command(repo or "", _pipeline_patterns(need_vae))


def _pick_vae(vae: str, components: ImageComponents, family: str, preset: ImagePreset | None, dtype: torch.dtype) -> torch.nn.Module:
    choice = vae_choice(vae)
    own = components.vae
    if choice == "full":
        if own is None:
            raise ModelLoadError("vae='full' was asked for but the model has no VAE of its own")
        return own
    if choice == "tiny":
        if own is not None and type(own).__name__ == "AutoencoderTiny":
            return own
        repo = preset.tiny_vae_repo if preset is not None and preset.tiny_vae_repo else tiny_vae_repo(family)
        try:
            return load_vae_source(repo, dtype)
        except ModelLoadError as error:
            raise ModelLoadError(
                f"vae='tiny' (the default) uses {repo}: {error} Alternatively pass vae='full' for the model's own VAE, "
                "or vae=<local AutoencoderTiny folder>."
            ) from error
    return load_vae_source(vae, dtype)


def _traits(source: str, preset: ImagePreset | None, components: ImageComponents, loras: dict[str, float]) -> ModelTraits:
    if preset is not None:
        return ModelTraits(name=preset.name, x0_formula=preset.x0_formula, default_size=preset.default_size, default_params=preset.default_params)
    x0 = guess_x0_formula(source, components.scheduler_config, loras)
    return ModelTraits(name=source, x0_formula=x0, default_params=default_params_for(x0))


def _load_dummy(spec: ModelSpec, source: ModelSource, device: torch.device, dtype: torch.dtype) -> ImageModel:
    """The real architecture with random weights, built directly on ``device`` (no download)."""
    preset = source.preset
    if source.kind not in ("preset", "directory") and preset is None:
        raise ModelLoadError(
            f"weights='dummy' needs a preset with shipped configs or a local folder of configs; {spec.source!r} is a {source.kind.replace('_', ' ')}"
        )
    config_dir = dummy_config_dir(spec.source, preset.dummy_config if preset is not None else None)
    choice = vae_choice(spec.vae)
    custom_vae = _check_extras(spec.vae, spec.lora, dtype)
    components = build_dummy_components(config_dir, device=device, dtype=dtype, seed=spec.seed, with_vae=choice == "full")
    family = "sdxl" if is_sdxl_unet_config(components.unet.config) else "sd"
    apply_loras(components.unet, components.text_encoders, spec.lora, fuse=spec.fuse_lora, is_sdxl=family == "sdxl")
    if choice == "full":
        if components.vae is None:
            raise ModelLoadError(f"vae='full': {config_dir} has no vae/config.json")
        vae = components.vae
    elif choice == "tiny":
        vae = build_dummy_tiny_vae(family, device=device, dtype=dtype, seed=spec.seed)
    else:
        vae = custom_vae
    base = _traits(spec.source, preset, components, spec.lora)
    traits = ModelTraits(name=f"{base.name}-dummy", x0_formula=base.x0_formula, default_size=base.default_size, default_params=base.default_params)
    return assemble_image_model(components, vae, traits, device=device, dtype=dtype)
