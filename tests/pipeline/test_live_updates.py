"""Live parameter updates keep the stream going: no flush, no warm-up frames."""

from __future__ import annotations

import pytest
import torch

from streamgen.config import StreamConfig
from streamgen.errors import ConfigError
from streamgen.pipeline.blend import lerp, slerp
from streamgen.pipeline.seeds import seeded_noise
from tests.pipeline.helpers import random_frames, record_decoded_latents, record_unet_calls

SIZE = 64


def _state(pipeline, **params):
    return pipeline.create_state(StreamConfig(width=SIZE, height=SIZE), {"prompt": "a cat", "t_index_list": [10, 25, 40], **params})


def test_prompt_update_keeps_the_buffer_and_needs_no_warmup(tiny_pipeline, tiny_model):
    state = _state(tiny_pipeline, cfg_type="self")
    frames = random_frames(6, SIZE)
    for frame in frames[:3]:
        before = tiny_pipeline.step([state], [frame])[0]
    tiny_pipeline.update(state, prompt="a dog")
    with record_unet_calls(tiny_model) as calls:
        after = tiny_pipeline.step([state], [frames[3]])[0]
    assert calls.rows == [3]  # one stream-batch call, no prefill
    assert state.buffer.shape[0] == 2
    assert not torch.equal(after.frames, before.frames)
    assert state.params.prompt[0].text == "a dog"


def test_changing_step_values_rebases_the_buffer_exactly(tiny_pipeline):
    state = _state(tiny_pipeline, cfg_type="self", guidance_scale=1.5)
    for frame in random_frames(3, SIZE):
        tiny_pipeline.step([state], [frame])
    old = state.schedule
    x0_before = (state.buffer - old.beta[1:] * state.init_noise[1:]) / old.alpha[1:]
    tiny_pipeline.update(state, t_index_list=[15, 30, 45], seed=[[7, 1.0], [8, 0.5]])
    tiny_pipeline.apply_pending(state)
    new = state.schedule
    assert new.t_indices == (15, 30, 45)
    x0_after = (state.buffer - new.beta[1:] * state.init_noise[1:]) / new.alpha[1:]
    torch.testing.assert_close(x0_after, x0_before, atol=1e-4, rtol=1e-4)


def test_strength_update_maps_to_the_first_timestep(tiny_pipeline):
    state = tiny_pipeline.create_state(StreamConfig(width=SIZE, height=SIZE), {"num_inference_steps": 2, "strength": 0.35})
    assert state.schedule.t_indices == (32, 45)
    tiny_pipeline.update(state, strength=1.0)
    tiny_pipeline.apply_pending(state)
    assert state.schedule.t_indices[0] == 0
    assert int(state.schedule.timesteps[0]) == 999


def test_changing_the_number_of_steps_refills_without_garbage(tiny_pipeline, tiny_model):
    state = _state(tiny_pipeline)
    frames = random_frames(3, SIZE)
    tiny_pipeline.step([state], [frames[0]])
    tiny_pipeline.update(state, t_index_list=[20, 40])
    with record_unet_calls(tiny_model) as calls:
        out = tiny_pipeline.step([state], [frames[1]], [("x",)])[0]
    assert calls.rows == [1, 2]  # prefill of the new 2-slot buffer, then the batch call
    assert out.tags == ("x",)
    assert state.buffer.shape[0] == 1


def test_prompt_transition_moves_over_k_frames(tiny_pipeline, tiny_model):
    state = _state(tiny_pipeline, cfg_type="none")
    frames = random_frames(6, SIZE)
    tiny_pipeline.step([state], [frames[0]])
    start = state.prompt.current.hidden
    target = tiny_model.encode_prompt("a dog").hidden
    tiny_pipeline.update(state, prompt="a dog", transition_frames=4)
    seen = []
    for frame in frames[1:6]:
        tiny_pipeline.step([state], [frame])
        seen.append(state.prompt.current.hidden)
    for k in range(3):
        torch.testing.assert_close(seen[k], lerp(start, target, (k + 1) / 4))
    torch.testing.assert_close(seen[3], target)
    torch.testing.assert_close(seen[4], target)


def test_weighted_prompt_blends(tiny_pipeline, tiny_model):
    cat, dog = tiny_model.encode_prompt("a cat").hidden, tiny_model.encode_prompt("a dog").hidden
    linear = tiny_pipeline.create_state(StreamConfig(width=SIZE, height=SIZE), {"prompt": [["a cat", 3], ["a dog", 1]]})
    torch.testing.assert_close(linear.prompt.current.hidden, 0.75 * cat + 0.25 * dog)
    spherical = tiny_pipeline.create_state(
        StreamConfig(width=SIZE, height=SIZE), {"prompt": [["a cat", 1], ["a dog", 1]], "prompt_interpolation": "slerp"}
    )
    torch.testing.assert_close(spherical.prompt.current.hidden, slerp(cat, dog, 0.5, dim=-1))


def test_weighted_seed_blend_is_unit_variance_mix(tiny_pipeline):
    state = tiny_pipeline.create_state(StreamConfig(width=SIZE, height=SIZE), {"seed": [[1, 1.0], [2, 1.0]], "t_index_list": [30]})
    shape = tuple(state.init_noise.shape)
    expected = (seeded_noise(1, shape) + seeded_noise(2, shape)) / 2**0.5
    torch.testing.assert_close(state.init_noise, expected)


def test_seed_update_changes_output_deterministically(tiny_pipeline):
    frames = random_frames(2, SIZE)
    outs = []
    for seed in (3, 4, 3):
        state = _state(tiny_pipeline, seed=seed)
        outs.append(tiny_pipeline.step([state], [frames[0]])[0].frames)
    assert torch.equal(outs[0], outs[2])
    assert not torch.equal(outs[0], outs[1])


def test_updates_merge_in_order_before_a_step(tiny_pipeline):
    state = _state(tiny_pipeline)
    tiny_pipeline.update(state, guidance_scale=2.0)
    tiny_pipeline.update(state, delta=0.5)
    tiny_pipeline.apply_pending(state)
    assert (state.params.guidance_scale, state.params.delta) == (2.0, 0.5)


def test_fixed_settings_cannot_change_live(tiny_pipeline):
    state = _state(tiny_pipeline)
    with pytest.raises(ConfigError, match="cannot be changed on a running stream"):
        tiny_pipeline.update(state, width=128)


def test_reset_refills_from_the_next_frame(tiny_pipeline, tiny_model):
    state = _state(tiny_pipeline)
    frames = random_frames(3, SIZE)
    tiny_pipeline.step([state], [frames[0]])
    tiny_pipeline.reset(state)
    with record_decoded_latents(tiny_model) as decoded, record_unet_calls(tiny_model) as calls:
        tiny_pipeline.step([state], [frames[1]])
    assert calls.rows == [1, 1, 3]
    assert len(decoded) == 1


def test_txt2img_streams_without_input(tiny_pipeline):
    config = StreamConfig(width=SIZE, height=SIZE, mode="txt2img")
    state = tiny_pipeline.create_state(config, {"prompt": "a cat", "t_index_list": [0, 30]})
    first = tiny_pipeline.step([state], [None])[0].frames
    second = tiny_pipeline.step([state], [None])[0].frames
    assert first.shape == (1, SIZE, SIZE, 3)
    again = tiny_pipeline.create_state(config, {"prompt": "a cat", "t_index_list": [0, 30]})
    assert torch.equal(tiny_pipeline.step([again], [None])[0].frames, first)
    assert second.shape == first.shape
