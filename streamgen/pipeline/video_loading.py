"""Loading a video model into a :class:`~streamgen.pipeline.video.VideoPipeline`.

The pipeline layer wraps what :mod:`streamgen.models.loading.video_presets`
loads; models never import pipelines (DESIGN.md, "Layers point one way").
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
    ``vae`` and ``fuse_lora`` are accepted for symmetry with image models,
    ``lora`` must be empty (not supported for video).
    """
    acceleration = spec.pop("acceleration", None)
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
