"""Decide what a model ``source`` string names: preset, local folder, checkpoint file or hub id.

The order is fixed so the answer never depends on the network: a preset
name wins, then anything that exists on disk, then strings that can only be
paths (which then do not exist, a clear error), then hub ids
(``owner/name``, or ``owner/name/file.safetensors`` for one checkpoint file
of a repository). Anything else is an unknown model, and the error lists
the presets, image and video.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...errors import ModelLoadError
from ...preset_names import presets_hint
from .presets import IMAGE_PRESETS, ImagePreset, get_image_preset
from .single_file import is_single_file

SourceKind = Literal["preset", "directory", "single_file", "hub", "hub_file"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


@dataclass(frozen=True)
class ModelSource:
    """A resolved source: ``location`` is a path or a hub repository; ``filename`` a file inside it."""

    kind: SourceKind
    location: str
    preset: ImagePreset | None = None
    filename: str | None = None


def resolve_source(source: str) -> ModelSource:
    """Classify ``source`` without touching the network."""
    preset = get_image_preset(source)
    if preset is not None:
        return ModelSource("preset", preset.repo or preset.name, preset=preset)
    path = Path(source).expanduser()
    if path.is_dir():
        return ModelSource("directory", str(path))
    if path.is_file():
        if is_single_file(source):
            return ModelSource("single_file", str(path))
        raise ModelLoadError(f"{source} is a file but not a checkpoint (expected .safetensors, .ckpt, .pt or .pth)")
    parts = source.split("/")
    if len(parts) >= 3 and is_single_file(source) and _HUB_ID.match("/".join(parts[:2])) and not _only_a_path(source):
        return ModelSource("hub_file", "/".join(parts[:2]), filename="/".join(parts[2:]))
    if _only_a_path(source) or is_single_file(source) or len(parts) > 2:
        raise ModelLoadError(f"model {source!r}: no such file or directory ({path.resolve()}). {choices()}")
    if _HUB_ID.match(source):
        return ModelSource("hub", source, preset=preset_for_repo(source))
    raise ModelLoadError(f"unknown model {source!r}: not a preset, an existing local directory or checkpoint file, or a hub id (owner/name). {choices()}")


def preset_for_repo(repo: str) -> ImagePreset | None:
    """The preset whose weights ``repo`` is, when using it adds nothing the user did not ask for (no LoRA)."""
    for preset in IMAGE_PRESETS.values():
        if preset.repo == repo and not preset.lora:
            return preset
    return None


def choices() -> str:
    return f"{presets_hint()}; or pass a hub id (owner/name), a local diffusers directory, or a single .safetensors checkpoint."


def _only_a_path(source: str) -> bool:
    """Strings no hub id can look like: absolute, relative-dot, home, or backslash paths."""
    return source.startswith(("/", ".", "~")) or "\\" in source or bool(re.match(r"^[A-Za-z]:", source))
