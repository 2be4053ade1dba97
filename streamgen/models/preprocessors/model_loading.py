"""Loading the estimator behind a model-based preprocessor (depth, pose): ``tiny``, a local directory or a hub id.

Order, never depending on the network: ``tiny`` builds a random-weight model
in code; an existing directory is loaded from disk; a hub id is loaded from
the local Hugging Face cache when it is there, and otherwise (unless
``HF_HUB_OFFLINE`` is set, which means ``local_files_only=True``) downloaded by
transformers. Every failure becomes :class:`~streamgen.errors.ModelLoadError`
saying which source failed and what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ...errors import ModelLoadError
from ...preprocessor_settings import TINY_MODEL
from ..loading.hub import cached_snapshot, how_to_get, hub_offline


def load_estimator(
    model_class: type,
    source: str,
    what: str,
    build_tiny: Callable[[], torch.nn.Module],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.nn.Module:
    """``model_class`` loaded from ``source`` (or built tiny), in eval mode on ``device``/``dtype``, no gradients."""
    if source == TINY_MODEL:
        model = build_tiny()
    else:
        model = _from_pretrained(model_class, source, what)
    try:
        model = model.to(device=device, dtype=dtype)
    except Exception as error:  # noqa: BLE001 - out of memory, bad device: say which model
        raise ModelLoadError(f"{what} {source!r} could not be moved to {device} as {dtype} ({type(error).__name__}: {error})") from error
    return model.eval().requires_grad_(False)


def _from_pretrained(model_class: type, source: str, what: str) -> torch.nn.Module:
    path = Path(source).expanduser()
    if path.is_dir():
        location, local_only, advice = str(path), True, "Check that the directory holds a transformers config.json and weights for this model type."
    elif source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") != 1:
        raise ModelLoadError(f"{what} {source!r} is neither 'tiny', an existing local directory, nor a hub id (owner/name).")
    else:
        cached = cached_snapshot(source)
        offline = hub_offline()
        location = str(cached) if cached is not None else source
        local_only = cached is not None or offline
        advice = how_to_get(source)
        if cached is None and offline:
            raise ModelLoadError(
                f"{what} {source!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, "
                f"so streamgen did not try the network. {advice}"
            )
    try:
        return model_class.from_pretrained(location, local_files_only=local_only)
    except Exception as error:  # noqa: BLE001 - missing files, wrong model type, network errors alike
        raise ModelLoadError(f"could not load {what} {source!r} ({type(error).__name__}: {error}). {advice}") from error
