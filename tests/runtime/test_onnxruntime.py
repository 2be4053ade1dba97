"""The ONNX Runtime backend: every exported component and whole streams match torch eager.

Tolerance: float32 components agree with torch within atol 1e-4 (measured
~1e-6: the same ops in another order); pipeline frames within 1 step of 255
(stream batch carries latents from call to call, and rounding to uint8 can
flip a value that sits on a boundary).

One export per module (module-scoped fixtures) keeps this file fast.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import streamgen
from streamgen.config import StreamConfig
from streamgen.errors import EngineError
from streamgen.models.image.tiny import build_tiny_image_model
from streamgen.pipeline import ImagePipeline
from streamgen.runtime import accelerate
from streamgen.runtime.buckets import bucketed
from streamgen.runtime.engine_cache import EngineCache, observe
from tests.pipeline.helpers import random_frames, record_decoded_latents

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime (pip install 'streamgen[onnx]')")

ATOL = 1e-4
SIZE = 64
FRAMES = 20


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def ort_model(engine_dir):
    """The tiny model (same weights as the eager ``tiny_model``) with its slots on ONNX Runtime."""
    model = build_tiny_image_model(seed=0)
    assert accelerate(model, "onnxruntime", cache_dir=engine_dir) == "onnxruntime"
    return model


def _close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ---------------------------------------------------------------- components
@pytest.mark.parametrize(("rows", "height", "width"), [(1, 8, 8), (3, 16, 12), (2, 9, 7)])
@torch.inference_mode()
def test_unet_matches_torch(ort_model, tiny_model, rows, height, width):
    """Rows, height and width are dynamic; odd latent sides take the UNet's forced-upsample-size path."""
    generator = torch.Generator().manual_seed(rows)
    latents = torch.randn(rows, 4, height, width, generator=generator)
    timesteps = torch.randint(0, 1000, (rows,), generator=generator)
    hidden = torch.randn(rows, 77, 32, generator=generator)
    _close(ort_model.unet_forward(latents, timesteps, hidden, None), tiny_model.unet_forward(latents, timesteps, hidden, None))


@torch.inference_mode()
def test_vae_encoder_and_decoder_match_torch(ort_model, tiny_model):
    images = torch.rand(3, 3, 64, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    _close(ort_model.vae_encode_forward(images), tiny_model.vae_encode_forward(images))
    latents = torch.randn(2, 4, 8, 10, generator=torch.Generator().manual_seed(1))
    _close(ort_model.vae_decode_forward(latents), tiny_model.vae_decode_forward(latents))


@torch.inference_mode()
def test_text_encoder_matches_torch(ort_model, tiny_model):
    tokenizer = tiny_model.tokenizers[0]
    ids = tokenizer(["a watercolor fox"], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    hidden, pooled = ort_model.text_encode_forward(0, ids)
    expected, expected_pooled = tiny_model.text_encode_forward(0, ids)
    assert pooled is None and expected_pooled is None
    _close(hidden, expected)
    _close(ort_model.encode_prompt("an ink drawing of a city").hidden, tiny_model.encode_prompt("an ink drawing of a city").hidden)


@pytest.fixture(scope="module")
def sdxl_pair(tmp_path_factory):
    from tests.models.builders import tiny_sdxl_model

    eager, ort = tiny_sdxl_model(seed=0), tiny_sdxl_model(seed=0)
    accelerate(ort, "onnxruntime", cache_dir=tmp_path_factory.mktemp("sdxl-engines"))
    return eager, ort


@torch.inference_mode()
def test_sdxl_text_encoders_and_added_conditioning_match_torch(sdxl_pair):
    """Two encoders behind one slot (the second gives the pooled vector); the UNet takes text_embeds and time_ids."""
    eager, ort = sdxl_pair
    prompt, expected = ort.encode_prompt("a cat"), eager.encode_prompt("a cat")
    _close(prompt.hidden, expected.hidden)
    _close(prompt.pooled, expected.pooled)
    rows = 3
    latents = torch.randn(rows, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    timesteps = torch.tensor([999, 500, 20])
    hidden = expected.hidden.expand(rows, -1, -1)
    added = {"text_embeds": expected.pooled.expand(rows, -1), "time_ids": eager.sdxl_time_ids(64, 64).expand(rows, -1)}
    _close(ort.unet_forward(latents, timesteps, hidden, added), eager.unet_forward(latents, timesteps, hidden, added))


# -------------------------------------------------------------------- buckets
@torch.inference_mode()
def test_bucket_padding_does_not_change_outputs(ort_model):
    raw = ort_model.unet_forward.__wrapped__  # the installed slot is bucketed
    seen = []

    def spy(*args):
        seen.append(args[0].shape[0])
        return raw(*args)

    generator = torch.Generator().manual_seed(3)
    latents, timesteps, hidden = torch.randn(3, 4, 8, 8, generator=generator), torch.tensor([999, 600, 100]), torch.randn(3, 77, 32, generator=generator)
    padded = bucketed(spy)(latents, timesteps, hidden, None)
    unpadded = spy(latents, timesteps, hidden, None)
    assert seen == [4, 3] and padded.shape[0] == 3
    _close(padded, unpadded, atol=1e-5)


# ------------------------------------------------------------------- streams
SESSIONS = [
    ({"prompt": "a cat", "t_index_list": [20, 40], "cfg_type": "none", "seed": 1}),
    ({"prompt": "a dog", "t_index_list": [10, 35], "cfg_type": "self", "guidance_scale": 1.6, "delta": 0.8, "seed": 2}),
    ({"prompt": "a fox", "t_index_list": [25, 45], "cfg_type": "full", "guidance_scale": 2.0, "negative_prompt": "blurry", "seed": 3}),
]


def _run_sessions(model) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    """The three sessions (cfg none / self / full) batched in ONE step per frame, FRAMES frames: (frames, decoded latents)."""
    pipeline = ImagePipeline(model)
    states = [pipeline.create_state(StreamConfig(width=SIZE, height=SIZE), params) for params in SESSIONS]
    inputs = [random_frames(FRAMES, SIZE, seed=10 + i) for i in range(len(SESSIONS))]
    outputs: list[list[torch.Tensor]] = [[] for _ in SESSIONS]
    with record_decoded_latents(model) as latents:
        for k in range(FRAMES):
            for i, out in enumerate(pipeline.step(states, [frames[k] for frames in inputs])):
                outputs[i].append(out.frames)
    return outputs, latents


def test_batched_sessions_give_the_eager_frames(ort_model, tiny_model):
    (ort, ort_latents), (eager, eager_latents) = _run_sessions(ort_model), _run_sessions(tiny_model)
    assert len(ort_latents) == FRAMES  # one decode call per step for all three sessions
    for mine, reference in zip(ort_latents, eager_latents):
        _close(mine, reference)
    for session, (mine, reference) in enumerate(zip(ort, eager)):
        for k, (a, b) in enumerate(zip(mine, reference)):
            diff = (a.int() - b.int()).abs()
            assert diff.max() <= 1, f"session {session} ({SESSIONS[session]['cfg_type']}) frame {k}: max diff {int(diff.max())}"
            assert diff.float().mean() < 0.01


def test_image_stream_with_onnxruntime_reuses_the_cached_exports(engine_dir, monkeypatch, tiny_model):
    monkeypatch.setenv("STREAMGEN_ENGINE_DIR", str(engine_dir))
    events = []
    with observe(events.append):
        stream = streamgen.ImageStream("tiny", acceleration="onnxruntime", width=SIZE, height=SIZE, prompt="a cat", seed=4)
    assert {e.stage for e in events if e.stage != "start"} == {"reused"}
    eager = streamgen.ImageStream(tiny_model, width=SIZE, height=SIZE, prompt="a cat", seed=4)
    for seed in range(3):
        frame = np.random.default_rng(seed).integers(0, 256, (48, 80, 3), dtype=np.uint8)
        assert np.abs(stream(frame).astype(int) - eager(frame).astype(int)).max() <= 1


# ------------------------------------------------------------- memory format
def _vae_inputs(pipeline, frame_size) -> list[torch.Tensor]:
    seen = []
    original = pipeline.model.vae_encode_forward
    pipeline.model.vae_encode_forward = lambda images: (seen.append(images), original(images))[1]
    try:
        states = [pipeline.create_state(StreamConfig(width=SIZE, height=SIZE), {"prompt": p}) for p in ("a", "b")]
        frames = torch.randint(0, 256, (2, 1, *frame_size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        pipeline.step(states[:1], [frames[0]])
        pipeline.step(states, [frames[0], frames[1]])
    finally:
        pipeline.model.vae_encode_forward = original
    return seen


@pytest.mark.parametrize("frame_size", [(SIZE, SIZE), (96, 128)], ids=["same-size", "resized"])
def test_eager_vae_input_stays_channels_last(tiny_pipeline, frame_size):
    """Frames reach the eager VAE as channels_last (HWC frames permuted, never copied into NCHW)."""
    seen = _vae_inputs(tiny_pipeline, frame_size)
    assert len(seen) == 2
    for images in seen:
        assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()


@torch.inference_mode()
def test_onnxruntime_vae_takes_channels_last_frames(ort_model, tiny_model):
    """The ORT runner makes the NCHW copy itself: channels_last input gives the same latents."""
    images = (torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(5)) * 2 - 1).permute(0, 3, 1, 2)
    assert images.is_contiguous(memory_format=torch.channels_last)
    _close(ort_model.vae_encode_forward(images), ort_model.vae_encode_forward(images.contiguous()), atol=0)
    _close(ort_model.vae_encode_forward(images), tiny_model.vae_encode_forward(images))


# ------------------------------------------------------------------ exports
def test_exports_serve_every_range_and_key_engines_built_from_them(ort_model, engine_dir):
    """Other shape ranges reuse the (dynamic) ONNX exports; TensorRT keys built from them carry the ranges."""
    from streamgen.runtime.ort_backend import export_image_components

    cache = EngineCache(engine_dir, batch_range=(1, 3), resolution_range=(256, 768))
    events = []
    with observe(events.append):
        exports = export_image_components(ort_model, cache)
    assert {e.stage for e in events if e.stage != "start"} == {"reused"}
    assert exports.names() == ["unet", "vae_encoder", "vae_decoder", "text_encoder"]
    assert exports.input_names("unet") == ("latents", "timesteps", "hidden")
    latents = exports.shape_ranges("unet")["latents"]
    assert (latents.minimum, latents.optimum, latents.maximum) == ((1, 4, 32, 32), (4, 4, 32, 32), (4, 4, 96, 96))
    assert exports.shape_ranges("vae_encoder")["images"].maximum == (4, 3, 768, 768)
    trt = exports.key("unet", backend="tensorrt", library_version="10.3")
    assert (trt.batch_range, trt.resolution_range, trt.backend) == ((1, 3), (256, 768), "tensorrt")
    assert trt.weights == exports.keys["unet"].weights and trt.digest() != exports.keys["unet"].digest()


def test_a_failed_export_names_the_component(tmp_path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(EngineError, match=r"ONNX export of the unet failed.*aten::frobnicate"):
        accelerate(build_tiny_image_model(seed=0), "onnxruntime", cache_dir=tmp_path)


# ------------------------------------------------------------- availability
def test_video_models_are_refused_with_the_reason():
    from streamgen.runtime.ort_backend import OnnxRuntimeBackend

    with pytest.raises(EngineError, match="KV cache"):
        OnnxRuntimeBackend().accelerate_video(object(), None)


def test_cuda_needs_the_cuda_execution_provider(monkeypatch):
    import onnxruntime

    from streamgen.runtime.ort_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend()
    assert backend.unavailable_reason(torch.device("cpu")) is None
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert "onnxruntime-gpu" in backend.unavailable_reason(torch.device("cuda"))
