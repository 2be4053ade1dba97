"""Stream batch and sequential denoising against an independent reference."""

from __future__ import annotations

import pytest
import torch

from streamgen.config import StreamConfig
from tests.pipeline.helpers import (
    measured_uncond,
    noised_input,
    random_frames,
    record_decoded_latents,
    record_unet_calls,
    reference_img2img,
)

SIZE = 64


def _state(pipeline, n_indices=(10, 25, 40), f=1, batch=True, **params):
    config = StreamConfig(width=SIZE, height=SIZE, frame_buffer_size=f, use_denoising_batch=batch)
    return pipeline.create_state(config, {"t_index_list": list(n_indices), "prompt": "a cat", **params})


def _run(pipeline, state, frames):
    with record_decoded_latents(pipeline.model) as decoded:
        for frame in frames:
            pipeline.step([state], [frame])
    return decoded


def test_stream_batch_equals_sequential_reference_after_warmup(tiny_pipeline, tiny_model):
    indices = (10, 25, 40)
    state = _state(tiny_pipeline, indices, cfg_type="none")
    frames = random_frames(8, SIZE)
    decoded = _run(tiny_pipeline, state, frames)
    cond = state.prompt.current.hidden
    for k, latent in enumerate(decoded):
        source = frames[max(0, k - (len(indices) - 1))]  # output lags the input by n - 1 calls
        expected = reference_img2img(tiny_model, source, SIZE, indices, state.init_noise, cond)
        torch.testing.assert_close(latent, expected, atol=1e-4, rtol=1e-4)


def test_sequential_mode_equals_reference_without_lag(tiny_pipeline, tiny_model):
    indices = (5, 30)
    state = _state(tiny_pipeline, indices, batch=False, cfg_type="none")
    frames = random_frames(3, SIZE, seed=1)
    decoded = _run(tiny_pipeline, state, frames)
    for frame, latent in zip(frames, decoded):
        expected = reference_img2img(tiny_model, frame, SIZE, indices, state.init_noise, state.prompt.current.hidden)
        torch.testing.assert_close(latent, expected, atol=1e-4, rtol=1e-4)


def test_full_cfg_equals_classic_cfg(tiny_pipeline, tiny_model):
    indices = (20, 40)
    state = _state(tiny_pipeline, indices, cfg_type="full", guidance_scale=3.0, negative_prompt="blurry")
    frames = random_frames(4, SIZE, seed=2)
    decoded = _run(tiny_pipeline, state, frames)
    cond, uncond = state.prompt.current.hidden, state.negative.hidden
    for k, latent in enumerate(decoded):
        source = frames[max(0, k - 1)]
        expected = reference_img2img(tiny_model, source, SIZE, indices, state.init_noise, cond, uncond, guidance=3.0)
        torch.testing.assert_close(latent, expected, atol=1e-4, rtol=1e-4)


def test_full_cfg_stays_correct_after_prompt_update(tiny_pipeline, tiny_model):
    """The reference dropped the uncond rows on prompt updates; here they stay."""
    indices = (30,)
    state = _state(tiny_pipeline, indices, cfg_type="full", guidance_scale=2.0, negative_prompt="ugly")
    frames = random_frames(3, SIZE, seed=3)
    tiny_pipeline.step([state], [frames[0]])
    tiny_pipeline.update(state, prompt="a dog")
    with record_unet_calls(tiny_model) as calls, record_decoded_latents(tiny_model) as decoded:
        tiny_pipeline.step([state], [frames[1]])
    assert calls.rows == [2]  # cond + uncond rows
    cond, uncond = tiny_model.encode_prompt("a dog").hidden, tiny_model.encode_prompt("ugly").hidden
    expected = reference_img2img(tiny_model, frames[1], SIZE, indices, state.init_noise, cond, uncond, guidance=2.0)
    torch.testing.assert_close(decoded[0], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cfg_type", ["none", "self", "initialize", "full"])
def test_stream_batch_equals_sequential_mode_for_every_cfg(tiny_pipeline, cfg_type):
    indices = (10, 25, 40)
    params = dict(cfg_type=cfg_type, guidance_scale=1.8, delta=0.7, negative_prompt="dark")
    batched = _state(tiny_pipeline, indices, **params)
    sequential = _state(tiny_pipeline, indices, batch=False, **params)
    frames = random_frames(7, SIZE, seed=4)
    out_batched = _run(tiny_pipeline, batched, frames)
    out_sequential = _run(tiny_pipeline, sequential, frames)
    for k, latent in enumerate(out_batched):
        torch.testing.assert_close(latent, out_sequential[max(0, k - 2)], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cfg_type", ["self", "initialize"])
def test_residual_cfg_equals_reference(tiny_pipeline, tiny_model, cfg_type):
    indices = (10, 25, 40)
    state = _state(tiny_pipeline, indices, cfg_type=cfg_type, guidance_scale=2.0, delta=0.8, negative_prompt="dark")
    frames = random_frames(5, SIZE, seed=10)
    decoded = _run(tiny_pipeline, state, frames)
    cond, uncond = state.prompt.current.hidden, state.negative.hidden
    # initialize measures slot 0's uncond estimate once, on the first frame, and holds it
    first_x = noised_input(tiny_model, frames[0], SIZE, indices[0], state.init_noise[0:1])
    measured = measured_uncond(tiny_model, first_x, indices[0], uncond)
    for k in (0, 2, 4):
        source = frames[max(0, k - 2)]
        expected = reference_img2img(
            tiny_model, source, SIZE, indices, state.init_noise, cond, uncond, 2.0, residual_cfg=cfg_type, delta=0.8, measured_stock=measured
        )
        torch.testing.assert_close(decoded[k], expected, atol=1e-4, rtol=1e-4)


def test_self_and_initialize_cfg_change_the_output(tiny_pipeline):
    frames = random_frames(2, SIZE, seed=5)
    results = {}
    for cfg_type in ("none", "self", "initialize"):
        state = _state(tiny_pipeline, (20, 40), cfg_type=cfg_type, guidance_scale=2.5, negative_prompt="dark")
        results[cfg_type] = _run(tiny_pipeline, state, frames)[-1]
    assert not torch.allclose(results["none"], results["self"])
    assert not torch.allclose(results["self"], results["initialize"])


@pytest.mark.parametrize(
    ("cfg_type", "indices", "f", "first_step", "later_step"),
    [
        ("none", (10, 25, 40), 2, [2, 2, 6], [6]),
        ("self", (10, 25, 40), 2, [2, 2, 6], [6]),  # n·f rows, no extra rows for the negative
        ("initialize", (30,), 2, [4], [2]),  # (n+1)·f on its first call, then n·f
        ("initialize", (10, 25, 40), 1, [2, 1, 3], [3]),  # the measuring row rides with slot 0's first round
        ("full", (20, 40), 1, [2, 4], [4]),  # 2·n·f
    ],
)
def test_unet_row_counts(tiny_pipeline, tiny_model, cfg_type, indices, f, first_step, later_step):
    state = _state(tiny_pipeline, indices, f=f, cfg_type=cfg_type, guidance_scale=1.5)
    frames = random_frames(3, SIZE, seed=6, batch=f)
    with record_unet_calls(tiny_model) as first:
        tiny_pipeline.step([state], [frames[0]])
    with record_unet_calls(tiny_model) as later:
        tiny_pipeline.step([state], [frames[1]])
        tiny_pipeline.step([state], [frames[2]])
    assert first.rows == first_step
    assert later.rows == later_step * 2


def test_guidance_one_runs_no_uncond_rows(tiny_pipeline, tiny_model):
    state = _state(tiny_pipeline, (20, 40), cfg_type="full", guidance_scale=1.0)
    frames = random_frames(2, SIZE)
    tiny_pipeline.step([state], [frames[0]])
    with record_unet_calls(tiny_model) as calls:
        tiny_pipeline.step([state], [frames[1]])
    assert calls.rows == [2]


def test_frame_buffer_above_one_with_several_steps_over_50_frames(tiny_pipeline, tiny_model):
    """f > 1 with n > 1: the reference grew its buffer by a row per call; ours stays (n-1)·f."""
    indices, f = (10, 25, 40), 2
    state = _state(tiny_pipeline, indices, f=f, cfg_type="none")
    frames = random_frames(50, SIZE, seed=7, batch=f)
    outputs = []
    with record_decoded_latents(tiny_model) as decoded:
        for batch in frames:
            out = tiny_pipeline.step([state], [batch])[0]
            outputs.append(out)
            assert state.buffer.shape == ((len(indices) - 1) * f, *state.latent_shape)
    assert all(o.frames.shape == (f, SIZE, SIZE, 3) for o in outputs)
    cond = state.prompt.current.hidden
    for k in (0, 1, 2, 25, 49):
        source = frames[max(0, k - 2)]
        for j in range(f):
            noise = state.init_noise[[j, f + j, 2 * f + j]]
            expected = reference_img2img(tiny_model, source[j : j + 1], SIZE, indices, noise, cond)
            torch.testing.assert_close(decoded[k][j : j + 1], expected, atol=1e-4, rtol=1e-4)


def test_outputs_carry_the_tags_of_the_frames_they_depict(tiny_pipeline):
    state = _state(tiny_pipeline, (10, 25, 40), cfg_type="none")
    frames = random_frames(6, SIZE)
    tags = [tiny_pipeline.step([state], [frame], [(k,)])[0].tags for k, frame in enumerate(frames)]
    assert tags == [(0,), (0,), (0,), (1,), (2,), (3,)]


def test_first_output_is_fully_denoised_not_an_empty_buffer(tiny_pipeline, tiny_model):
    """No garbage warm-up frame: the first call's output is the first frame's full result."""
    indices = (10, 25, 40)
    state = _state(tiny_pipeline, indices, cfg_type="none")
    frame = random_frames(1, SIZE, seed=8)[0]
    decoded = _run(tiny_pipeline, state, [frame])
    expected = reference_img2img(tiny_model, frame, SIZE, indices, state.init_noise, state.prompt.current.hidden)
    torch.testing.assert_close(decoded[0], expected, atol=1e-4, rtol=1e-4)


def test_no_renoise_mode_matches_reference(tiny_pipeline, tiny_model):
    indices = (20, 40)
    state = _state(tiny_pipeline, indices, cfg_type="none", renoise=False)
    frames = random_frames(3, SIZE, seed=9)
    decoded = _run(tiny_pipeline, state, frames)
    expected = reference_img2img(tiny_model, frames[1], SIZE, indices, state.init_noise, state.prompt.current.hidden, renoise=False)
    torch.testing.assert_close(decoded[2], expected, atol=1e-4, rtol=1e-4)
