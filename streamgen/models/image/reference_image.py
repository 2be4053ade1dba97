"""Decoding an IP-Adapter reference image (PNG/JPEG/WebP bytes or a decoded array) into RGB pixels, within bounds.

Decoding runs off the event loop (the setup thread or the model thread);
what may arrive is bounded before any pixel is allocated: the header's size
is checked against :data:`MAX_REFERENCE_SIDE` first, so a small file that
claims a huge image (a decompression bomb) is refused, not decoded.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError

MAX_REFERENCE_SIDE = 4096


def decode_reference_image(image: Any) -> torch.Tensor:
    """(H, W, 3) uint8 CPU tensor of a :class:`~streamgen.control_params.ReferenceImage`; ConfigError when it is not a usable image."""
    if image.pixels is not None:
        return _checked_pixels(image.pixels)
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 - pillow comes with diffusers

    try:
        with Image.open(io.BytesIO(image.data)) as opened:
            width, height = opened.size
            if max(width, height) > MAX_REFERENCE_SIDE:
                raise ConfigError(f"ip_adapter_image is {width}x{height}; the limit is {MAX_REFERENCE_SIDE} pixels a side")
            pixels = np.asarray(opened.convert("RGB"))
    except ConfigError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise ConfigError(f"ip_adapter_image could not be decoded as an image ({error})") from None
    return torch.from_numpy(pixels.copy())


def _checked_pixels(pixels: Any) -> torch.Tensor:
    tensor = torch.as_tensor(pixels) if not isinstance(pixels, torch.Tensor) else pixels
    if tensor.dtype != torch.uint8 or tensor.ndim != 3 or tensor.shape[-1] != 3:
        raise ConfigError(f"ip_adapter_image must be an (H, W, 3) uint8 image, got {tuple(tensor.shape)} {tensor.dtype}")
    if max(tensor.shape[0], tensor.shape[1]) > MAX_REFERENCE_SIDE or min(tensor.shape[0], tensor.shape[1]) < 1:
        raise ConfigError(f"ip_adapter_image is {tensor.shape[1]}x{tensor.shape[0]}; sides must be 1 to {MAX_REFERENCE_SIDE} pixels")
    return tensor.cpu()
