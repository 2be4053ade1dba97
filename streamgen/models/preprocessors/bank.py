"""A thread-safe cache of preprocessors, so every session shares one copy of each estimator.

Filter-based preprocessors (canny, blur, ...) hold nothing and are built once
per name. Model-based ones (depth, pose) are loaded once per (name, model,
device, dtype): a second ``get`` with the same ones returns the same object.
Only the ``model`` field of the settings picks what to load; the other
settings are passed with each call. Two threads asking for the same model
wait for one load; loads of different models do not block each other.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import torch

from ...preprocessor_settings import check_preprocessor_name
from ..loading.device import resolve_device, resolve_dtype
from .base import Preprocessor, resolve_settings
from .blur import Blur, Tile
from .canny import Canny
from .depth import Depth, build_tiny_depth_model
from .edges import Lineart, SoftEdge
from .feedback import Feedback
from .model_loading import load_estimator
from .passthrough import Passthrough
from .pose import Pose, build_tiny_pose_model

_FILTERS: dict[str, type] = {
    "passthrough": Passthrough,
    "canny": Canny,
    "soft_edge": SoftEdge,
    "lineart": Lineart,
    "blur": Blur,
    "tile": Tile,
    "feedback": Feedback,
}


class LoadedPreprocessor(NamedTuple):
    """One entry of :meth:`PreprocessorBank.loaded`; ``model``, ``device`` and ``dtype`` are None for filters."""

    name: str
    model: str | None
    device: str | None
    dtype: str | None


def build_preprocessor(name: str, settings: Any = None, device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32) -> Preprocessor:
    """A new preprocessor ``name`` (loading its model for depth/pose), uncached. Raises ConfigError or ModelLoadError."""
    name = check_preprocessor_name(name)
    settings = resolve_settings(name, settings)
    if name in _FILTERS:
        return _FILTERS[name]()
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if name == "depth":
        from transformers import DepthAnythingForDepthEstimation  # noqa: PLC0415

        model = load_estimator(DepthAnythingForDepthEstimation, settings.model, "depth model", build_tiny_depth_model, device, dtype)
        return Depth(model, settings.model)
    from transformers import VitPoseForPoseEstimation  # noqa: PLC0415

    model = load_estimator(VitPoseForPoseEstimation, settings.model, "pose model", build_tiny_pose_model, device, dtype)
    return Pose(model, settings.model)


class PreprocessorBank:
    """``get`` builds a preprocessor the first time and returns the same object afterwards."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[LoadedPreprocessor, Preprocessor] = {}
        self._loading: dict[LoadedPreprocessor, threading.Lock] = {}

    def get(self, name: str, settings: Any = None, device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32) -> Preprocessor:
        """The preprocessor for ``name`` (settings None = defaults), loading its model on first use."""
        name = check_preprocessor_name(name)
        settings = resolve_settings(name, settings)
        key = self._key(name, settings, device, dtype)
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                return found
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                found = self._items.get(key)
            if found is None:
                found = build_preprocessor(name, settings, device, dtype)
                with self._lock:
                    self._items[key] = found
                    self._loading.pop(key, None)
        return found

    def loaded(self) -> list[LoadedPreprocessor]:
        """What the bank holds, in the order it was built."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        """Drop everything (models are freed once no caller holds them)."""
        with self._lock:
            self._items.clear()

    @staticmethod
    def _key(name: str, settings: Any, device: str | torch.device, dtype: str | torch.dtype) -> LoadedPreprocessor:
        if name in _FILTERS:
            return LoadedPreprocessor(name, None, None, None)
        resolved = resolve_device(device)
        if resolved.type == "cuda" and resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        return LoadedPreprocessor(name, settings.model, str(resolved), str(resolve_dtype(dtype, resolved)).removeprefix("torch."))
