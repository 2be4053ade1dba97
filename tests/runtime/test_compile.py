"""``acceleration="compile"``: torch.compile of the image UNet/VAE and of the causal video DiT gives eager's frames.

Compiling on 2 CPU cores is slow (tens of seconds per graph), so each model
is compiled once per module and every test here drives shapes that reuse its
graphs: image streams use ``frame_buffer_size=2``, so every UNet/VAE call has
at least 2 rows and all of them share the one dynamic-rows graph per
component (1 row would be a second, specialised graph, and so would more
than 15 rows: inductor's CPU convolution guards on it); the video stream
runs sequentially (1 row per forward): one graph while the window fills
(mask), one after (no mask).
"""

from __future__ import annotations

import pytest
import torch

import streamgen
from streamgen.config import StreamConfig
from streamgen.errors import EngineError
from streamgen.models.video.causal_wan import PlannedChunk, SegmentBuffers
from streamgen.pipeline.video_loading import load_video_pipeline
from streamgen.runtime import accelerate
from streamgen.runtime.compile_backend import CompileBackend
from tests.pipeline.helpers import random_frames

SIZE = 64
CALLS = 10  # of 2 frames each: 20 frames per stream
SESSIONS = {
    "none": {"prompt": "a cat", "t_index_list": [20, 40], "cfg_type": "none", "seed": 1},
    "self": {"prompt": "a dog", "t_index_list": [10, 30], "cfg_type": "self", "guidance_scale": 1.4, "seed": 2},
    "full": {"prompt": "a fox", "t_index_list": [15, 35], "cfg_type": "full", "guidance_scale": 2.0, "seed": 3},
}

needs_compile = pytest.mark.skipif(
    CompileBackend().unavailable_reason(torch.device("cpu")) is not None, reason="no C++ compiler for inductor here"
)
pytestmark = needs_compile



# ---------------------------------------------------------------------- image
@pytest.fixture(scope="module")
def image_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def image_pipelines(image_cache):
    """(eager, compiled): two copies of the tiny model (accelerate replaces call slots in place)."""
    eager = streamgen.load_pipeline("tiny")
    compiled = streamgen.load_pipeline("tiny")
    assert accelerate(compiled.model, "compile", cache_dir=image_cache) == "compile"
    return eager, compiled


def _image_run(pipeline, names, calls=CALLS, **changes):
    config = StreamConfig(width=SIZE, height=SIZE, frame_buffer_size=2)
    states = [pipeline.create_state(config, {**SESSIONS[name], **changes}) for name in names]
    inputs = [random_frames(calls, SIZE, seed=i, batch=2) for i in range(len(names))]
    outputs = [[] for _ in names]
    for k in range(calls):
        for i, out in enumerate(pipeline.step(states, [frames[k] for frames in inputs])):
            outputs[i].append(out.frames)
    return [torch.cat(frames) for frames in outputs]


def _assert_frames_close(compiled, eager):
    assert compiled.shape == eager.shape and compiled.dtype == torch.uint8
    diff = (compiled.int() - eager.int()).abs()
    assert diff.max() <= 2, f"compiled frames differ from eager by up to {int(diff.max())}"
    assert diff.float().mean() < 0.01


@pytest.mark.parametrize("cfg", ["none", "self", "full"])
def test_compiled_image_stream_equals_eager(image_pipelines, cfg):
    eager, compiled = image_pipelines
    (expected,) = _image_run(eager, [cfg])
    (got,) = _image_run(compiled, [cfg])
    assert got.shape[0] == 2 * CALLS
    _assert_frames_close(got, expected)


def test_compiled_three_sessions_in_one_step_equal_eager(image_pipelines):
    eager, compiled = image_pipelines
    names = ["none", "self", "full"]
    one_step = {"t_index_list": [30]}  # 2 + 2 + 4 rows (2 frames each, "full" doubles): the 8-row bucket
    for got, expected in zip(_image_run(compiled, names, **one_step), _image_run(eager, names, **one_step)):
        _assert_frames_close(got, expected)


def test_vae_layout_is_channels_last_in_and_out(image_pipelines):
    """Frames reach the encoder channels_last (eager and compiled alike); the compiled decoder answers channels_last."""
    eager, compiled = image_pipelines
    seen = []
    encode = compiled.model.vae_encode_forward

    def recording(images):
        seen.append(images.is_contiguous(memory_format=torch.channels_last))
        return encode(images)

    compiled.model.vae_encode_forward = recording
    try:
        _image_run(compiled, ["none"], calls=1)
    finally:
        compiled.model.vae_encode_forward = encode
    assert seen and all(seen)

    with torch.inference_mode():
        latents = torch.randn(2, compiled.model.latent_channels, SIZE // 8, SIZE // 8)
        decoded = compiled.model.vae_decode_forward(latents)
        assert decoded.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(decoded, eager.model.vae_decode_forward(latents), atol=1e-4, rtol=0)
        # a plain-layout image is put in the graph's layout first: same latents, no new graph
        images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        plain = compiled.model.vae_encode_forward(images.contiguous())
        last = compiled.model.vae_encode_forward(images.contiguous(memory_format=torch.channels_last))
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
        torch.testing.assert_close(plain, last, atol=0, rtol=0)


def test_inductor_caches_live_in_the_engine_cache(image_pipelines, image_cache):
    assert any((image_cache / "inductor").rglob("*")), "inductor wrote nothing under <engine cache>/inductor"


def test_accelerating_twice_compiles_the_eager_slots(image_cache):
    model = streamgen.load_pipeline("tiny").model
    eager_unet = model.unet_forward
    accelerate(model, "compile", cache_dir=image_cache)
    first = model.unet_forward
    accelerate(model, "compile", cache_dir=image_cache)
    assert model.unet_forward is not first and model.unet_forward.__streamgen_eager__ == eager_unet


def test_unavailable_without_a_compiler(monkeypatch, tmp_path):
    model = streamgen.load_pipeline("tiny").model
    monkeypatch.setattr("shutil.which", lambda _name: None)
    reason = CompileBackend().unavailable_reason(torch.device("cpu"))
    assert reason is not None and "compiler" in reason
    with pytest.raises(EngineError, match="compiler"):
        accelerate(model, "compile", cache_dir=tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: CUDA graphs of the compiled image model")
def test_cuda_graph_outputs_survive_the_next_call(tmp_path):
    eager = streamgen.load_pipeline("tiny", device="cuda")
    compiled = streamgen.load_pipeline("tiny", device="cuda")
    accelerate(compiled.model, "compile", cache_dir=tmp_path)
    model = compiled.model
    hidden = model.encode_prompt("a cat").hidden
    with torch.inference_mode():
        latents = [torch.randn(r, model.latent_channels, 8, 8, device="cuda") for r in (2, 3, 2)]
        outs = [model.predict_noise(x, torch.full((x.shape[0],), 500, device="cuda"), hidden.expand(x.shape[0], -1, -1)) for x in latents]
        for x, out in zip(latents, outs):  # the first output was not overwritten by the later replays
            expected = eager.model.predict_noise(x, torch.full((x.shape[0],), 500, device="cuda"), hidden.expand(x.shape[0], -1, -1))
            torch.testing.assert_close(out, expected, atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------------- video
VIDEO_SETTINGS = {
    "width": SIZE,
    "height": SIZE,
    "prompt": "a red fox",
    "use_denoising_batch": False,  # 1 row per forward: one graph per phase (window filling / full)
    "num_inference_steps": 2,
    "sink_frames": 1,
    "ring_frames": 2,
}
VIDEO_CHUNKS = 30  # the window holds 3 frames: 27 chunks past it


@pytest.fixture(scope="module")
def video_pipelines(tmp_path_factory):
    eager = load_video_pipeline("tiny-video", device="cpu")
    compiled = load_video_pipeline("tiny-video", device="cpu")
    assert accelerate(compiled.model, "compile", cache_dir=tmp_path_factory.mktemp("engines")) == "compile"
    return eager, compiled


def _video_frames(count: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(4)
    base = torch.randint(0, 256, (SIZE, SIZE, 3), generator=generator, dtype=torch.uint8)
    return torch.stack([base.roll(shifts=2 * i, dims=1) for i in range(count)])


def _video_run(pipeline, frames):
    state = pipeline.create_state(None, dict(VIDEO_SETTINGS))
    out = [pipeline.step([state], [frames[i : i + 1]])[0].frames for i in range(frames.shape[0])]
    return torch.cat(out), state


def test_compiled_video_stream_equals_eager_past_the_window(video_pipelines):
    eager, compiled = video_pipelines
    frames = _video_frames(1 + 4 * (VIDEO_CHUNKS - 1))
    expected, _ = _video_run(eager, frames)
    got, state = _video_run(compiled, frames)
    assert state.chunks_in == VIDEO_CHUNKS and min(state.cache.frames_at_least) == VIDEO_CHUNKS
    assert got.shape == expected.shape == frames.shape
    _assert_frames_close(got, expected)


@pytest.mark.parametrize("full", [False, True], ids=["window-filling", "window-full"])
def test_chunk_forward_compiles_without_graph_breaks(video_pipelines, full):
    model = video_pipelines[0].model.transformer
    cache = model.new_cache(2, 8, 8, sink_frames=1, ring_frames=2)
    if full:
        cache.restore_counters(torch.full((2,), 3), [3, 3])
    layout = cache.plan(1)
    assert layout.needs_mask is not full
    planned = PlannedChunk(layout.query_frames, (SegmentBuffers(cache.k, cache.v, cache.geometry.scratch_start, layout.mask),))
    context = model.encode_context(torch.zeros(1, 4, model.text_dim)).expand(2)
    latents, timesteps = torch.randn(2, 16, 1, 8, 8), torch.full((2, 1), 500.0)
    with torch.inference_mode():
        explanation = torch._dynamo.explain(model.chunk_core)(latents, timesteps, context, planned)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


# ------------------------------------------------------------------- steering
@pytest.fixture(scope="module")
def steered_pipelines(image_cache):
    """(eager, compiled) tiny models with the tiny ControlNet attached before compiling and the IP-Adapter after."""
    pipelines = []
    for compiled in (False, True):
        pipeline = streamgen.load_pipeline("tiny")
        pipeline.attach_controlnet("tiny")
        if compiled:
            assert accelerate(pipeline.model, "compile", cache_dir=image_cache) == "compile"
        pipeline.attach_ip_adapter("tiny")
        pipelines.append(pipeline)
    return pipelines


STYLE = {"ip_adapter_scale": 0.8}
CONTROL = {"controlnets": [{"model": "tiny", "preprocessor": "passthrough", "conditioning_scale": 0.8}]}


def _style_image():
    from streamgen.control_params import ReferenceImage

    return ReferenceImage.from_pixels(torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5)).numpy())


@pytest.mark.parametrize(("steering", "slot"), [(CONTROL, "unet_steered_forward"), ({**CONTROL, **STYLE}, "unet_reference_forward")], ids=["control", "control+reference"])
def test_a_steered_step_runs_compiled_graphs_and_equals_eager(steered_pipelines, monkeypatch, steering, slot):
    """The ControlNet, the UNet with residual inputs and (with a reference image) the UNet inside the adapter's per-row scales are compiled."""
    eager, compiled = steered_pipelines
    model = compiled.model
    assert getattr(model.controlnet_forward, "compiled", None) is not None, "the ControlNet slot holds a compiled graph"
    assert getattr(model.unet_steered_forward, "compiled", None) is not None
    assert getattr(model.unet_reference_forward.args[0], "compiled", None) is not None, "references run the compiled steered UNet"
    steering = {**steering, **({"ip_adapter_image": _style_image()} if "ip_adapter_scale" in steering else {})}
    used = []
    installed = getattr(model, slot)
    monkeypatch.setattr(model, slot, lambda *args: (used.append(slot), installed(*args))[1])
    (expected,) = _image_run(eager, ["none"], calls=4, **steering)
    (got,) = _image_run(compiled, ["none"], calls=4, **steering)
    assert used, f"the pipeline's steered calls go through {slot}"
    _assert_frames_close(got, expected)
    plain = _image_run(eager, ["none"], calls=4)[0]
    assert not torch.equal(plain, expected), "the steering changes the frames"
