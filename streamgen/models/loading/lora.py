"""LoRA adapters: ``lora={path_or_hub_id: scale}``, loaded with diffusers/peft and usually fused.

diffusers reads every common LoRA format (its own, kohya/A1111, LCM-LoRA) and
injects peft layers into the UNet and text encoders. streamgen then sets each
adapter's scale and, with ``fuse_lora`` (the default), merges them into the
base weights and removes the peft layers: a fused model runs exactly as fast
as one without LoRA, which matters at tens of frames per second. Unfused,
the adapters stay active side by side with their scales.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelLoadError
from .hub import SnapshotRequest, fetch_snapshot
from .single_file import SINGLE_FILE_SUFFIXES

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# diffusers only *warns* (from this logger) when LoRA weights fit no layer of the UNet, and peft
# injects adapters by module-name suffix, so a LoRA for another architecture would load as a
# silent (partial) no-op. streamgen listens for that warning and turns it into an error.
DIFFUSERS_PEFT_LOGGER = "diffusers.utils.peft_utils"
_UNEXPECTED_KEYS = "unexpected keys found in the model:"
# State-dict prefixes (diffusers LoRA format) of the modules a LoRA can touch, in ImageModel order.
TEXT_ENCODER_PREFIXES = ("text_encoder", "text_encoder_2")


def apply_loras(
    unet: torch.nn.Module,
    text_encoders: Sequence[torch.nn.Module],
    loras: Mapping[str, float],
    *,
    fuse: bool,
    is_sdxl: bool,
) -> None:
    """Load each LoRA with its scale into ``unet``/``text_encoders``; fuse and drop the adapters if ``fuse``."""
    if not loras:
        return
    targets = [unet, *text_encoders]
    adapters: dict[str, float] = {}
    for index, (source, scale) in enumerate(loras.items()):
        name = f"streamgen_lora_{index}"
        _load_one(source, name, unet, text_encoders, is_sdxl)
        if not any(name in _adapters_of(t) for t in targets):
            raise ModelLoadError(f"LoRA {source!r} matched no layer of the model; is it made for a different base model (SD 1.5 / SD 2.x / SDXL)?")
        adapters[name] = float(scale)
    for target in targets:
        _set_scales(target, adapters)
        if fuse:
            _fuse_and_unload(target)
        target.requires_grad_(False)


def lora_state_dict_path(source: str) -> Path:
    """A local LoRA weight file for a file path, a folder or a hub id."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _weight_file_in(path, source)
    if path.exists() or source.startswith((".", "/", "~")) or source.lower().endswith(SINGLE_FILE_SUFFIXES):
        raise ModelLoadError(f"LoRA {source!r}: no such file or directory")
    request = SnapshotRequest(
        repo=source,
        what="LoRA",
        select=lambda files: [f for f in files if "/" not in f and f.endswith((".safetensors", ".json"))],
        missing=lambda folder: [] if _safetensors_in(folder) else ["*.safetensors"],
        include=("*.safetensors",),
    )
    return _weight_file_in(fetch_snapshot(request), source)


def _load_one(source: str, name: str, unet: torch.nn.Module, text_encoders: Sequence[torch.nn.Module], is_sdxl: bool) -> None:
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin  # noqa: PLC0415

    loader = StableDiffusionXLLoraLoaderMixin if is_sdxl else StableDiffusionLoraLoaderMixin
    path = lora_state_dict_path(source)
    with warnings.catch_warnings():
        # peft warns on every adapter after the first that the model "already has a peft_config": several named
        # adapters in one model is what lora={a: .., b: ..} asks for, so the warning only alarms users
        warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute in the model.*")
        _load_state(source, path, name, unet, text_encoders, loader)


def _load_state(source: str, path: Path, name: str, unet: torch.nn.Module, text_encoders: Sequence[torch.nn.Module], loader: Any) -> None:
    try:
        state_dict, alphas, metadata = loader.lora_state_dict(
            str(path.parent), weight_name=path.name, local_files_only=True, unet_config=unet.config, return_lora_metadata=True
        )
        unet_keys = [k for k in state_dict if k.startswith(f"{loader.unet_name}.") and "lora" in k]
        if any(k.startswith(f"{loader.unet_name}.") for k in state_dict):
            with _unmatched_lora_keys() as unmatched:
                loader.load_lora_into_unet(state_dict, alphas, unet, adapter_name=name, metadata=metadata)
            _check_unmatched(source, unmatched, len(unet_keys))
        for prefix, encoder in zip(TEXT_ENCODER_PREFIXES, text_encoders):
            if any(k.startswith(f"{prefix}.") for k in state_dict):
                loader.load_lora_into_text_encoder(state_dict, alphas, encoder, prefix=prefix, adapter_name=name, metadata=metadata)
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: BLE001 - diffusers/peft raise many kinds on incompatible files
        raise ModelLoadError(f"could not load LoRA {source!r} from {path} ({type(error).__name__}: {error})") from error


class _UnmatchedKeys(logging.Handler):
    """Collects the keys of diffusers' "unexpected keys" warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.keys: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if _UNEXPECTED_KEYS in message:
            listed = message.split(_UNEXPECTED_KEYS, 1)[1].split(". Loading adapter", 1)[0]
            self.keys += [k.strip().rstrip(".") for k in listed.split(",") if k.strip()]


@contextlib.contextmanager
def _unmatched_lora_keys() -> Iterator[list[str]]:
    """The LoRA weights diffusers could not place while this block runs (whatever its log verbosity)."""
    log = logging.getLogger(DIFFUSERS_PEFT_LOGGER)
    handler, level = _UnmatchedKeys(), log.level
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    try:
        yield handler.keys
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _check_unmatched(source: str, unmatched: list[str], total: int) -> None:
    """Most UNet weights unplaced: the LoRA is for another model (an error). A few: a warning."""
    if not unmatched:
        return
    if 2 * len(unmatched) >= total:
        raise ModelLoadError(
            f"LoRA {source!r} does not fit this model: {len(unmatched)} of its {total} UNet weights match no layer "
            f"(e.g. {unmatched[0]}); is it made for a different base model (SD 1.5 / SD 2.x / SDXL)?"
        )
    logger.warning("LoRA %r: %d of its %d UNet weights match no layer of this model and are ignored (e.g. %s)", source, len(unmatched), total, unmatched[0])


def _tuner_layers(module: torch.nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: PLC0415

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def _adapters_of(module: torch.nn.Module) -> set[str]:
    names: set[str] = set()
    for layer in _tuner_layers(module):
        names.update(getattr(layer, "scaling", {}).keys())
    return names


def _set_scales(module: torch.nn.Module, adapters: Mapping[str, float]) -> None:
    """Give every adapter its user scale (on top of its alpha/rank) and make all of them active."""
    for layer in _tuner_layers(module):
        present = [name for name in adapters if name in layer.scaling]
        for name in present:
            layer.set_scale(name, adapters[name])
        if present:
            layer.set_adapter(present, inference_mode=True)


def _fuse_and_unload(module: torch.nn.Module) -> None:
    """Merge active adapters into the base weights, then swap each peft layer for its base layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: PLC0415

    wrapped = [(name, m) for name, m in module.named_modules() if isinstance(m, BaseTunerLayer) and hasattr(m, "base_layer")]
    for name, layer in wrapped:
        layer.merge(adapter_names=list(layer.active_adapters))
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, layer.get_base_layer())
    if hasattr(module, "peft_config"):
        del module.peft_config
    if hasattr(module, "_hf_peft_config_loaded"):
        module._hf_peft_config_loaded = False


def _safetensors_in(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def _weight_file_in(folder: Path, source: str) -> Path:
    files = _safetensors_in(folder)
    named = [f for f in files if f.name == LORA_WEIGHT_NAME]
    if named:
        return named[0]
    if len(files) == 1:
        return files[0]
    if not files:
        raise ModelLoadError(f"LoRA {source!r}: no .safetensors file in {folder}")
    raise ModelLoadError(f"LoRA {source!r}: several .safetensors files in {folder} ({', '.join(f.name for f in files)}); pass the file's path")
