"""ONNX Runtime steering: each ControlNet, the UNet with residual inputs and the UNet with IP-Adapter inputs run as ORT sessions, equal to torch.

Tolerances as in test_onnxruntime: components within 1e-4 (measured ~1e-6),
frames within 1 step of 255.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import streamgen
from streamgen.config import StreamConfig
from streamgen.control_params import ReferenceImage
from streamgen.errors import EngineError
from streamgen.models.image.controlnet import tiny_controlnet
from streamgen.runtime import accelerate
from streamgen.runtime.control_export import residual_layout
from streamgen.runtime.engine_cache import observe
from tests.pipeline.helpers import random_frames

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime (pip install 'streamgen[onnx]')")

ATOL = 1e-4
SIZE = 64
FRAMES = 8
CONTROL = {"model": "tiny", "preprocessor": "passthrough", "conditioning_scale": 0.8}


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("steering-engines")


@pytest.fixture(scope="module")
def pipelines(engine_dir):
    """(eager, onnxruntime) tiny pipelines; the ORT one gets its ControlNet and IP-Adapter AFTER accelerating, as a server does."""
    eager = streamgen.load_pipeline("tiny")
    eager.attach_controlnet("tiny")
    eager.attach_ip_adapter("tiny")
    fast = streamgen.load_pipeline("tiny")
    assert accelerate(fast.model, "onnxruntime", cache_dir=engine_dir) == "onnxruntime"
    fast.attach_controlnet("tiny")
    fast.attach_ip_adapter("tiny")
    return eager, fast


def _picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def _close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def _inputs(rows, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(rows, 4, height, width, generator=generator)
    timesteps = torch.randint(0, 1000, (rows,), generator=generator)
    hidden = torch.randn(rows, 77, 32, generator=generator)
    images = torch.rand(rows, 3, height * 8, width * 8, generator=generator)
    return latents, timesteps, hidden, images


# ---------------------------------------------------------------- components
@pytest.mark.parametrize(("rows", "height", "width"), [(1, 8, 8), (3, 9, 7), (2, 16, 12)])
@torch.inference_mode()
def test_controlnet_and_steered_unet_match_torch(pipelines, rows, height, width):
    """Rows (3: a padded bucket), height and width are dynamic in both graphs; odd sides round up at every level."""
    eager, fast = pipelines
    latents, timesteps, hidden, images = _inputs(rows, height, width, seed=rows)
    down, mid = eager.model.run_controlnet("tiny", latents, timesteps, hidden, None, images)
    got_down, got_mid = fast.model.run_controlnet("tiny", latents, timesteps, hidden, None, images)
    assert len(got_down) == len(down) == len(residual_layout(eager.model.unet).down)
    for a, b in zip([*got_down, got_mid], [*down, mid]):
        assert a.shape == b.shape
        _close(a, b)
    expected = eager.model.predict_noise(latents, timesteps, hidden, None, (down, mid))
    _close(fast.model.predict_noise(latents, timesteps, hidden, None, (down, mid)), expected)
    assert not torch.allclose(expected, eager.model.predict_noise(latents, timesteps, hidden, None), atol=1e-3), "the residuals steer"


@pytest.mark.parametrize("with_control", [False, True], ids=["reference", "reference+control"])
@torch.inference_mode()
def test_reference_unet_matches_torch(pipelines, with_control):
    """Per-row IP scales are a graph input: a row at scale 0 gets exactly the plain UNet, the others their own strength."""
    eager, fast = pipelines
    latents, timesteps, hidden, images = _inputs(3, 9, 7, seed=11)
    adapter = eager.model.ip_adapter
    embeds = torch.stack([adapter.embed(_picture(seed)) for seed in range(3)])
    scales = torch.tensor([0.7, 0.0, 1.2])
    residuals = eager.model.run_controlnet("tiny", latents, timesteps, hidden, None, images) if with_control else None
    expected = eager.model.predict_noise(latents, timesteps, hidden, None, residuals, (embeds, scales))
    _close(fast.model.predict_noise(latents, timesteps, hidden, None, residuals, (embeds, scales)), expected)
    plain = eager.model.predict_noise(latents, timesteps, hidden, None, residuals)
    _close(expected[1], plain[1])
    assert not torch.allclose(expected[0], plain[0], atol=1e-3), "the reference steers"


@torch.inference_mode()
def test_a_plus_adapter_exports_its_token_embeddings(tmp_path):
    """Plus adapters take (tokens, width) per row: the export's input takes that shape."""
    eager, fast = streamgen.load_pipeline("tiny"), streamgen.load_pipeline("tiny")
    accelerate(fast.model, "onnxruntime", cache_dir=tmp_path)
    for pipeline in (eager, fast):
        pipeline.attach_ip_adapter("tiny", variant="plus")
    adapter = eager.model.ip_adapter
    assert len(adapter.embedding_shape) == 2
    latents, timesteps, hidden, _ = _inputs(2, 8, 8, seed=12)
    embeds = torch.stack([adapter.embed(_picture(1)), adapter.negative_embedding()])
    reference = (embeds, torch.tensor([0.9, 0.9]))
    _close(fast.model.predict_noise(latents, timesteps, hidden, None, None, reference), eager.model.predict_noise(latents, timesteps, hidden, None, None, reference))


def test_the_slots_hold_ort_sessions_not_the_torch_modules(pipelines):
    _, fast = pipelines
    engines = fast.model.steering_engines
    assert fast.model.controlnet_forward == engines.run_controlnet and list(engines.controlnets) == ["tiny"]
    assert fast.model.unet_steered_forward.__wrapped__.__qualname__.startswith("steered_unet_slot")
    assert fast.model.unet_reference_forward.__wrapped__.__qualname__.startswith("reference_unet_slot")


@torch.inference_mode()
def test_sdxl_controlnet_and_steered_unet_match_torch(tmp_path):
    """SDXL's added conditioning (pooled text, time ids) reaches both graphs."""
    from tests.models.builders import tiny_sdxl_model

    eager, fast = tiny_sdxl_model(seed=0), tiny_sdxl_model(seed=0)
    accelerate(fast, "onnxruntime", cache_dir=tmp_path)
    for model in (eager, fast):
        model.attach_controlnet("tiny", lambda _name, m: tiny_controlnet(m.unet, seed=0))
    rows = 3
    prompt = eager.encode_prompt("a cat")
    latents, timesteps, _, images = _inputs(rows, 8, 8, seed=4)
    hidden = prompt.hidden.expand(rows, -1, -1)
    added = {"text_embeds": prompt.pooled.expand(rows, -1), "time_ids": eager.sdxl_time_ids(64, 64).expand(rows, -1)}
    down, mid = eager.run_controlnet("tiny", latents, timesteps, hidden, added, images)
    got_down, got_mid = fast.run_controlnet("tiny", latents, timesteps, hidden, added, images)
    for a, b in zip([*got_down, got_mid], [*down, mid]):
        _close(a, b)
    _close(fast.predict_noise(latents, timesteps, hidden, added, (down, mid)), eager.predict_noise(latents, timesteps, hidden, added, (down, mid)))


# ------------------------------------------------------------------- streams
STYLE = ReferenceImage.from_pixels(_picture(5))
SESSIONS = [
    {"prompt": "a cat", "t_index_list": [20, 40], "cfg_type": "none", "seed": 1, "controlnets": [CONTROL],
     "ip_adapter_image": STYLE, "ip_adapter_scale": 0.7},
    {"prompt": "a dog", "t_index_list": [10, 35], "cfg_type": "self", "guidance_scale": 1.6, "seed": 2,
     "controlnets": [{**CONTROL, "preprocessor": "canny", "conditioning_scale": 0.5, "end": 0.5}]},
    {"prompt": "a fox", "t_index_list": [25, 45], "cfg_type": "full", "guidance_scale": 2.0, "seed": 3, "controlnets": [CONTROL],
     "ip_adapter_image": STYLE, "ip_adapter_scale": 1.0},
    {"prompt": "a bird", "t_index_list": [15, 30], "cfg_type": "none", "seed": 4},  # no steering: costs the others nothing
    {"prompt": "a boat", "t_index_list": [15, 30], "cfg_type": "none", "seed": 5, "ip_adapter_image": STYLE, "ip_adapter_scale": 0.5},
]


def _run(pipeline, sessions):
    config = StreamConfig(width=SIZE, height=SIZE, frame_buffer_size=2)
    states = [pipeline.create_state(config, SESSIONS[i]) for i in sessions]
    inputs = [random_frames(FRAMES, SIZE, seed=20 + i, batch=2) for i in sessions]
    outputs = [[] for _ in sessions]
    for k in range(FRAMES):
        for i, out in enumerate(pipeline.step(states, [frames[k] for frames in inputs])):
            outputs[i].append(out.frames)
    return [torch.cat(frames) for frames in outputs]


@pytest.mark.parametrize(
    ("sessions", "slots"),
    [((0, 1, 2, 3, 4), {"unet_reference_forward", "controlnet_forward"}), ((1, 3), {"unet_steered_forward", "controlnet_forward"})],
    ids=["with-references", "control-only"],
)
def test_steered_sessions_batched_in_one_step_give_the_eager_frames(pipelines, monkeypatch, sessions, slots):
    """Stream batch, three CFG modes, two preprocessors, a guidance window, references and a plain session, one step per frame.

    Every steered call reaches an ORT session: the slots are counted (a call
    with any reference row takes the reference graph, with its residuals).
    """
    eager, fast = pipelines
    calls = dict.fromkeys(("unet_forward", "unet_steered_forward", "unet_reference_forward", "controlnet_forward"), 0)
    for slot in calls:
        monkeypatch.setattr(fast.model, slot, _counted(getattr(fast.model, slot), slot, calls))
    got_frames = _run(fast, sessions)
    assert {slot for slot, count in calls.items() if count} == slots, calls
    for index, (got, expected) in enumerate(zip(got_frames, _run(eager, sessions))):
        diff = (got.int() - expected.int()).abs()
        assert diff.max() <= 1, f"session {index}: frames differ by up to {int(diff.max())}"
        assert diff.float().mean() < 0.01


def _counted(call, name, calls):
    def run(*args):
        calls[name] += 1
        return call(*args)

    return run


# -------------------------------------------------------------------- cache
def test_a_restart_reuses_the_exports_and_a_second_controlnet_adds_only_its_own(pipelines, engine_dir):
    _, fast = pipelines
    events = []
    with observe(events.append):
        again = streamgen.load_pipeline("tiny")
        accelerate(again.model, "onnxruntime", cache_dir=engine_dir)
        again.attach_controlnet("tiny")
    assert {e.stage for e in events if e.stage != "start"} == {"reused"}
    keys = {e.key.component: e.key for e in events if e.stage == "reused"}
    assert keys["unet_control"].inputs == residual_layout(fast.model.unet).signature()
    assert keys["unet"].inputs == "" and "inputs" not in keys["unet"].fields(), "plain components keep their keys"

    events.clear()
    with observe(events.append):
        again.model.attach_controlnet("other", lambda _name, m: tiny_controlnet(m.unet, seed=7))
    built = [e.key for e in events if e.stage == "built"]
    assert [k.component for k in built] == ["controlnet"], "the steered UNet is shared by every ControlNet"
    assert built[0].model_id == "tiny+other" and built[0].inputs.startswith("control-image->residuals:")


def test_a_controlnet_whose_export_fails_is_not_attached_and_streams_go_on(tmp_path, monkeypatch):
    pipeline = streamgen.load_pipeline("tiny")
    accelerate(pipeline.model, "onnxruntime", cache_dir=tmp_path)
    plain = pipeline.create_state(StreamConfig(width=SIZE, height=SIZE), {"prompt": "a cat"})

    def refuse(*_args, **_kwargs):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX opset version 17 is not supported")

    with monkeypatch.context() as patched:
        patched.setattr(torch.onnx, "export", refuse)
        with pytest.raises(EngineError, match=r"ONNX export of the controlnet failed.*aten::frobnicate"):
            pipeline.attach_controlnet("tiny")
    assert pipeline.model.controlnets == {}
    (out,) = pipeline.step([plain], [random_frames(1, SIZE)[0]])
    assert out.frames.shape == (1, SIZE, SIZE, 3)
    pipeline.attach_controlnet("tiny")  # the export works again: attached now
    assert list(pipeline.model.steering_engines.controlnets) == ["tiny"]
