"""Turn a :class:`~streamgen.config.ModelSpec` into a loaded :class:`ImageModel`."""

from __future__ import annotations

from ..config import ModelSpec
from ..errors import ModelLoadError
from .device import resolve_device, resolve_dtype
from .image_model import ImageModel
from .presets import get_image_preset
from .tiny import build_tiny_image_model


def load_image_model(spec: ModelSpec | str) -> ImageModel:
    """Load the image model ``spec`` names (preset, hub id, local dir, checkpoint or dummy)."""
    if isinstance(spec, str):
        spec = ModelSpec(source=spec)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    preset = get_image_preset(spec.source)
    if preset is not None and preset.family == "tiny":
        return build_tiny_image_model(seed=spec.seed, device=device, dtype=dtype)
    raise ModelLoadError(f"loading {spec.source!r} is not available yet")
