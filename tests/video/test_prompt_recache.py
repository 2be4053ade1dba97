"""prompt_switch="recache": a prompt change rebuilds the stream's KV cache from the kept clean latents under the new prompt.

The reference rebuild below is written independently of the pipeline's: for
every cache row it runs the public ``forward_chunk`` over the finished frames
that row's window holds, each re-noised to the row's step, from an empty
cache, and compares the *raw* (un-rotated) keys and the values frame by
frame with the stream's cache (so the slot mapping and the re-rotation to
absolute frame indices are checked too).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from streamgen.errors import ConfigError
from streamgen.models.loading.video_presets import build_tiny_video_model
from streamgen.pipeline.noise import model_timesteps
from streamgen.pipeline.video import VideoPipeline

ATOL = 1e-4
S, W, C = 1, 2, 2  # sinks, ring, chunk frames: five chunks run well past the window
BASE = {"width": 64, "height": 64, "prompt": "a red fox", "sink_frames": S, "ring_frames": W, "chunk_frames": C}
NEW_PROMPT = "a blue car"


@pytest.fixture(scope="module")
def pipeline():
    return VideoPipeline(build_tiny_video_model(seed=0))


def _clip(count: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (64, 64, 3), generator=g, dtype=torch.uint8)
    return torch.stack([base.roll(shifts=3 * i, dims=1) for i in range(count)])


class Feeder:
    """Feeds a stream exactly one chunk's worth of frames per step (vid2vid) or None (txt2vid)."""

    def __init__(self, pipeline, state, seed: int = 1) -> None:
        self.pipeline, self.state, self.clip, self.offset = pipeline, state, _clip(80, seed), 0

    def next_input(self):
        if self.state.generates:
            return None
        count = self.state.frames_needed
        frames = self.clip[self.offset : self.offset + count]
        self.offset += count
        return frames

    def step(self) -> torch.Tensor:
        return self.pipeline.step([self.state], [self.next_input()])[0].frames

    def run(self, chunks: int) -> list[torch.Tensor]:
        return [self.step() for _ in range(chunks)]


def _stream(pipeline, **settings):
    state = pipeline.create_state(None, {**BASE, **settings})
    return state, Feeder(pipeline, state, seed=settings.get("seed", 1))


def _window(n: int) -> list[int]:
    return [*range(min(S, n)), *range(max(S, n - W), n)]


def _reference_rebuild(pipeline, state, context) -> dict[int, tuple[list[int], object]]:
    """Per cache row: (the finished frames its window holds, a 1-row cache rebuilt over them under ``context``)."""
    transformer = pipeline.model.transformer
    h, w = state.latent_size
    kept = {f.index: f for f in state.kept}
    out = {}
    for row, n in enumerate(state.cache.frames_written.tolist()):
        frames = [f for f in _window(n) if f < state.frames_done]
        ref = transformer.new_cache(1, h, w, sink_frames=S, ring_frames=W, chunk_frames=C)
        for _, group in itertools.groupby(frames, key=lambda f: f // C):  # the chunks they were generated in
            group = list(group)
            x = torch.cat(
                [kept[f].clean * (1 - kept[f].sigmas[row]) + kept[f].sigmas[row] * kept[f].noise[row : row + 1] for f in group], dim=2
            )
            t = model_timesteps(torch.stack([kept[f].sigmas[row] for f in group]))[None]
            transformer.forward_chunk(x, t, ref, context)
        out[row] = (frames, ref)
    return out


def _frame_kv(cache, row: int, frame: int, position: int):
    """Raw (pre-RoPE) keys and values of ``frame`` (stored rotated at ``position``) in ``row``: (L, tpf, H, D) each."""
    tpf = cache.tokens_per_frame
    slot = frame if frame < S else S + (frame - S) % W
    tokens = slice(slot * tpf, (slot + 1) * tpf)
    keys = cache.sink_keys[:, row, tokens] if frame < S else cache.k[:, row, tokens]
    layers = keys.shape[0]
    raw = cache.rotation.unrotate(keys.float(), torch.full((layers, 1), position, dtype=torch.long))
    return raw, cache.v[:, row, tokens].float()


def _switch(pipeline, state, mode: str) -> None:
    pipeline.update(state, prompt=NEW_PROMPT, prompt_switch=mode)
    pipeline.apply_pending(state)


def _cache_tensors(state):
    cache = state.cache
    return cache.k.clone(), cache.v.clone(), cache.sink_keys.clone(), cache.frames_written.clone()


# --------------------------------------------------------------------------- tests
def test_blend_is_the_default_and_unchanged(pipeline):
    default, feed_default = _stream(pipeline, use_denoising_batch=False)
    blend, feed_blend = _stream(pipeline, use_denoising_batch=False, prompt_switch="blend")
    assert default.params.prompt_switch == "blend"
    out_default, out_blend = feed_default.run(3), feed_blend.run(3)
    for state in (default, blend):
        pipeline.update(state, prompt=NEW_PROMPT, transition_chunks=2)
    before = _cache_tensors(default)
    out_default += feed_default.run(3)
    out_blend += feed_blend.run(3)
    for a, b in zip(out_default, out_blend):
        assert torch.equal(a, b)
    for a, b in zip(_cache_tensors(default), _cache_tensors(blend)):
        assert torch.equal(a, b)
    assert default.recaches == blend.recaches == 0 and default.recache_forwards == 0
    # blend never rewrites history: applying the switch leaves the cache as it was
    state, feed = _stream(pipeline, use_denoising_batch=False)
    feed.run(5)
    before = _cache_tensors(state)
    _switch(pipeline, state, "blend")
    for a, b in zip(before, _cache_tensors(state)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("batch", [False, True], ids=["sequential", "stream_batch"])
def test_recache_rebuilds_the_cache_like_an_independent_reference(pipeline, batch):
    state, feed = _stream(pipeline, use_denoising_batch=batch)
    feed.run(5)
    before = _cache_tensors(state)
    in_flight_before = [c.context for c in state.in_flight]
    _switch(pipeline, state, "recache")
    context = state.context.current
    assert state.recaches == 1
    reference = _reference_rebuild(pipeline, state, context)
    rows_rebuilt = 0
    for row, (frames, ref) in reference.items():
        assert frames, "every row holds finished frames after five chunks"
        for j, frame in enumerate(frames):
            got_k, got_v = _frame_kv(state.cache, row, frame, frame)
            ref_k, ref_v = _frame_kv(ref, 0, j, j)
            torch.testing.assert_close(got_k, ref_k, atol=ATOL, rtol=0)
            torch.testing.assert_close(got_v, ref_v, atol=ATOL, rtol=0)
            old_k, old_v = _frame_kv(_Cache(state.cache, before), row, frame, frame)
            assert (old_v - got_v).abs().max() > 1e-3, "the rebuilt frame must differ from the history under the old prompt"
        rows_rebuilt += 1
        # frames still in flight (stream batch, lower rows) keep their old K/V
        n = state.cache.frames_written[row].item()
        for frame in _window(n):
            if frame not in frames:
                old_k, old_v = _frame_kv(_Cache(state.cache, before), row, frame, frame)
                got_k, got_v = _frame_kv(state.cache, row, frame, frame)
                assert torch.equal(old_v, got_v) and torch.equal(old_k, got_k)
    assert rows_rebuilt == state.num_steps
    assert torch.equal(state.cache.frames_written, before[3])
    # the cost: one forward per chunk of the window per group of rows that hold the same frames
    groups = {tuple(frames) for frames, _ in reference.values()}
    expected = sum(len({f // C for f in frames}) for frames in groups)
    assert state.recache_forwards == expected > 0
    # chunks in flight continue under the new prompt
    assert all(c.context is context for c in state.in_flight)
    assert all(old is not context for old in in_flight_before)
    feed.run(2)  # and the stream goes on


class _Cache:
    """The stream cache's geometry over saved tensors (to read the history as it was before the switch)."""

    def __init__(self, cache, saved) -> None:
        self.k, self.v, self.sink_keys, _ = saved
        self.rotation, self.tokens_per_frame = cache.rotation, cache.tokens_per_frame


def test_recache_with_the_same_prompt_reproduces_the_cache_while_the_window_is_not_full(pipeline):
    """txt2vid, one step: a row is written from pure noise at t = 1000, so the rebuild must give back the same cache."""
    state = pipeline.create_state(
        None, {**BASE, "sink_frames": 2, "ring_frames": 4, "mode": "txt2vid", "num_inference_steps": 1}
    )
    pipeline.step([state], [None])
    pipeline.step([state], [None])
    before = _cache_tensors(state)
    pipeline._recache(state, state.context.current)
    assert state.recache_forwards == 2
    for a, b in zip(before, _cache_tensors(state)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_kept_latents_are_bounded_by_the_window(pipeline):
    state, feed = _stream(pipeline, use_denoising_batch=False, prompt_switch="recache")
    feed.run(1)
    assert [f.index for f in state.kept] == [0, 1]
    feed.run(5)
    assert state.frames_done == 12
    assert [f.index for f in state.kept] == [*range(S), *range(12 - W, 12)]
    assert len(state.kept) <= S + W
    # they are the clean latents of those frames: re-noised to σ = 0 they are themselves
    for f in state.kept:
        assert f.clean.shape[2] == 1 and f.noise.shape[0] == state.num_steps
    pipeline.reset(state)
    assert state.kept == [] and state.frames_done == 0


def test_recache_output_differs_from_blend_and_matches_a_stream_that_had_the_new_prompt_from_the_start(pipeline):
    """txt2vid with one step: a cache row is written from the chunk's noise alone (σ = 1), so while the window is not
    full a re-cache under the new prompt gives exactly the cache, and then the latents, of a stream that ran the new
    prompt from the start (same seed); blend does not."""
    window = {"sink_frames": 2, "ring_frames": 4, "mode": "txt2vid", "num_inference_steps": 1, "use_denoising_batch": False}
    states, outputs = {}, {}
    for name in ("blend", "recache", "new"):
        prompt = NEW_PROMPT if name == "new" else BASE["prompt"]
        state = pipeline.create_state(None, {**BASE, **window, "prompt": prompt})
        for _ in range(2):
            pipeline.step([state], [None])
        if name != "new":
            _switch(pipeline, state, name)
        states[name] = state
        outputs[name] = pipeline.step([state], [None])[0].frames.float()
    new = states["new"]
    recache_cache, blend_cache = _cache_tensors(states["recache"]), _cache_tensors(states["blend"])
    for got, expected in zip(recache_cache, _cache_tensors(new)):
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    latest = lambda state: state.kept[-1].clean  # noqa: E731 - the chunk generated after the switch
    torch.testing.assert_close(latest(states["recache"]), latest(new), atol=ATOL / 10, rtol=0)
    assert (blend_cache[1] - _cache_tensors(new)[1]).abs().max() > 100 * ATOL
    assert (latest(states["blend"]) - latest(new)).abs().max() > 5 * ATOL  # the tiny model's prompt weighs little
    # the decoded frames differ from blend's (they are not equal to the new stream's: the VAE decoder's causal cache
    # still holds the frames decoded under the old prompt, which a re-cache leaves alone)
    assert not torch.equal(outputs["blend"], outputs["recache"])


def test_restore_after_a_failed_step_puts_back_cache_and_kept_latents(pipeline, monkeypatch):
    state, feed = _stream(pipeline, use_denoising_batch=False)
    twin, feed_twin = _stream(pipeline, use_denoising_batch=False)
    feed.run(4), feed_twin.run(4)
    checkpoint = pipeline.checkpoint(state)
    before = _cache_tensors(state)
    kept, done = list(state.kept), state.frames_done
    pipeline.update(state, prompt=NEW_PROMPT, prompt_switch="recache")
    pipeline.update(twin, prompt=NEW_PROMPT, prompt_switch="recache")

    original = pipeline.model.forward_chunks
    storage = state.cache.k.untyped_storage().data_ptr()
    calls = {"stream": 0}

    def failing(latents, timesteps, segments, context):
        if segments[0].cache.k.untyped_storage().data_ptr() == storage:
            calls["stream"] += 1
            if calls["stream"] == 2:  # the second denoising step: the first one has committed
                raise RuntimeError("injected failure")
        return original(latents, timesteps, segments, context)

    monkeypatch.setattr(pipeline.model, "forward_chunks", failing)
    frames = feed.next_input()
    with pytest.raises(RuntimeError, match="injected"):
        pipeline.step([state], [frames])
    assert state.recaches == 1 and calls["stream"] == 2  # the re-cache ran, then a commit, then the failure
    pipeline.restore(state, checkpoint)
    for a, b in zip(before, _cache_tensors(state)):
        assert torch.equal(a, b)
    assert state.kept == kept and state.frames_done == done
    assert state.recaches == 0 and state.recache_forwards == 0
    monkeypatch.setattr(pipeline.model, "forward_chunks", original)
    # the retry gives what a stream that never failed gives
    retry = pipeline.step([state], [frames])[0].frames
    expected = feed_twin.step()
    assert torch.equal(retry, expected)
    for a, b in zip(_cache_tensors(twin), _cache_tensors(state)):
        assert torch.equal(a, b)
    assert state.recaches == twin.recaches == 1


def test_a_session_that_recaches_does_not_change_another_sessions_output(pipeline):
    def run(together: bool):
        a, feed_a = _stream(pipeline, seed=3)
        b, feed_b = _stream(pipeline, seed=4, mode="txt2vid")
        out_a, out_b = [], []
        for call in range(6):
            if call == 3:
                pipeline.update(a, prompt=NEW_PROMPT, prompt_switch="recache")
            if together:
                result = pipeline.step([a, b], [feed_a.next_input(), feed_b.next_input()])
                out_a.append(result[0].frames), out_b.append(result[1].frames)
            else:
                out_a.append(feed_a.step()), out_b.append(feed_b.step())
        return torch.cat(out_a), torch.cat(out_b), a, b

    a_together, b_together, a_state, b_state = run(True)
    a_solo, b_solo, a_solo_state, b_solo_state = run(False)
    assert a_state.recaches == 1 and b_state.recaches == 0
    assert b_together.shape == b_solo.shape and b_together.shape[0] > 0
    assert (b_together.int() - b_solo.int()).abs().max() <= 1
    torch.testing.assert_close(b_state.cache.k, b_solo_state.cache.k, atol=ATOL, rtol=0)
    assert (a_together.int() - a_solo.int()).abs().max() <= 1


def test_prompt_switch_is_validated(pipeline):
    with pytest.raises(ConfigError, match="prompt_switch must be one of blend, recache"):
        pipeline.create_state(None, {**BASE, "prompt_switch": "fade"})
    state, _ = _stream(pipeline)
    with pytest.raises(ConfigError, match="blend, recache"):
        pipeline.update(state, prompt_switch="Recache")
    assert state.latest_params.prompt_switch == "blend"
    pipeline.update(state, prompt_switch="recache")
    assert state.latest_params.prompt_switch == "recache"
    assert state.latest_params.to_dict()["prompt_switch"] == "recache"
