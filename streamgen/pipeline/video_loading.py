"""Loading a video model into a :class:`~streamgen.pipeline.video.VideoPipeline`.

The pipeline layer wraps what :mod:`streamgen.models.loading.video_presets`
loads; models never import pipelines (DESIGN.md, "Layers point one way").
"""

from __future__ import annotations

from typing import Any

from ..models.loading.video_presets import load_video_model
from ..models.video.video_model import VideoModel
from .video import VideoPipeline


def load_video_pipeline(model: Any = "tiny-video", **spec: Any):
    """A :class:`~streamgen.pipeline.video.VideoPipeline` for a video preset (or a loaded model/pipeline).

    Keywords: ``weights`` (pretrained | dummy), ``device``, ``dtype``,
    ``seed`` (random weights), ``checkpoint`` (causal student file),
    ``checkpoint_key``; ``vae`` and ``fuse_lora`` are accepted for symmetry
    with image models, ``lora`` must be empty (not supported for video).
    """
    if isinstance(model, VideoPipeline):
        return model
    if isinstance(model, VideoModel):
        return VideoPipeline(model)
    return VideoPipeline(load_video_model(model, **spec))
