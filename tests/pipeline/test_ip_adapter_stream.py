"""The IP-Adapter in the image pipeline: diffusers' img2img with image embeds as the reference, per-session images and scales, live changes."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from streamgen import ImageStream
from streamgen.config import StreamConfig
from streamgen.control_params import ReferenceImage
from streamgen.errors import ConfigError
from streamgen.pipeline import ImagePipeline
from tests.pipeline.control_reference import diffusers_noise, grid_indices, lcm_scheduler
from tests.pipeline.helpers import random_frames, record_decoded_latents

SIZE = 64
PROMPT = "a harbour in fog"


def _reference(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def _png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module", params=["plain", "plus"])
def pipeline(request):
    """A tiny model of its own (the adapter changes its UNet), with the tiny adapter of each variant."""
    from streamgen.models.image.tiny import build_tiny_image_model

    pipeline = ImagePipeline(build_tiny_image_model(seed=0))
    pipeline.attach_ip_adapter("tiny", variant=request.param)
    return pipeline


def _state(pipeline, indices=(10, 30), batch=True, **params):
    config = StreamConfig(width=SIZE, height=SIZE, use_denoising_batch=batch)
    return pipeline.create_state(config, {"t_index_list": list(indices), "prompt": PROMPT, "cfg_type": "none", **params})


def _latents(pipeline, state, frames):
    with record_decoded_latents(pipeline.model) as decoded:
        for frame in frames:
            pipeline.step([state], [frame])
    return decoded


@torch.inference_mode()
def _diffusers_latents(pipeline, frame, embeds, scale, *, steps, seed, guidance=1.0, negative=None):
    model = pipeline.model
    pipe = StableDiffusionImg2ImgPipeline(
        vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=model.unet,
        scheduler=lcm_scheduler(model), safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.set_ip_adapter_scale(scale)
    image_embeds = embeds[None, None] if negative is None else torch.stack([negative, embeds])[:, None]
    kwargs = {"negative_prompt_embeds": model.encode_prompt("").hidden} if guidance > 1 else {}
    try:
        out = pipe(
            prompt_embeds=model.encode_prompt(PROMPT).hidden, image=frame[0].permute(2, 0, 1)[None].float() / 255.0, strength=1.0,
            num_inference_steps=steps, guidance_scale=guidance, ip_adapter_image_embeds=[image_embeds],
            generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs,
        )
    finally:
        pipe.set_ip_adapter_scale(0.0)  # the adapter keeps its processors off outside its own calls
    return out.images


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_one_step_equals_diffusers_img2img_with_image_embeds(pipeline, guidance):
    indices = grid_indices(pipeline.model, 2)
    frame = random_frames(1, SIZE, seed=2)[0]
    cfg = {"cfg_type": "full", "guidance_scale": guidance} if guidance > 1 else {}
    state = _state(pipeline, indices, batch=False, ip_adapter_image=ReferenceImage.from_pixels(_reference(1)), ip_adapter_scale=0.7, **cfg)
    state.init_noise = diffusers_noise(5, 2, state.latent_shape)
    decoded = _latents(pipeline, state, [frame])
    adapter = pipeline.model.ip_adapter
    negative = adapter.negative_embedding() if guidance > 1 else None
    expected = _diffusers_latents(pipeline, frame, adapter.embed(_reference(1)), 0.7, steps=2, seed=5, guidance=guidance, negative=negative)
    assert torch.allclose(decoded[0], expected, atol=1e-4), float((decoded[0] - expected).abs().max())


def test_reference_image_steers_and_scale_zero_is_plain(pipeline):
    frames = random_frames(2, SIZE, seed=3)
    plain = _latents(pipeline, _state(pipeline), frames)
    steered = _latents(pipeline, _state(pipeline, ip_adapter_image=ReferenceImage.from_pixels(_reference(1)), ip_adapter_scale=1.0), frames)
    off = _latents(pipeline, _state(pipeline, ip_adapter_image=ReferenceImage.from_pixels(_reference(1)), ip_adapter_scale=0.0), frames)
    assert not torch.allclose(plain[-1], steered[-1], atol=1e-3)
    assert torch.equal(plain[-1], off[-1])


def test_batched_sessions_with_different_images_equal_each_alone(pipeline):
    frames = [random_frames(3, SIZE, seed=s) for s in (4, 5, 6)]
    settings = [
        {"ip_adapter_image": ReferenceImage.from_pixels(_reference(1)), "ip_adapter_scale": 0.9},
        {"ip_adapter_image": ReferenceImage.from_pixels(_reference(2)), "ip_adapter_scale": 0.3, "cfg_type": "full", "guidance_scale": 1.5},
        {},
    ]
    together = [_state(pipeline, seed=20 + i, **s) for i, s in enumerate(settings)]
    results = [[] for _ in together]
    for call in range(3):
        for i, out in enumerate(pipeline.step(together, [f[call] for f in frames])):
            results[i].append(out.frames)
    for i, s in enumerate(settings):
        alone = _state(pipeline, seed=20 + i, **s)
        for call in range(3):
            out = pipeline.step([alone], [frames[i][call]])[0]
            assert (out.frames.int() - results[i][call].int()).abs().max() <= 1, (i, call)


def test_the_embedding_is_computed_once_per_image(pipeline):
    adapter = pipeline.model.ip_adapter
    calls = []
    original = adapter.image_encoder.forward
    adapter.image_encoder.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        state = _state(pipeline, ip_adapter_image=_png(_reference(31)))
        frames = random_frames(4, SIZE, seed=7)
        for frame in frames[:2]:
            pipeline.step([state], [frame])
        assert len(calls) == 1
        pipeline.update(state, ip_adapter_scale=0.2)
        pipeline.step([state], [frames[2]])
        assert len(calls) == 1
        pipeline.update(state, ip_adapter_image=_png(_reference(32)))
        pipeline.step([state], [frames[3]])
        assert len(calls) == 2
    finally:
        adapter.image_encoder.forward = original


def test_live_image_digest_round_trips(pipeline):
    state = _state(pipeline, ip_adapter_image=_png(_reference(1)))
    json_form = pipeline.params_json(state)["ip_adapter_image"]
    assert set(json_form) == {"sha256", "bytes"}
    same = pipeline.parse_update(state, {"ip_adapter_image": json_form})
    assert same.ip_adapter_image is state.params.ip_adapter_image


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("not base64!!", "not valid base64"),
        (base64.b64encode(b"GIF89a........").decode(), "not a PNG, JPEG or WebP"),
        ("A" * (12 * 1024 * 1024), "larger than the limit"),
        (12, "must be an image as base64"),
        ({"sha256": "0" * 64}, "names the current image"),
    ],
)
def test_bad_reference_images_are_refused_and_the_stream_is_untouched(pipeline, value, words):
    state = _state(pipeline, ip_adapter_image=_png(_reference(1)))
    with pytest.raises(ConfigError, match=words):
        pipeline.update(state, ip_adapter_image=value)
    assert state.pending.peek() is None


def test_an_image_that_does_not_decode_is_a_config_error(pipeline):
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40).decode()
    with pytest.raises(ConfigError, match="could not be decoded"):
        pipeline.prepare_update(pipeline.parse_update(_state(pipeline), {"ip_adapter_image": broken}))


def test_image_stream_takes_an_ip_adapter_and_a_path(tmp_path):
    path = tmp_path / "style.png"
    Image.fromarray(_reference(9)).save(path)
    stream = ImageStream("tiny", width=SIZE, height=SIZE, ip_adapter={"model": "tiny", "image": _reference(8), "scale": 0.6})
    frame = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    first = stream(frame)
    assert stream.params.ip_adapter_scale == 0.6
    stream.update(ip_adapter_image=str(path))
    assert stream.params.ip_adapter_image.data == path.read_bytes()
    assert stream(frame).shape == first.shape
    with pytest.raises(ConfigError, match="no such file"):
        stream.update(ip_adapter_image=tmp_path / "missing.png")
