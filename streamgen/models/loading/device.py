"""Picking a device and dtype without importing CUDA-only packages."""

from __future__ import annotations

import torch

from ...errors import ConfigError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was requested but CUDA is not available on this machine")
    return resolved


def auto_dtype(device_type: str, family: str, bf16_supported: bool) -> torch.dtype:
    """What ``auto`` means: the dtype a model family was trained and is published in, where the device runs it fast.

    - CPU: float32 (half precision is slow there);
    - CUDA, image models (SD-family UNets and VAEs, CLIP): float16, as their
      authors publish them;
    - CUDA, video models (Wan 2.1 and its UMT5 encoder): bfloat16. They are
      bf16 models: T5-family encoders overflow in float16, and the DiT's
      activations leave float16's range. A GPU without fast bf16 (before
      Ampere) gets float16, the only fast half type it has.

    Modules a model keeps in float32 (diffusers' and transformers'
    ``_keep_in_fp32_modules``) stay float32 whatever this says
    (:func:`streamgen.models.loading.components.keep_fp32_modules`).
    """
    if device_type != "cuda":
        return torch.float32
    if family == "video" and bf16_supported:
        return torch.bfloat16
    return torch.float16


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, family: str = "image") -> torch.dtype:
    """``auto`` → :func:`auto_dtype` for ``family`` (``image`` or ``video``) on ``device``; else the named dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return auto_dtype(device.type, family, device.type == "cuda" and torch.cuda.is_bf16_supported())
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16") from None
