"""Helpers for the pipeline-stage tests: a staged tiny-video model that always stops its ranks, and reference runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from streamgen.models.loading.video_presets import build_tiny_video_model
from streamgen.pipeline.video_loading import video_pipeline_for

SIZE = 64
FRAMES = 33  # 1 + 8 chunks of 4: more chunks than the 3 + 3 frame cache window


@contextlib.contextmanager
def staged_tiny(ranks: int, layers: int, **options) -> Iterator:
    """tiny-video with ``layers`` blocks over ``ranks`` CPU ranks (one thread each); the ranks are stopped after."""
    from streamgen.parallel.staged_model import load_staged_video_model

    model = load_staged_video_model("tiny-video", ["cpu"] * ranks, layers=layers, threads=1, **options)
    try:
        yield model
    finally:
        model.stages.close()


def input_frames(count: int = FRAMES, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (1, SIZE, SIZE, 3), generator=generator, dtype=torch.uint8) for _ in range(count)]


def stream_frames(model, *, stream_batch: bool, frames: Sequence[torch.Tensor], seed: int = 3, steps: int = 2, between=None) -> torch.Tensor:
    """Every output frame of one stream fed ``frames`` one by one, then flushed; ``between(i)`` runs before step i."""
    pipeline = video_pipeline_for(model)
    state = pipeline.create_state(
        {"width": SIZE, "height": SIZE, "use_denoising_batch": stream_batch},
        {"prompt": "a red fox", "num_inference_steps": steps, "seed": seed},
    )
    outputs = []
    for index, frame in enumerate(frames):
        if between is not None:
            between(index)
        outputs.append(pipeline.step([state], [frame])[0].frames)
    outputs.append(pipeline.flush(state).frames)
    return torch.cat(outputs)


def reference_frames(layers: int, *, stream_batch: bool, frames: Sequence[torch.Tensor], **options) -> torch.Tensor:
    """The same stream in one process (no stages)."""
    return stream_frames(build_tiny_video_model(seed=0, layers=layers), stream_batch=stream_batch, frames=frames, **options)
