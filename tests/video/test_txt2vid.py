"""Text to video (``mode="txt2vid"``): chunks generated from noise in the causal KV cache, no input frames.

The reference computations are those of the vid2vid tests: stream batch
equals sequential, a batched step equals each stream's solo run (uint8
frames at most 1 apart: larger matmuls may round differently in the last
bit), and a restored stream replays exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

import streamgen
from streamgen.errors import ConfigError, InputError
from streamgen.models.loading.video_presets import build_tiny_video_model
from streamgen.models.video.kv_cache import RollingKVCache
from streamgen.pipeline.contract import Capabilities
from streamgen.pipeline.noise import model_timesteps, shifted_sigma
from streamgen.pipeline.video import T2V_TIMESTEPS, VideoPipeline
from streamgen.pipeline.video_params import VideoConfig, parse_video_settings

SIZE = 64
SMALL_WINDOW = {"sink_frames": 1, "ring_frames": 2}  # 3 frames of history: the streams below run past it


@pytest.fixture(scope="module")
def pipeline():
    return VideoPipeline(build_tiny_video_model(seed=0))


def _settings(**settings: Any) -> dict[str, Any]:
    return {"width": SIZE, "height": SIZE, "mode": "txt2vid", "prompt": "a paper boat", "seed": 3, "num_inference_steps": 2, **settings}


def _state(pipeline, **settings: Any):
    return pipeline.create_state(None, _settings(**settings))


def _generate(pipeline, state, steps: int, flush: bool = True) -> tuple[torch.Tensor, list[Any]]:
    """``steps`` txt2vid steps (then the flush): all frames and tags that came out."""
    frames, tags = [], []
    for _ in range(steps):
        out = pipeline.step([state], [None])[0]
        frames.append(out.frames)
        tags += list(out.tags)
    if flush:
        out = pipeline.flush(state)
        frames.append(out.frames)
        tags += list(out.tags)
    return torch.cat(frames), tags


def _clip(count: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (SIZE, SIZE, 3), generator=g, dtype=torch.uint8)
    return torch.stack([base.roll(shifts=3 * i, dims=1) for i in range(count)])


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a.int() - b.int()).abs().max().item() <= 1


class CallLog:
    """Counts calls of the model's replaceable slots (the DiT forward, the VAE's encode/decode) and keeps the forwards' inputs."""

    def __init__(self, pipeline, monkeypatch) -> None:
        self.calls = {"encode": 0, "encode_batch": 0, "decode": 0}
        self.encoded_rows: list[int] = []  # streams in each encode call
        self.forwards: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (latents, timesteps, segments)
        vae = pipeline.model.vae
        for name in self.calls:
            original = getattr(vae, name)

            def counted(*args, name=name, original=original):
                self.calls[name] += 1
                if name == "encode":
                    self.encoded_rows.append(args[0].shape[0])
                return original(*args)

            monkeypatch.setattr(vae, name, counted)
        forward = pipeline.model.forward_chunks

        def logged(latents, timesteps, segments, context):
            self.forwards.append((latents.clone(), timesteps.clone(), len(segments)))
            return forward(latents, timesteps, segments, context)

        monkeypatch.setattr(pipeline.model, "forward_chunks", logged)


# ------------------------------------------------------------------ generation
def test_same_seed_same_video_other_seed_other_video(pipeline):
    a, tags = _generate(pipeline, _state(pipeline, seed=5), 4)
    b, _ = _generate(pipeline, _state(pipeline, seed=5), 4)
    c, _ = _generate(pipeline, _state(pipeline, seed=6), 4)
    assert a.shape == (13, SIZE, SIZE, 3) and a.dtype == torch.uint8  # 1 + 4 + 4 + 4 frames
    assert tags == list(range(13))  # each frame carries its index in the stream
    assert torch.equal(a, b)
    assert (a.int() - c.int()).abs().float().mean() > 5


def test_chunks_start_from_seeded_pure_noise_at_t1000_and_nothing_is_encoded(pipeline, monkeypatch):
    state = _state(pipeline, seed=9, num_inference_steps=2, use_denoising_batch=False)
    log = CallLog(pipeline, monkeypatch)
    counts = [pipeline.step([state], [None])[0].frames.shape[0] for _ in range(3)]
    assert counts == [1, 4, 4]  # sequential: each step returns its own chunk
    assert log.calls["encode"] == log.calls["encode_batch"] == 0
    assert log.calls["decode"] == 3
    assert state.encoder.frames_in == 0 and state.counters.frames_in == 0
    assert len(log.forwards) == 6  # two denoising steps per chunk
    latents, timesteps, _ = log.forwards[0]
    channels = pipeline.model.vae.z_dim
    expected = torch.randn((2, channels, 1, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(9))[:1]
    assert torch.equal(latents.float(), expected)  # the first chunk's start is its own noise draw, nothing mixed in
    sigmas = shifted_sigma(torch.tensor(T2V_TIMESTEPS[2], dtype=torch.float32), pipeline.model.flow_shift)
    assert torch.allclose(timesteps, torch.full_like(timesteps, 1000.0))
    assert torch.allclose(log.forwards[1][1], model_timesteps(sigmas[1]).expand_as(log.forwards[1][1]))
    assert not torch.equal(log.forwards[2][0], latents)  # the next chunk draws fresh noise


def test_frames_carry_the_step_tag_when_given(pipeline):
    state = _state(pipeline, use_denoising_batch=False)
    assert pipeline.step([state], [None], [("first",)])[0].tags == ("first",)
    out = pipeline.step([state], [None], [("second",)])[0]
    assert out.tags == ("second",) * 4 and out.frames.shape[0] == 4
    assert pipeline.step([state], [None], [(None,)])[0].tags == (5, 6, 7, 8)  # no tag: the frames' indices


@pytest.mark.parametrize("steps", [2, 4])
def test_stream_batch_equals_sequential(pipeline, steps):
    batch, batch_tags = _generate(pipeline, _state(pipeline, num_inference_steps=steps, **SMALL_WINDOW), 6)
    seq, seq_tags = _generate(pipeline, _state(pipeline, num_inference_steps=steps, use_denoising_batch=False, **SMALL_WINDOW), 6)
    assert batch_tags == seq_tags == list(range(21))
    assert _close(batch, seq)


def test_stream_batch_lags_and_flush_returns_the_chunks_in_flight(pipeline):
    state = _state(pipeline, num_inference_steps=3)
    counts = [pipeline.step([state], [None])[0].frames.shape[0] for _ in range(4)]
    assert counts == [0, 0, 1, 4]  # the output lags by steps - 1 chunks
    assert len(state.in_flight) == 2
    rest = pipeline.flush(state)
    assert rest.frames.shape[0] == 8 and rest.tags == tuple(range(5, 13))
    assert not state.in_flight
    assert pipeline.flush(state).frames.shape[0] == 0  # nothing left
    twin = _state(pipeline, num_inference_steps=3, use_denoising_batch=False)
    expected, _ = _generate(pipeline, twin, 4, flush=False)
    got = torch.cat([_generate(pipeline, _state(pipeline, num_inference_steps=3), 4)[0]])
    assert _close(got, expected)
    sequential = _state(pipeline, use_denoising_batch=False)
    pipeline.step([sequential], [None])
    assert pipeline.flush(sequential).frames.shape[0] == 0  # sequential chunks come out at once


# ------------------------------------------------------------- live parameters
def test_a_live_prompt_change_takes_effect_and_keeps_the_cache(pipeline):
    plain, changed = _state(pipeline, use_denoising_batch=False), _state(pipeline, use_denoising_batch=False)
    before_a, _ = _generate(pipeline, plain, 3, flush=False)
    before_b, _ = _generate(pipeline, changed, 3, flush=False)
    assert torch.equal(before_a, before_b)
    written = changed.cache.frames_written.clone()
    pipeline.update(changed, prompt="a red kite", transition_chunks=2)
    after_a, _ = _generate(pipeline, plain, 2, flush=False)
    after_b, _ = _generate(pipeline, changed, 2, flush=False)
    assert changed.params.prompt[0].text == "a red kite" and changed.params.transition_chunks == 2
    assert torch.equal(changed.cache.frames_written, written + 2)  # history extended, never reset
    assert not torch.equal(after_a, after_b)
    torch.testing.assert_close(changed.context.current.keys, pipeline._prompt_context(changed.params).keys)  # transition done


def test_a_live_seed_change_changes_the_next_chunks(pipeline):
    plain, changed = _state(pipeline, use_denoising_batch=False), _state(pipeline, use_denoising_batch=False)
    _generate(pipeline, plain, 2, flush=False)
    _generate(pipeline, changed, 2, flush=False)
    pipeline.update(changed, seed=99)
    a, _ = _generate(pipeline, plain, 1, flush=False)
    b, _ = _generate(pipeline, changed, 1, flush=False)
    assert not torch.equal(a, b)
    assert changed.chunks_in == 3  # not a reset


def test_a_live_steps_change_resets_onto_the_txt2vid_schedule(pipeline):
    state = _state(pipeline, num_inference_steps=2)
    _generate(pipeline, state, 3, flush=False)
    pipeline.update(state, num_inference_steps=4)
    out = pipeline.step([state], [None])[0]
    assert state.cache.rows == 4 and state.chunks_in == 1  # a new clip
    assert state.base_timesteps.tolist() == list(T2V_TIMESTEPS[4])
    assert out.frames.shape[0] == 0 and len(state.in_flight) == 1
    fresh, _ = _generate(pipeline, _state(pipeline, num_inference_steps=4), 1)
    assert torch.equal(pipeline.flush(state).frames, fresh)  # the reset clip replays a fresh stream


# ----------------------------------------------------------- batched sessions
def _run_together(pipeline, settings: list[dict[str, Any]], calls: int) -> list[tuple[torch.Tensor, list[Any], Any]]:
    """All streams in one step per call: txt2vid ones get None, vid2vid ones 4 frames (1 at first)."""
    states = [pipeline.create_state(None, s) for s in settings]
    clips = [_clip(1 + 4 * calls, seed=s["seed"]) if s.get("mode") != "txt2vid" else None for s in settings]
    frames: list[list[torch.Tensor]] = [[] for _ in states]
    tags: list[list[Any]] = [[] for _ in states]
    for call in range(calls):
        start, stop = (0, 1) if call == 0 else (1 + 4 * (call - 1), 1 + 4 * call)
        inputs = [None if clip is None else clip[start:stop] for clip in clips]
        for i, out in enumerate(pipeline.step(states, inputs)):
            frames[i].append(out.frames)
            tags[i] += list(out.tags)
    for i, state in enumerate(states):
        out = pipeline.flush(state)
        frames[i].append(out.frames)
        tags[i] += list(out.tags)
    return [(torch.cat(f), t, s) for f, t, s in zip(frames, tags, states)]


def test_txt2vid_and_vid2vid_sessions_in_one_step_equal_their_solo_runs(pipeline, monkeypatch):
    settings = [
        _settings(seed=4, **SMALL_WINDOW),
        {"width": SIZE, "height": SIZE, "prompt": "ink", "seed": 5, "num_inference_steps": 2, **SMALL_WINDOW},
        _settings(seed=6, prompt="a storm", use_denoising_batch=False, num_inference_steps=3),
    ]
    log = CallLog(pipeline, monkeypatch)
    together = _run_together(pipeline, settings, 5)
    batched = list(log.forwards)
    assert max(segments for _, _, segments in batched) == 3  # all three streams in one forward
    assert log.encoded_rows == [1] * 5  # one encode per step, of the vid2vid stream only
    solo = [_run_together(pipeline, [s], 5)[0] for s in settings]
    for (frames, tags, state), (solo_frames, solo_tags, solo_state) in zip(together, solo):
        assert tags == solo_tags and len(tags) == 17
        assert _close(frames, solo_frames)
        assert torch.equal(state.cache.frames_written, solo_state.cache.frames_written)
    assert len(batched) < len(log.forwards) - len(batched)


# -------------------------------------------------------------------- rollback
def _fingerprint(state) -> dict[str, Any]:
    cache = state.cache
    history = cache.geometry.scratch_start
    return {
        "k": cache.k[:, :, :history].clone(),
        "v": cache.v[:, :, :history].clone(),
        "frames_written": cache.frames_written.clone(),
        "pending": (len(state.pending_frames), list(state.pending_tags)),
        "in_flight": [(c.latents.clone(), c.step, c.tags) for c in state.in_flight],
        "chunks_in": state.chunks_in,
        "counters": dataclasses.asdict(state.counters),
        "context": (id(state.context.current), id(state.context.target), state.context.done),
        "generator": state.generator.get_state(),
        "decoder": (state.decoder.latents_in, len(state.decoder.cache.entries)),
        "params": (state.params, state.latest_params),
    }


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if key == "in_flight":
            assert len(x) == len(y) and all(torch.equal(p[0], q[0]) and p[1:] == q[1:] for p, q in zip(x, y)), key
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
        else:
            assert x == y, key


class InjectedFault(RuntimeError):
    pass


def _install_fault(monkeypatch, owner: Any, name: str, nth: int, after: bool = False) -> None:
    original = getattr(owner, name)
    calls = {"n": 0}

    def faulty(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth and not after:
            raise InjectedFault(name)
        result = original(*args, **kwargs)
        if calls["n"] == nth:
            raise InjectedFault(f"after {name}")
        return result

    monkeypatch.setattr(owner, name, faulty)


ROLLBACK = [_settings(seed=11, **SMALL_WINDOW), _settings(seed=12, prompt="ink", use_denoising_batch=False, num_inference_steps=3, **SMALL_WINDOW)]
FAULTS = {
    "first forward": (lambda p: p.model, "forward_chunks", 1, False),
    "sequential step 3": (lambda p: p.model, "forward_chunks", 3, False),
    "after the last commit": (lambda p: RollingKVCache, "commit", 4, True),
    "decode": (lambda p: p.model.vae, "decode", 1, False),
    "after decode": (lambda p: p.model.vae, "decode", 1, True),
    "prompt encoder": (lambda p: p, "_prompt_context", 1, False),
}


def _rollback_session(pipeline, fault: tuple | None, monkeypatch) -> list[tuple[torch.Tensor, list[Any]]]:
    states = [pipeline.create_state(None, s) for s in ROLLBACK]
    outputs: list[tuple[list[torch.Tensor], list[Any]]] = [([], []) for _ in states]

    def step() -> None:
        for (frames, tags), out in zip(outputs, pipeline.step(states, [None, None])):
            frames.append(out.frames)
            tags += list(out.tags)

    for _ in range(4):
        step()
    pipeline.update(states[1], prompt="ink, later", transition_chunks=1)
    if fault is not None:
        owner, name, nth, after = fault
        before = [_fingerprint(s) for s in states]
        checkpoints = [pipeline.checkpoint(s) for s in states]
        with monkeypatch.context() as patch:
            _install_fault(patch, owner(pipeline), name, nth, after)
            with pytest.raises(InjectedFault):
                step()
        for state, checkpoint in zip(states, checkpoints):
            pipeline.restore(state, checkpoint)
        for state, expected in zip(states, before):
            _assert_same(_fingerprint(state), expected)
    for _ in range(3):
        step()
    for (frames, tags), state in zip(outputs, states):
        out = pipeline.flush(state)
        frames.append(out.frames)
        tags += list(out.tags)
    return [(torch.cat(frames), tags) for frames, tags in outputs]


@pytest.fixture(scope="module")
def rollback_reference(pipeline):
    return _rollback_session(pipeline, None, None)


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
def test_restore_after_a_failed_step_replays_exactly(pipeline, rollback_reference, fault, monkeypatch):
    got = _rollback_session(pipeline, fault, monkeypatch)
    for (frames, tags), (expected, expected_tags) in zip(got, rollback_reference):
        assert tags == expected_tags == list(range(len(tags))) and len(tags) == 25
        assert torch.equal(frames, expected)


def test_restore_after_a_failed_flush(pipeline, monkeypatch):
    state, twin = _state(pipeline, num_inference_steps=3), _state(pipeline, num_inference_steps=3)
    _generate(pipeline, state, 3, flush=False)
    _generate(pipeline, twin, 3, flush=False)
    expected = pipeline.flush(twin)
    before = _fingerprint(state)
    checkpoint = pipeline.checkpoint(state)
    with monkeypatch.context() as patch:
        _install_fault(patch, pipeline.model.vae, "decode", 2)
        with pytest.raises(InjectedFault):
            pipeline.flush(state)
    pipeline.restore(state, checkpoint)
    _assert_same(_fingerprint(state), before)
    out = pipeline.flush(state)
    assert out.tags == expected.tags == tuple(range(1, 9)) and torch.equal(out.frames, expected.frames)


# -------------------------------------------------------------------- contract
def test_contract_answers_for_a_txt2vid_session(pipeline):
    caps = Capabilities.of(pipeline)
    assert caps.checkpoint and caps.flush
    state = _state(pipeline, num_inference_steps=3, chunk_frames=2)
    vid = pipeline.create_state(None, {"width": SIZE, "height": SIZE})
    assert pipeline.takes_frames(state) is False and pipeline.takes_frames(vid) is True
    assert pipeline.frames_per_step(state) == 1
    shape = pipeline.stream_shape(state)
    assert shape.frames_per_unit == 8  # a chunk's output frames: 4 per latent frame, 2 latent frames
    assert (shape.steps, shape.stream_batch, shape.chunk_frames) == (3, True, 2)
    assert pipeline.settings_shape(_settings(num_inference_steps=3, chunk_frames=2)) == shape
    # every step makes a chunk, with no input to wait for: rows = the chunks in flight plus the new one
    rows = []
    for _ in range(4):
        rows.append(pipeline.step_work(state, 0).rows)
        pipeline.step([state], [None])
    assert rows == [1, 2, 3, 3]
    sequential = _state(pipeline, num_inference_steps=3, use_denoising_batch=False)
    work = pipeline.step_work(sequential, 0)
    assert (work.rows, work.passes) == (1, 3)
    assert pipeline.params_json(state)["num_inference_steps"] == 3


# ------------------------------------------------------------------ bad input
def test_frames_to_a_txt2vid_stream_and_none_to_a_vid2vid_one_are_input_errors(pipeline):
    state = _state(pipeline)
    vid = pipeline.create_state(None, {"width": SIZE, "height": SIZE})
    with pytest.raises(InputError, match="txt2vid: it takes no frames"):
        pipeline.step([state], [_clip(1)])
    with pytest.raises(InputError, match="vid2vid and needs input frames"):
        pipeline.step([vid], [None])
    with pytest.raises(InputError, match="at most one tag"):
        pipeline.step([state], [None], [(1, 2)])
    with pytest.raises(InputError, match="vid2vid"):  # a mixed step checks every stream before anything changes
        pipeline.step([state, vid], [None, None])
    assert state.chunks_in == 0 and not state.pending_frames and not state.in_flight


def test_mode_is_validated_and_fixed(pipeline):
    with pytest.raises(ConfigError, match="mode must be one of vid2vid, txt2vid for video streams; got 'txt2img'"):
        pipeline.create_state(None, {"mode": "txt2img"})
    with pytest.raises(ConfigError, match="mode must be one of vid2vid, txt2vid"):
        parse_video_settings({"mode": "text"})
    assert parse_video_settings({})[0].mode == "vid2vid" and VideoConfig().mode == "vid2vid"
    state = _state(pipeline)
    with pytest.raises(ConfigError, match="mode cannot be changed on a running stream"):
        pipeline.update(state, mode="vid2vid")
    assert state.latest_params == state.params


@pytest.mark.parametrize("name", ["noise_scale", "motion_aware", "motion_scale", "motion_weight", "noise_smoothing"])
def test_input_noise_parameters_are_refused_in_txt2vid(pipeline, name):
    value = {"noise_scale": 0.7, "motion_aware": False, "motion_scale": 0.3, "motion_weight": 0.05, "noise_smoothing": 0.2}[name]
    message = f"{name} applies to vid2vid streams"
    with pytest.raises(ConfigError, match=message):
        pipeline.create_state(None, _settings(**{name: value}))
    with pytest.raises(ConfigError, match=message):
        pipeline.create_state(VideoConfig(width=SIZE, height=SIZE, mode="txt2vid"), {name: value})
    state = _state(pipeline)
    with pytest.raises(ConfigError, match=message):
        pipeline.update(state, {name: value})
    assert state.latest_params == state.params
    vid = pipeline.create_state(None, {"width": SIZE, "height": SIZE, name: value})  # vid2vid takes them
    assert getattr(vid.params, name) == value


# ------------------------------------------------------------------ Python API
def test_video_stream_txt2vid():
    stream = streamgen.VideoStream("tiny-video", mode="txt2vid", width=SIZE, height=SIZE, prompt="a paper boat", seed=4, num_inference_steps=2)
    assert stream.config.mode == "txt2vid"
    outputs = [stream() for _ in range(3)]
    assert [len(o) for o in outputs] == [0, 1, 4]  # stream batch: one chunk in flight
    assert all(isinstance(f, np.ndarray) and f.shape == (SIZE, SIZE, 3) and f.dtype == np.uint8 for o in outputs for f in o)
    assert stream.update(prompt="a storm").prompt[0].text == "a storm"
    with pytest.raises(streamgen.InputError, match="txt2vid: call stream\\(\\) without frames"):
        stream(np.zeros((SIZE, SIZE, 3), np.uint8))
    with pytest.raises(streamgen.ConfigError, match="noise_scale applies to vid2vid"):
        stream.update(noise_scale=0.5)
    rest = stream.flush()
    assert len(rest) == 4  # the chunk in flight
    assert stream.stats["frames_processed"] == 9 and stream.stats["frames_in"] == 0
    twin = streamgen.VideoStream("tiny-video", mode="txt2vid", width=SIZE, height=SIZE, prompt="a paper boat", seed=4, num_inference_steps=2)
    again = [f for _ in range(3) for f in twin()]
    assert all(np.array_equal(a, b) for a, b in zip(again, [f for o in outputs for f in o]))
    vid = streamgen.VideoStream("tiny-video", width=SIZE, height=SIZE)
    with pytest.raises(streamgen.InputError, match="vid2vid: pass a frame"):
        vid.stream()
