"""Model loading: presets, hub ids, local directories, single files and dummy weights."""

from .loading.device import resolve_device, resolve_dtype
from .image.image_model import ImageModel, ModelNumerics, PromptEmbedding
from .loading.image_loading import load_image_model
from .loading.presets import IMAGE_PRESETS, ImagePreset, get_image_preset

__all__ = [
    "IMAGE_PRESETS",
    "ImageModel",
    "ImagePreset",
    "ModelNumerics",
    "PromptEmbedding",
    "get_image_preset",
    "load_image_model",
    "resolve_device",
    "resolve_dtype",
]
