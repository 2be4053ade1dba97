"""Every documented setting given to ImageStream / VideoStream is the one in force.

Each row sets one setting to a value other than its default (and other than
the model's own default) and reads it back from what the stream runs with:
``stream.config`` (the stream's shape), ``stream.params`` (live parameters),
``stream.state`` or the loaded model. A setting that is dropped, or routed to
the wrong place (``seed`` seeding the weights instead of the noise), fails here.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import streamgen
from streamgen.config import StreamConfig, StreamParams, WeightedPrompt, WeightedSeed
from streamgen.errors import ConfigError, ModelLoadError
from streamgen.pipeline.video_params import VideoConfig, VideoParams

SIZE = {"width": 64, "height": 64}

# (setting, value, read back from the stream, expected)
IMAGE_SETTINGS = [
    ("width", 96, lambda s: s.config.width, 96),
    ("height", 80, lambda s: s.config.height, 80),
    ("frame_buffer_size", 2, lambda s: s.config.frame_buffer_size, 2),
    ("mode", "txt2img", lambda s: s.config.mode, "txt2img"),
    ("use_denoising_batch", False, lambda s: s.config.use_denoising_batch, False),
    ("prompt", "a cat", lambda s: s.params.prompt, (WeightedPrompt("a cat"),)),
    ("prompt", [["a cat", 0.7], ["a dog", 0.3]], lambda s: s.params.prompt, (WeightedPrompt("a cat", 0.7), WeightedPrompt("a dog", 0.3))),
    ("negative_prompt", "blurry", lambda s: s.params.negative_prompt, "blurry"),
    ("prompt_interpolation", "slerp", lambda s: s.params.prompt_interpolation, "slerp"),
    ("transition_frames", 7, lambda s: s.params.transition_frames, 7),
    ("guidance_scale", 3.5, lambda s: s.params.guidance_scale, 3.5),
    ("delta", 0.5, lambda s: s.params.delta, 0.5),
    ("cfg_type", "full", lambda s: s.params.cfg_type, "full"),
    ("seed", 5, lambda s: s.params.seed, (WeightedSeed(5),)),
    ("seed", [[5, 0.5], [6, 0.5]], lambda s: s.params.seed, (WeightedSeed(5, 0.5), WeightedSeed(6, 0.5))),
    ("seed_interpolation", "slerp", lambda s: s.params.seed_interpolation, "slerp"),
    ("strength", 0.8, lambda s: s.params.strength, 0.8),
    ("num_inference_steps", 3, lambda s: s.params.num_inference_steps, 3),
    ("t_index_list", [10, 30], lambda s: s.params.t_index_list, (10, 30)),
    ("renoise", False, lambda s: s.params.renoise, False),
    ("similarity_filter", True, lambda s: s.params.similarity_filter, True),
    ("similarity_threshold", 0.9, lambda s: s.params.similarity_threshold, 0.9),
    ("max_skip_frames", 3, lambda s: s.params.max_skip_frames, 3),
    ("controlnets", [{"model": "tiny", "conditioning_scale": 0.5, "preprocessor": "canny"}], lambda s: [(c.model, c.conditioning_scale, c.preprocessor) for c in s.params.controlnets], [("tiny", 0.5, "canny")]),
    ("ip_adapter_scale", 0.4, lambda s: s.params.ip_adapter_scale, 0.4),
    ("ip_adapter", {"model": "tiny", "scale": 0.3}, lambda s: (s.params.ip_adapter_scale, getattr(s.pipeline.model.ip_adapter, "source", None)), (0.3, "tiny")),
    # model options
    ("dtype", "bfloat16", lambda s: s.pipeline.model.dtype, torch.bfloat16),
]


def test_the_image_table_covers_every_setting():
    covered = {row[0] for row in IMAGE_SETTINGS} | {"ip_adapter_image"}  # it needs an adapter too: its own test below
    assert {f.name for f in dataclasses.fields(StreamConfig)} <= covered
    assert {f.name for f in dataclasses.fields(StreamParams)} <= covered


@pytest.mark.parametrize(("name", "value", "read", "expected"), IMAGE_SETTINGS, ids=[f"{r[0]}={r[1]!r}" for r in IMAGE_SETTINGS])
def test_image_stream_setting_is_in_force(name, value, read, expected):
    settings = {**SIZE, name: value}
    stream = streamgen.ImageStream("tiny", **settings)
    assert read(stream) == expected
    default = streamgen.ImageStream("tiny", **SIZE)
    assert read(default) != expected, "pick a value that differs from the default, or the row proves nothing"


def test_image_stream_settings_hold_when_the_model_has_its_own_defaults():
    """A preset's default_params (e.g. sd-turbo's one step) never override what the caller asked for."""
    from streamgen.models.image.tiny import build_tiny_image_model

    model = build_tiny_image_model(seed=0)
    model.default_params = {"num_inference_steps": 1, "strength": 0.5, "cfg_type": "none"}
    pipeline = streamgen.ImagePipeline(model)
    stream = streamgen.ImageStream(pipeline, **SIZE, num_inference_steps=3, strength=0.2, cfg_type="self")
    assert (stream.params.num_inference_steps, stream.params.strength, stream.params.cfg_type) == (3, 0.2, "self")
    plain = streamgen.ImageStream(pipeline, **SIZE)
    assert (plain.params.num_inference_steps, plain.params.strength, plain.params.cfg_type) == (1, 0.5, "none")


def test_txt2img_keeps_an_explicit_cfg_type():
    stream = streamgen.ImageStream("tiny", **SIZE, mode="txt2img", cfg_type="full")
    assert stream.params.cfg_type == "full"
    assert streamgen.ImageStream("tiny", **SIZE, mode="txt2img").params.cfg_type == "none"


def test_image_model_seed_seeds_the_weights_not_the_noise():
    a = streamgen.ImageStream("tiny", **SIZE, model_seed=1)
    b = streamgen.ImageStream("tiny", **SIZE, model_seed=2)
    assert a.params.seed == b.params.seed == StreamParams().seed
    assert not torch.equal(next(a.pipeline.model.unet.parameters()), next(b.pipeline.model.unet.parameters()))


def test_model_options_apply_to_a_model_spec_too():
    stream = streamgen.ImageStream(streamgen.ModelSpec("tiny"), **SIZE, dtype="bfloat16")
    assert stream.pipeline.model.dtype == torch.bfloat16


def test_model_options_for_an_already_loaded_pipeline_are_refused(tiny_pipeline):
    with pytest.raises(ConfigError, match="dtype"):
        streamgen.ImageStream(tiny_pipeline, **SIZE, dtype="bfloat16")


# ---------------------------------------------------------------------- video

VIDEO_SIZE = {"width": 64, "height": 64}

VIDEO_SETTINGS = [
    ("width", 96, lambda s: s.config.width, 96),
    ("height", 80, lambda s: s.config.height, 80),
    ("use_denoising_batch", False, lambda s: s.config.use_denoising_batch, False),
    ("chunk_frames", 2, lambda s: s.config.chunk_frames, 2),
    ("sink_frames", 1, lambda s: s.config.sink_frames, 1),
    ("ring_frames", 5, lambda s: s.config.ring_frames, 5),
    ("mode", "txt2vid", lambda s: s.config.mode, "txt2vid"),
    ("prompt", "a fox", lambda s: s.params.prompt, (WeightedPrompt("a fox"),)),
    ("transition_chunks", 4, lambda s: s.params.transition_chunks, 4),
    ("seed", 9, lambda s: s.params.seed, 9),
    ("num_inference_steps", 3, lambda s: (s.params.num_inference_steps, len(s.state.base_timesteps)), (3, 3)),
    ("motion_aware", False, lambda s: (s.params.motion_aware, s.state.noise.settings.motion_aware), (False, False)),
    ("noise_scale", 0.6, lambda s: (s.params.noise_scale, s.state.noise.settings.noise_scale), (0.6, 0.6)),
    ("motion_scale", 0.5, lambda s: (s.params.motion_scale, s.state.noise.settings.motion_scale), (0.5, 0.5)),
    ("motion_weight", 0.2, lambda s: (s.params.motion_weight, s.state.noise.settings.motion_weight), (0.2, 0.2)),
    ("noise_smoothing", 0.5, lambda s: (s.params.noise_smoothing, s.state.noise.settings.smoothing), (0.5, 0.5)),
    ("prompt_switch", "recache", lambda s: s.params.prompt_switch, "recache"),
    ("dtype", "bfloat16", lambda s: s.pipeline.model.dtype, torch.bfloat16),
]


def test_the_video_table_covers_every_setting():
    covered = {row[0] for row in VIDEO_SETTINGS}
    assert {f.name for f in dataclasses.fields(VideoConfig)} <= covered
    assert {f.name for f in dataclasses.fields(VideoParams)} <= covered


@pytest.mark.parametrize(("name", "value", "read", "expected"), VIDEO_SETTINGS, ids=[f"{r[0]}={r[1]!r}" for r in VIDEO_SETTINGS])
def test_video_stream_setting_is_in_force(name, value, read, expected):
    stream = streamgen.VideoStream("tiny-video", **{**VIDEO_SIZE, name: value})
    assert read(stream) == expected
    default = streamgen.VideoStream("tiny-video", **VIDEO_SIZE)
    assert read(default) != expected, "pick a value that differs from the default, or the row proves nothing"


def test_video_seed_is_the_noise_seed_and_model_seed_the_weights():
    a = streamgen.VideoStream("tiny-video", **VIDEO_SIZE, seed=9, model_seed=1)
    b = streamgen.VideoStream("tiny-video", **VIDEO_SIZE, seed=9, model_seed=2)
    assert a.params.seed == b.params.seed == 9
    assert a.state.generator.initial_seed() == 9
    assert not torch.equal(next(a.pipeline.model.transformer.parameters()), next(b.pipeline.model.transformer.parameters()))


def test_video_model_options_are_model_options():
    """lora/vae/fuse_lora are model options for video too: loaded (here: a missing file, said so), never 'unknown parameter'."""
    with pytest.raises(ModelLoadError, match="no such file"):
        streamgen.VideoStream("tiny-video", **VIDEO_SIZE, lora={"x.safetensors": 1.0})


def test_ip_adapter_image_setting_is_in_force():
    image = torch.full((16, 16, 3), 90, dtype=torch.uint8)
    stream = streamgen.ImageStream("tiny", **SIZE, ip_adapter={"model": "tiny"}, ip_adapter_image=image)
    assert stream.params.ip_adapter_image is not None and torch.equal(stream.params.ip_adapter_image.pixels, image)
    with pytest.raises(ConfigError, match="needs an IP-Adapter"):
        streamgen.ImageStream("tiny", **SIZE, ip_adapter_image=image)
