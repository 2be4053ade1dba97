"""VideoPipeline: chunking, stream batch = sequential, live prompt changes, sessions, bad inputs."""

from __future__ import annotations

import pytest
import torch

from streamgen.errors import ConfigError, InputError
from streamgen.models.loading.video_presets import build_tiny_video_model
from streamgen.pipeline.video import VideoPipeline
from streamgen.pipeline.video_params import VideoParams, parse_video_params

SIZE = 64


@pytest.fixture(scope="module")
def pipeline():
    return VideoPipeline(build_tiny_video_model(seed=0))


def _frames(count: int, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    """A moving synthetic clip (k, H, W, 3) uint8."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
    return torch.stack([base.roll(shifts=i, dims=1) for i in range(count)])


def _state(pipeline, batch: bool = True, **params):
    settings = {"width": SIZE, "height": SIZE, "use_denoising_batch": batch, "prompt": "a red fox", **params}
    return pipeline.create_state(None, settings)


def _run(pipeline, state, frames, per_call: int = 1, flush: bool = True):
    """Feed ``frames`` per_call at a time, tagging each with its index; returns (frames, tags) of all outputs."""
    outs, tags = [], []
    for start in range(0, frames.shape[0], per_call):
        chunk = frames[start : start + per_call]
        out = pipeline.step([state], [chunk], [tuple(range(start, start + chunk.shape[0]))])[0]
        outs.append(out.frames)
        tags += list(out.tags)
    if flush:
        out = pipeline.flush(state)
        outs.append(out.frames)
        tags += list(out.tags)
    return torch.cat(outs), tags


@pytest.mark.parametrize("steps", [2, 4])
def test_stream_batch_equals_sequential(pipeline, steps):
    clip = _frames(9)
    batch_frames, batch_tags = _run(pipeline, _state(pipeline, True, num_inference_steps=steps), clip)
    seq_frames, seq_tags = _run(pipeline, _state(pipeline, False, num_inference_steps=steps), clip)
    assert batch_tags == seq_tags == list(range(9))  # every input frame comes out once, in order
    assert (batch_frames.int() - seq_frames.int()).abs().max() <= 1  # float reduction order only


def test_chunking_and_lag(pipeline):
    clip = _frames(9)
    state = _state(pipeline, True, num_inference_steps=2)
    counts = [pipeline.step([state], [clip[i : i + 1]], [(i,)])[0].frames.shape[0] for i in range(9)]
    # first chunk = frame 0 alone; then chunks of 4; stream batch with 2 steps lags one chunk
    assert counts == [0, 0, 0, 0, 1, 0, 0, 0, 4]
    state = _state(pipeline, False, num_inference_steps=2)
    counts = [pipeline.step([state], [clip[i : i + 1]], [(i,)])[0].frames.shape[0] for i in range(9)]
    assert counts == [1, 0, 0, 0, 4, 0, 0, 0, 4]
    assert state.cache.frames_written.tolist() == [3, 3]


def test_no_frames_from_empty_rows_during_warm_up(pipeline):
    state = _state(pipeline, True, num_inference_steps=4)
    out = pipeline.step([state], [_frames(9)], [tuple(range(9))])[0]
    assert out.frames.shape[0] == 0 and out.tags == ()
    # rows that never held a chunk were not written
    assert state.cache.frames_written.tolist() == [3, 2, 1, 0]


def test_prompt_update_keeps_the_cache_and_changes_the_output(pipeline):
    clip = _frames(13)
    plain = _state(pipeline, False)
    changed = _state(pipeline, False)
    _run(pipeline, plain, clip[:9], flush=False)
    _run(pipeline, changed, clip[:9], flush=False)
    written = changed.cache.frames_written.clone()
    keys = changed.cache.k.clone()
    pipeline.update(changed, prompt="a blue whale")
    a = pipeline.step([plain], [clip[9:13]])[0].frames
    b = pipeline.step([changed], [clip[9:13]])[0].frames
    assert changed.params.prompt[0].text == "a blue whale"
    assert torch.equal(changed.cache.frames_written, written + 1)  # history kept and extended, never reset
    ring_before = keys[:, :, : 3 * changed.cache.tokens_per_frame]
    assert torch.equal(changed.cache.k[:, :, : 3 * changed.cache.tokens_per_frame], ring_before)
    assert not torch.equal(a, b)


def test_prompt_transition_lerps_over_chunks(pipeline):
    state = _state(pipeline, False)
    _run(pipeline, state, _frames(1), flush=False)
    start = state.context.current
    pipeline.update(state, prompt="a blue whale", transition_chunks=2)
    pipeline.step([state], [_frames(4)])
    halfway = state.context.current
    target = pipeline._prompt_context(state.params)
    torch.testing.assert_close(halfway.keys, start.lerp(target, 0.5).keys)
    pipeline.step([state], [_frames(4)])
    torch.testing.assert_close(state.context.current.keys, target.keys)
    assert not state.context.in_progress


def test_two_sessions_in_one_step_equal_solo_runs(pipeline):
    a_clip, b_clip = _frames(9, seed=1), _frames(9, seed=2)
    solo_a, _ = _run(pipeline, _state(pipeline, True, seed=5), a_clip, per_call=3)
    solo_b, _ = _run(pipeline, _state(pipeline, True, prompt="ink", seed=6, num_inference_steps=3), b_clip, per_call=3)
    sa, sb = _state(pipeline, True, seed=5), _state(pipeline, True, prompt="ink", seed=6, num_inference_steps=3)
    outs_a, outs_b = [], []
    for start in range(0, 9, 3):
        oa, ob = pipeline.step([sa, sb], [a_clip[start : start + 3], b_clip[start : start + 3]])
        outs_a.append(oa.frames)
        outs_b.append(ob.frames)
    outs_a.append(pipeline.flush(sa).frames)
    outs_b.append(pipeline.flush(sb).frames)
    # the two streams share DiT forwards and VAE calls: larger matmuls may round differently in the last bit
    assert (torch.cat(outs_a).int() - solo_a.int()).abs().max() <= 1
    assert (torch.cat(outs_b).int() - solo_b.int()).abs().max() <= 1


def test_same_seed_is_deterministic_and_reset_replays(pipeline):
    clip = _frames(5)
    state = _state(pipeline, False)
    first, _ = _run(pipeline, state, clip, flush=False)
    pipeline.reset(state)
    assert state.cache.frames_written.tolist() == [0, 0]
    again, _ = _run(pipeline, state, clip, flush=False)
    assert torch.equal(first, again)


def test_changing_steps_resizes_the_cache_and_resets(pipeline):
    state = _state(pipeline, True, num_inference_steps=2)
    pipeline.step([state], [_frames(5)])
    pipeline.update(state, num_inference_steps=4)
    pipeline.step([state], [_frames(1)])
    assert state.cache.rows == 4 and state.chunks_in == 1
    assert state.cache.frames_written.tolist() == [1, 0, 0, 0]


def test_frames_of_another_size_are_cover_resized(pipeline):
    state = _state(pipeline, False, num_inference_steps=1)
    out = pipeline.step([state], [_frames(1, size=96)[:, :80]])[0]
    assert out.frames.shape == (1, SIZE, SIZE, 3) and out.frames.dtype == torch.uint8


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (torch.zeros(1, SIZE, SIZE, 3), "uint8"),
        (torch.zeros(SIZE, SIZE, 3, dtype=torch.uint8), r"\(k, H, W, 3\)"),
        (torch.zeros(1, SIZE, SIZE, 4, dtype=torch.uint8), r"\(k, H, W, 3\)"),
        (torch.zeros(0, SIZE, SIZE, 3, dtype=torch.uint8), "at least one frame"),
        (None, "uint8 tensor"),
    ],
)
def test_bad_frames_raise_input_error(pipeline, frames, match):
    with pytest.raises(InputError, match=match):
        pipeline.step([_state(pipeline)], [frames])


def test_bad_tags_and_batches(pipeline):
    state = _state(pipeline)
    with pytest.raises(InputError, match="tags"):
        pipeline.step([state], [_frames(2)], [(1,)])
    with pytest.raises(InputError, match="frame batches"):
        pipeline.step([state], [])
    with pytest.raises(InputError, match="only once"):
        pipeline.step([state, state], [_frames(1), _frames(1)])


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"num_inference_steps": 5}, "num_inference_steps must be between 1 and 4"),
        ({"num_inference_steps": 0}, "between 1 and 4"),
        ({"strength": 0.5}, "unknown video parameter 'strength'"),
        ({"width": 64}, "cannot be changed on a running stream"),
        ({"noise_scale": "high"}, "noise_scale must be a finite number"),
        ({"motion_aware": 1}, "motion_aware must be true or false"),
        ({"noise_scale": 0.2, "motion_weight": 0.2}, "must be at least"),
    ],
)
def test_bad_updates_raise_config_error(pipeline, changes, match):
    state = _state(pipeline)
    with pytest.raises(ConfigError, match=match):
        pipeline.update(state, changes)
    assert state.latest_params == state.params  # nothing queued


def test_bad_settings_at_creation(pipeline):
    with pytest.raises(ConfigError, match="multiple of 16"):
        pipeline.create_state(None, {"width": 72, "height": 64})
    with pytest.raises(ConfigError, match="unknown video parameter 'cfg_type'"):
        pipeline.create_state(None, {"cfg_type": "full"})
    with pytest.raises(ConfigError, match="chunk_frames"):
        pipeline.validate_settings({"chunk_frames": 9})


def test_params_round_trip_through_json():
    params = parse_video_params({"prompt": [["a", 0.5], ["b", 1.0]], "seed": 3, "motion_aware": False})
    assert parse_video_params(params.to_dict()) == params
    assert isinstance(params, VideoParams)
