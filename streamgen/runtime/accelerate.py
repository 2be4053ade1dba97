"""``accelerate(model, acceleration)``: install a backend's callables into a model's call slots.

Explicit backends either work or raise :class:`~streamgen.errors.EngineError`
saying why (not installed, no GPU, export failed on which op): nothing falls
back silently. ``auto`` tries every backend available on this machine, times
the model's heaviest component with each on a representative input, keeps the
fastest and logs the numbers (the engines it built stay in the engine cache,
so the next start reuses them).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import EngineError
from .backend import backend_named, check_acceleration

logger = logging.getLogger(__name__)

AUTO_ORDER_CUDA = ("tensorrt", "compile", "onnxruntime")
AUTO_ORDER_CPU = ("compile", "onnxruntime")
AUTO_TIMING_CALLS = 5
DEFAULT_BATCH_RANGE = (1, 8)


def accelerate(
    model: Any,
    acceleration: str = "none",
    *,
    cache_dir: str | Path | None = None,
    batch_range: tuple[int, int] = DEFAULT_BATCH_RANGE,
    resolution_range: tuple[int, int] | None = None,
) -> str:
    """Apply ``acceleration`` to an ImageModel or VideoModel in place; returns the backend in force.

    ``batch_range`` (rows) and ``resolution_range`` (pixels per side; None:
    half the model's native size up to twice it) bound the shapes engines are
    built for: part of every engine's cache key.
    """
    check_acceleration(acceleration)
    if acceleration == "none":
        return "none"
    cache = _engine_cache(cache_dir, batch_range, resolution_range or _native_range(model))
    if acceleration == "auto":
        return _auto(model, cache)
    backend = backend_named(acceleration)
    reason = backend.unavailable_reason(model.device)
    if reason is not None:
        raise EngineError(f"acceleration {acceleration!r} cannot run here: {reason}")
    _install(backend, model, cache)
    return acceleration


def preflight(acceleration: str, device: Any) -> None:
    """Refuse an explicit backend that cannot run on ``device`` BEFORE any weights are loaded."""
    check_acceleration(acceleration)
    if acceleration in ("none", "auto"):
        return
    reason = backend_named(acceleration).unavailable_reason(torch.device(device))
    if reason is not None:
        raise EngineError(f"acceleration {acceleration!r} cannot run here: {reason}")


def _install(backend: Any, model: Any, cache: Any) -> None:
    if _is_video(model):
        backend.accelerate_video(model, cache)
    else:
        backend.accelerate_image(model, cache)


def _is_video(model: Any) -> bool:
    return hasattr(model, "forward_chunks")


def _engine_cache(cache_dir: str | Path | None, batch_range: tuple[int, int], resolution_range: tuple[int, int]) -> Any:
    from .engine_cache import EngineCache, default_cache_dir  # noqa: PLC0415

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return EngineCache(root, batch_range=batch_range, resolution_range=resolution_range)


MIN_DEFAULT_SIDE = 64


def _native_range(model: Any) -> tuple[int, int]:
    """Half the native size up to twice it: the sizes users ask for (a 512 model at 256-1024, SDXL at 512-2048)."""
    size = getattr(model, "default_size", None) or (256, 256)
    low = max(MIN_DEFAULT_SIDE, (min(size) // 2) // 8 * 8)
    return (low, 2 * max(size))


# ---------------------------------------------------------------------- auto
AUTO_CHOICES_FILE = "auto-choices.json"


def _auto(model: Any, cache: Any) -> str:
    """The fastest backend here: measured once per model, device and library versions, then remembered."""
    key = _auto_key(model)
    remembered = _read_choices(cache).get(key)
    if remembered is not None and remembered.get("backend") in ("none", *AUTO_ORDER_CUDA):
        backend = remembered["backend"]
        logger.info("acceleration auto: %s (measured before: %s)", backend, remembered.get("timings_ms"))
        if backend != "none":
            _install(backend_named(backend), model, cache)
        return backend
    best, timings = _measure_backends(model, cache)
    _remember_choice(cache, key, {"backend": best, "timings_ms": {n: round(t * 1000, 3) for n, t in timings.items()}})
    return best


def _auto_key(model: Any) -> str:
    from .engine_cache import gpu_arch, weights_fingerprint  # noqa: PLC0415

    heaviest = model.transformer if _is_video(model) else model.unet
    return "|".join([str(getattr(model, "name", "model")), weights_fingerprint(heaviest), str(model.dtype), gpu_arch(model.device), torch.__version__])


def _read_choices(cache: Any) -> dict[str, Any]:
    path = Path(cache.root) / AUTO_CHOICES_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember_choice(cache: Any, key: str, choice: dict[str, Any]) -> None:
    """Write the choice atomically (temporary file, then rename): readers never see half a file."""
    root = Path(cache.root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        data = _read_choices(cache)
        data[key] = choice
        temporary = root / f".{AUTO_CHOICES_FILE}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(temporary, root / AUTO_CHOICES_FILE)
    except OSError as error:  # a read-only cache only costs a new measurement next time
        logger.warning("could not remember the auto acceleration choice in %s: %s", root, error)


def _measure_backends(model: Any, cache: Any) -> tuple[str, dict[str, float]]:
    device = model.device
    order = AUTO_ORDER_CUDA if device.type == "cuda" else AUTO_ORDER_CPU
    slots = _slots(model)
    eager = {name: getattr(model, name) for name in slots}
    probe = _timing_probe(model)
    timings = {"none": _time(probe)}
    reasons = {}
    for name in order:
        backend = backend_named(name)
        reason = backend.unavailable_reason(device)
        if reason is not None:
            reasons[name] = reason
            continue
        try:
            _install(backend, model, cache)
            timings[name] = _time(probe)
        except EngineError as error:
            reasons[name] = str(error)
        finally:
            for slot, call in eager.items():
                setattr(model, slot, call)
    best = min(timings, key=timings.get)
    summary = ", ".join(f"{n} {t * 1000:.2f} ms" for n, t in sorted(timings.items(), key=lambda kv: kv[1]))
    skipped = "; ".join(f"{n}: {r}" for n, r in reasons.items())
    logger.info("acceleration auto: chose %s (%s)%s", best, summary, f"; not used: {skipped}" if skipped else "")
    if best != "none":
        _install(backend_named(best), model, cache)
    return best, timings


def _slots(model: Any) -> tuple[str, ...]:
    if _is_video(model):
        return tuple(n for n in ("forward_chunks", "forward_chunk") if hasattr(model, n))
    image_slots = (
        "unet_forward", "vae_encode_forward", "vae_decode_forward", "text_encode_forward",
        "unet_steered_forward", "controlnet_forward", "unet_reference_forward", "steering_engines", "engine_limits",
    )
    return tuple(n for n in image_slots if hasattr(model, n))


def _timing_probe(model: Any) -> Callable[[], Any]:
    """One call of the model's heaviest component at its native size (the UNet / the DiT chunk)."""
    if _is_video(model):
        probe = getattr(model, "timing_probe", None)
        if probe is None:
            raise EngineError("this video model offers no timing probe for acceleration 'auto'; choose a backend explicitly")
        return probe
    width, height = model.default_size
    h, w = model.latent_size(width, height)
    latents = torch.randn(2, model.latent_channels, h, w, device=model.device, dtype=model.dtype)
    timesteps = torch.tensor([999, 499], device=model.device)
    hidden = model.encode_prompt("").hidden.expand(2, -1, -1)
    added = None
    if model.is_sdxl:
        pooled = model.encode_prompt("").pooled
        added = {"text_embeds": pooled.expand(2, -1), "time_ids": model.sdxl_time_ids(width, height).expand(2, -1)}
    return lambda: model.predict_noise(latents, timesteps, hidden, added)


def _time(probe: Callable[[], Any]) -> float:
    probe()  # warm-up (lazy initialisation, graph capture)
    _sync()
    best = float("inf")
    for _ in range(AUTO_TIMING_CALLS):
        started = time.perf_counter()
        probe()
        _sync()
        best = min(best, time.perf_counter() - started)
    return best


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
