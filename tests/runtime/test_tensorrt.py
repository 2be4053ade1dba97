"""TensorRT engines (NVIDIA GPUs with ``streamgen[tensorrt]``): equal to eager within fp16 tolerance, reused from the cache.

Skipped, with the reason, where TensorRT or CUDA is absent (CI has neither).
"""

from __future__ import annotations

import pytest
import torch

from streamgen.runtime import unavailable_reason

REASON = unavailable_reason("tensorrt", torch.device("cuda" if torch.cuda.is_available() else "cpu"))
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"TensorRT cannot run here: {REASON}")


def test_tensorrt_frames_equal_eager_and_the_engines_are_reused(tmp_path):
    import streamgen
    from streamgen.runtime import accelerate
    from streamgen.runtime.engine_cache import CacheEvent, observe

    frames = [torch.randint(0, 256, (1, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    eager = streamgen.ImageStream("tiny", width=256, height=256, device="cuda", dtype="float16", seed=3)
    fast = streamgen.ImageStream("tiny", width=256, height=256, device="cuda", dtype="float16", seed=3)
    assert accelerate(fast.pipeline.model, "tensorrt", cache_dir=tmp_path) == "tensorrt"
    for frame in frames:
        a, b = eager(frame), fast(frame)
        assert (a.int() - b.int()).abs().float().mean() < 2.0  # fp16 engines: tactics differ from cuDNN's

    events: list[CacheEvent] = []
    with observe(events.append):
        again = streamgen.ImageStream("tiny", width=256, height=256, device="cuda", dtype="float16", seed=3)
        accelerate(again.pipeline.model, "tensorrt", cache_dir=tmp_path)
    assert events and all(e.stage != "built" for e in events), "a restart reuses the engines"


def test_tensorrt_steered_frames_equal_eager(tmp_path):
    """A ControlNet attached before accelerating gets its engine and the steered UNet's at install."""
    import streamgen
    from streamgen.runtime import accelerate

    steering = {"controlnets": [{"model": "tiny", "preprocessor": "passthrough", "conditioning_scale": 0.8}]}
    frames = [torch.randint(0, 256, (1, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    eager = streamgen.ImageStream("tiny", width=256, height=256, device="cuda", dtype="float16", seed=3, **steering)
    fast = streamgen.ImageStream("tiny", width=256, height=256, device="cuda", dtype="float16", seed=3, **steering)
    assert accelerate(fast.pipeline.model, "tensorrt", cache_dir=tmp_path) == "tensorrt"
    assert "tiny" in fast.pipeline.model.steering_engines.controlnets
    for frame in frames:
        a, b = eager(frame), fast(frame)
        assert (a.int() - b.int()).abs().float().mean() < 2.0
