"""Loading a video model into a :class:`~streamgen.pipeline.video.VideoPipeline`.

The pipeline layer wraps what :mod:`streamgen.models.loading.video_presets`
loads; models never import pipelines (docs/architecture.md, "Layers").
"""

from __future__ import annotations

from typing import Any

from ..config import ModelSpec, check_no_model_options
from ..models.loading.video_presets import load_video_model
from ..models.video.video_model import VideoModel
from ..models.loading.device import resolve_device
from ..runtime import accelerate, preflight
from .video import VideoPipeline


def load_video_pipeline(model: Any = "tiny-video", **spec: Any):
    """A :class:`~streamgen.pipeline.video.VideoPipeline` for a video preset (or a loaded model/pipeline).

    Keywords: ``weights`` (pretrained | dummy), ``device``, ``dtype``,
    ``seed`` (random weights), ``checkpoint`` (causal student file),
    ``checkpoint_key``, ``acceleration`` (see :func:`streamgen.runtime.accelerate`);
    ``lora`` (``{path_or_hub_file: scale}``) and ``fuse_lora`` (default True;
    False keeps live adapters whose scales
    :func:`~streamgen.models.loading.video_lora.set_video_lora_scales` changes)
    put LoRAs on the DiT (:mod:`streamgen.models.loading.video_lora`; pipeline
    stages fuse them into each stage's blocks); ``vae`` is accepted for symmetry with image models.
    """
    acceleration = spec.pop("acceleration", None)
    devices = spec.pop("devices", None)
    if devices is not None and len(_device_list(devices)) > 1:
        return _staged_pipeline(model, _device_list(devices), acceleration, spec)
    if devices is not None:
        spec["device"] = _device_list(devices)[0]
    if isinstance(model, (VideoPipeline, VideoModel)):
        check_no_model_options(spec, f"this {type(model).__name__}")
    if isinstance(model, VideoPipeline):
        pipeline = model
    elif isinstance(model, VideoModel):
        pipeline = VideoPipeline(model)
    else:
        if isinstance(model, ModelSpec):
            acceleration = acceleration or model.acceleration
        if acceleration and acceleration != "none":
            preflight(acceleration, resolve_device(spec.get("device", getattr(model, "device", "auto"))))  # before loading weights
        pipeline = VideoPipeline(load_video_model(model, **spec))
    if acceleration and acceleration != "none":
        accelerate(pipeline.model, acceleration)
    return pipeline


def _device_list(devices: Any) -> list[str]:
    return [d.strip() for d in (devices.split(",") if isinstance(devices, str) else devices) if str(d).strip()]


def _staged_pipeline(model: Any, devices: list[str], acceleration: Any, spec: dict[str, Any]):
    """The DiT's blocks split over ``devices`` as pipeline stages (:mod:`streamgen.parallel`)."""
    from ..errors import ConfigError  # noqa: PLC0415
    from ..parallel.staged_model import load_staged_video_model  # noqa: PLC0415

    if isinstance(model, ModelSpec):
        acceleration = acceleration or model.acceleration
        spec = {"weights": model.weights, "dtype": model.dtype, "seed": model.seed, "lora": model.lora, **spec}
        model = model.source
    if not isinstance(model, str):
        raise ConfigError("pipeline stages load the model themselves: pass a video preset name, not a loaded model")
    if spec.pop("device", "auto") not in ("auto", None):
        raise ConfigError("give either device or devices, not both")
    spec.pop("vae", None)
    return video_pipeline_for(load_staged_video_model(model, devices, acceleration=acceleration or "none", **spec))


def video_pipeline_for(model: Any) -> VideoPipeline:
    """The pipeline that runs ``model``: :class:`StagedVideoPipeline` for a model on pipeline stages, else :class:`VideoPipeline`."""
    if model.stages is not None:
        from .video_staged import StagedVideoPipeline  # noqa: PLC0415

        return StagedVideoPipeline(model)
    return VideoPipeline(model)
