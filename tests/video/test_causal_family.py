"""The causal Wan family as presets: each runs its own recipe (chunk, window, schedule, shift) end to end on the
tiny DiT, and loads weights written the way its authors publish them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import streamgen
from streamgen.errors import ModelLoadError
from streamgen.models.loading.video_presets import VIDEO_PRESETS, load_video_model, preset_loras, _video_spec
from streamgen.models.video.causal_recipe import SELF_FORCING, STREAMDIFFUSION_V2, CausalRecipe, unshift
from streamgen.models.video.tiny_video_dit import tiny_causal_wan
from streamgen.models.video.wan_checkpoint import convert_diffusers_to_original, save_original_layout
from streamgen.pipeline.noise import shifted_sigma

FAMILY = ("self-forcing-1.3b", "causvid-1.3b", "longlive-1.3b", "krea-realtime-14b", "wan-causal-1.3b")


@pytest.mark.parametrize("name", FAMILY)
def test_each_student_generates_three_chunks_with_its_own_chunk_window_and_schedule(name):
    recipe = VIDEO_PRESETS[name].recipe
    stream = streamgen.VideoStream(name, weights="tiny", device="cpu", mode="txt2vid", use_denoising_batch=False, prompt="a kite", seed=3)
    frames = [frame for _ in range(3) for frame in stream()]
    state = stream.state
    t = recipe.chunk_frames
    assert len(frames) == (4 * (t - 1) + 1) + 2 * 4 * t, "three chunks of the recipe's size (the first one 1 + 4(t-1) frames)"
    assert (state.config.chunk_frames, state.config.sink_frames, state.config.ring_frames) == (t, recipe.sink_frames, recipe.ring_frames)
    assert stream.pipeline.model.flow_shift == recipe.flow_shift
    steps = recipe.default_steps or 2
    assert state.params.num_inference_steps == steps
    expected = recipe.txt2vid_timesteps(steps)
    if expected is not None:
        assert state.base_timesteps.tolist() == pytest.approx(list(expected))
    assert all(f.shape == (128, 128, 3) and f.dtype == np.uint8 for f in frames)


@pytest.mark.parametrize("name", ["self-forcing-1.3b", "krea-realtime-14b"])
def test_a_text_to_video_student_restyles_video_too(name):
    stream = streamgen.VideoStream(name, weights="tiny", device="cpu", use_denoising_batch=False, prompt="a kite")
    clip = np.random.default_rng(0).integers(0, 256, (9 + 12, 128, 128, 3), dtype=np.uint8)
    out = [frame for i in range(len(clip)) for frame in stream(clip[i])]
    assert len(out) == 9 + 12 and stream.state.config.chunk_frames == 3


def test_a_stream_may_name_its_own_window_over_the_recipe():
    stream = streamgen.VideoStream("longlive-1.3b", weights="tiny", device="cpu", mode="txt2vid", ring_frames=4, chunk_frames=2)
    assert (stream.state.config.chunk_frames, stream.state.config.sink_frames, stream.state.config.ring_frames) == (2, 3, 4)
    assert stream.state.params.prompt_switch == "recache", "LongLive switches prompts by re-caching, as its authors do"


def test_schedules_follow_the_authors_lists_through_the_shift():
    assert SELF_FORCING.txt2vid_timesteps(4) == (1000.0, 750.0, 500.0, 250.0)
    assert SELF_FORCING.txt2vid_timesteps(2) == (1000.0, 500.0) and SELF_FORCING.txt2vid_timesteps(1) == (1000.0,)
    assert STREAMDIFFUSION_V2.txt2vid_timesteps(2) is None, "no list: streamgen's equal strides"
    causvid = VIDEO_PRESETS["causvid-1.3b"].recipe
    for authors, ours in zip(causvid.denoising_steps, causvid.txt2vid_timesteps(3)):
        assert 1000 * shifted_sigma(ours, causvid.flow_shift) == pytest.approx(authors, abs=0.05), "model timesteps, unwarped"
    assert unshift(1000, 8.0) == 1000.0
    with pytest.raises(ValueError):
        CausalRecipe("bad", 5.0, 3, 3, 3, "txt2vid", (832, 480), 16.0, denoising_steps=(500, 750))


def _other_weights() -> dict[str, torch.Tensor]:
    return tiny_causal_wan(seed=11).transformer.state_dict()


def _assert_loaded(model, state):
    loaded = model.transformer.transformer.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key].float(), value.float()), key


@pytest.mark.parametrize(
    ("name", "container", "prefix"),
    [
        ("self-forcing-1.3b", "generator_ema", "model."),  # self_forcing_dmd.pt: generator + generator_ema
        ("causvid-1.3b", "generator", "model."),
        ("longlive-1.3b", "generator", "model."),  # longlive_base.pt
        ("wan-causal-1.3b", "generator_ema", "model."),  # StreamDiffusionV2's model.pt
    ],
)
def test_a_students_pickled_checkpoint_in_its_authors_layout_loads(tmp_path, name, container, prefix):
    state = _other_weights()
    path = tmp_path / "student.pt"
    save_original_layout(state, path, key=container, prefix=prefix)
    model = load_video_model(name, weights="tiny", device="cpu", checkpoint=str(path))
    _assert_loaded(model, state)


def test_krea_safetensors_in_original_wan_names_loads(tmp_path):
    state = _other_weights()
    path = tmp_path / "krea-realtime-video-14b.safetensors"
    save_file({k: v.contiguous() for k, v in convert_diffusers_to_original(state).items()}, str(path))
    model = load_video_model("krea-realtime-14b", weights="tiny", device="cpu", checkpoint=str(path))
    _assert_loaded(model, state)


def test_a_checkpoint_key_that_does_not_map_is_named(tmp_path):
    original = convert_diffusers_to_original(_other_weights())
    original["blocks.0.self_attn.k_img.weight"] = torch.zeros(4, 4)  # an image-to-video layer this DiT has not got
    path = tmp_path / "student.pt"
    torch.save({"generator": {"model." + k: v for k, v in original.items()}}, path)
    with pytest.raises(ModelLoadError, match="k_img"):
        load_video_model("self-forcing-1.3b", weights="tiny", device="cpu", checkpoint=str(path))


def test_longlive_is_its_base_plus_its_lora_and_a_users_lora_replaces_it():
    spec = _video_spec("longlive-1.3b", {"weights": "tiny"})
    assert preset_loras(spec) == {}, "random weights take no published LoRA"
    preset = VIDEO_PRESETS["longlive-1.3b"]
    assert preset.checkpoint.filename.endswith("longlive_base.pt") and preset.lora.filename.endswith("lora.pt")
    assert preset_loras(_video_spec("longlive-1.3b", {"weights": "pretrained", "lora": {"mine.safetensors": 0.5}})) == {"mine.safetensors": 0.5}
