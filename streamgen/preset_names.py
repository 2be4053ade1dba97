"""The names of the built-in model presets, importable without torch.

The command line checks a model name before it loads anything (a misspelt
preset is reported in well under a second, with the nearest name); the
preset tables themselves live with their loaders, which import torch and
diffusers. tests/test_preset_names.py keeps the two in step.
"""

from __future__ import annotations

IDENTITY = "identity"
IMAGE_PRESET_NAMES = ("tiny", "sd-turbo", "sd15-lcm", "sdxl-turbo")
VIDEO_PRESET_NAMES = ("tiny-video", "wan-causal-1.3b", "wan-causal-14b", "self-forcing-1.3b", "causvid-1.3b", "longlive-1.3b", "krea-realtime-14b")
ALL_PRESET_NAMES = (*IMAGE_PRESET_NAMES, *VIDEO_PRESET_NAMES)


def presets_hint() -> str:
    """Every built-in preset, image and video, for error messages ("Image presets: ...; video presets: ...")."""
    return f"Image presets (ImageStream): {', '.join(IMAGE_PRESET_NAMES)}; video presets (VideoStream): {', '.join(VIDEO_PRESET_NAMES)}"
