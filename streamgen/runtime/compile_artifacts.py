"""torch.compile's warm start: its cache artefacts kept in the engine cache, under the model's key.

A compiled image model's first frame took 81-88 s in a fresh process and
8-14 s with inductor's on-disk cache warm: every process still builds its
AOT graphs, autotunes and learns again which dimensions are dynamic. torch
bundles those caches (inductor's FX graphs and kernels, AOTAutograd's
graphs, autotuning results, the dynamic-shape profiles) as one blob:
``torch.compiler.save_cache_artifacts()`` after compiling,
``load_cache_artifacts()`` before. streamgen stores the blob as an engine
cache entry keyed like every other artefact (model, weights fingerprint,
dtype, ranges, LoRA, torch version, GPU architecture), so ``build-engines``
then ``serve``, or any restart, starts from what the last process compiled.

When: :func:`load_compile_artifacts` as the backend is installed;
:func:`save_compile_artifacts` after a warm-up (the server's, ``build-engines``')
and once more at interpreter exit, since a stream may compile shapes the
warm-up did not (the blob then grows; the entry is replaced).
"""

from __future__ import annotations

import atexit
import logging
import threading
from pathlib import Path
from typing import Any

import torch

from .engine_cache import EngineKey, gpu_arch, lora_fingerprint, weights_fingerprint

logger = logging.getLogger(__name__)

COMPONENT = "compile-artifacts"
BACKEND = "compile"
_ATTRIBUTE = "_streamgen_compile_artifacts"
_lock = threading.Lock()
_compiled_models: list[Any] = []  # every model given a store in this process (save_all_compile_artifacts)


class ArtifactStore:
    """Where one model's compile artefacts live: the cache and the key."""

    def __init__(self, cache: Any, key: EngineKey) -> None:
        self.cache = cache
        self.key = key
        self.saved_bytes = 0


def artifacts_key(model: Any, cache: Any) -> EngineKey:
    """The key of a model's compile artefacts: everything its compiled graphs depend on."""
    heaviest = model.transformer if hasattr(model, "forward_chunks") else model.unet
    module = heaviest if isinstance(heaviest, torch.nn.Module) else getattr(heaviest, "local", heaviest)
    return EngineKey(
        model_id=str(getattr(model, "name", "model")),
        weights=weights_fingerprint(module),
        component=COMPONENT,
        dtype=str(model.dtype).removeprefix("torch."),
        batch_range=tuple(cache.batch_range),
        resolution_range=tuple(cache.resolution_range),
        lora=lora_fingerprint(module),
        backend=BACKEND,
        backend_version=torch.__version__,
        torch_version=torch.__version__,
        gpu_arch=gpu_arch(model.device),
    )


def load_compile_artifacts(model: Any, cache: Any) -> bool:
    """Give torch the artefacts a previous process saved for this model (before anything compiles); True when there were some."""
    if getattr(cache, "root", None) is None or not hasattr(torch.compiler, "load_cache_artifacts"):
        return False
    store = ArtifactStore(cache, artifacts_key(model, cache))
    setattr(model, _ATTRIBUTE, store)
    with _lock:
        _compiled_models.append(model)
    atexit.register(save_compile_artifacts, model, quiet=True)
    path = cache.lookup(store.key)
    if path is None:
        return False
    try:
        with _lock:
            info = torch.compiler.load_cache_artifacts(Path(path).read_bytes())
        if info is None:  # torch logs why (a corrupt or foreign blob) and loads nothing
            raise ValueError("torch loaded nothing from it")
    except Exception as error:  # noqa: BLE001 - a stale or foreign blob costs a cold compile, never a failed start
        logger.warning("torch.compile artefacts in %s could not be loaded (%s); compiling from scratch", path.name, error)
        return False
    logger.info("torch.compile warm start: loaded %s (%s)", path.name, _describe(info))
    return True


def save_compile_artifacts(model: Any, *, quiet: bool = False) -> Path | None:
    """Store what torch compiled so far for ``model`` (None: nothing new, or no store for this model)."""
    store = getattr(model, _ATTRIBUTE, None)
    if store is None or not hasattr(torch.compiler, "save_cache_artifacts"):
        return None
    try:
        with _lock:
            saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return None
        blob, info = saved
        if len(blob) <= store.saved_bytes:  # nothing compiled since the last save
            return None
        path = store.cache.store(store.key, lambda out: out.write_bytes(blob))
        store.saved_bytes = len(blob)
    except Exception as error:  # noqa: BLE001 - a warm start is an optimisation: never fail a stream over it
        if not quiet:
            logger.warning("could not save torch.compile artefacts: %s", error)
        return None
    if not quiet:
        logger.info("torch.compile artefacts saved: %s (%.1f MB; %s)", path.name, len(blob) / 1e6, _describe(info))
    return path


def save_all_compile_artifacts() -> list[Path]:
    """Store the artefacts of every model compiled in this process (a server after its warm-up); the paths written."""
    with _lock:
        models = list(_compiled_models)
    return [path for model in models if (path := save_compile_artifacts(model)) is not None]


def _describe(info: Any) -> str:
    artifacts = getattr(info, "artifacts", None)
    if isinstance(artifacts, dict):
        return ", ".join(f"{kind}: {len(items)}" for kind, items in artifacts.items() if items) or "empty"
    return "ok"
