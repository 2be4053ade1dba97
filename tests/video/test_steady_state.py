"""Attention without a mask once the cache window is full: decided on the host, sync-free, restored by rollback."""

from __future__ import annotations

import pytest
import torch

from streamgen.models.loading.video_presets import build_tiny_video_model
from streamgen.models.video.causal_wan import PlannedChunk, SegmentBuffers
from streamgen.models.video.kv_cache import CommitJournal
from streamgen.models.video.tiny_video_dit import tiny_causal_wan
from streamgen.pipeline.video import VideoPipeline

H = W = 8
ATOL = 1e-5
WINDOW = {"sink_frames": 1, "ring_frames": 2}



@pytest.fixture(scope="module")
def model():
    return tiny_causal_wan(seed=0)


@pytest.fixture(scope="module")
def context(model):
    return model.encode_context(torch.randn(1, 7, model.text_dim, generator=torch.Generator().manual_seed(3)))


def _chunk(rows: int = 1, seed: int = 0, frames: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 16, frames, H, W, generator=g), torch.rand(rows, frames, generator=g) * 1000


def _fill(model, cache, context, chunks: int, write=None, frames: int = 1):
    for i in range(chunks):
        x, t = _chunk(cache.rows, seed=i, frames=frames)
        model.forward_chunk(x, t, cache, context.expand(cache.rows), write=write)


def test_mask_only_while_the_window_fills(model, context):
    cache = model.new_cache(2, H, W, **WINDOW)
    needs = []
    for i in range(5):
        needs.append(cache.plan(1).needs_mask)
        _fill(model, cache, context, 1)
    assert needs == [True, True, True, False, False]  # 1 sink + 2 ring frames, then every slot is valid
    assert cache.frames_at_least == (5, 5)
    assert cache.plan(1).mask is None
    assert torch.all(cache.plan(1).attention_mask)  # the mask it drops is all True


def test_a_partial_chunk_keeps_the_mask(model, context):
    cache = model.new_cache(1, H, W, chunk_frames=2, **WINDOW)
    _fill(model, cache, context, 2, frames=2)  # 4 frames written
    assert not cache.plan(2).needs_mask
    assert cache.plan(1).needs_mask  # the second scratch slot holds nothing


def test_host_bound_is_low_never_high(model, context):
    """Write masks and reset masks live on the device: the host assumes the least, so it only ever keeps a mask."""
    cache = model.new_cache(2, H, W, **WINDOW)
    _fill(model, cache, context, 2)
    _fill(model, cache, context, 3, write=torch.tensor([True, False]))
    assert cache.frames_written.tolist() == [5, 2] and cache.frames_at_least == (2, 2)
    assert cache.plan(1).needs_mask
    _fill(model, cache, context, 1)
    assert cache.frames_at_least == (3, 3) and not cache.plan(1).needs_mask
    cache.reset(torch.tensor([False, True]))
    assert cache.frames_at_least == (0, 0)
    _fill(model, cache, context, 3)
    cache.reset([1])
    assert cache.frames_at_least == (3, 0)


def test_row_views_share_the_host_bound(model, context):
    cache = model.new_cache(3, H, W, **WINDOW)
    view = cache.row_view(1, 3)
    _fill(model, view, context, 4)
    assert cache.frames_at_least == (0, 4, 4) and view.frames_at_least == (4, 4)
    assert cache.frames_written.tolist() == [0, 4, 4]
    assert not view.plan(1).needs_mask and cache.plan(1).needs_mask


@torch.no_grad()
def test_maskless_steady_state_equals_the_masked_path(model, context):
    cache = model.new_cache(2, H, W, **WINDOW)
    _fill(model, cache, context, 6)
    layout = cache.plan(1)
    assert not layout.needs_mask
    x, t = _chunk(2, seed=50)
    outputs = []
    for mask in (layout.attention_mask, None):
        k, v = cache.k.clone(), cache.v.clone()
        planned = PlannedChunk(layout.query_frames, (SegmentBuffers(k, v, cache.geometry.scratch_start, mask),))
        outputs.append((model.chunk_core(x, t, context.expand(2), planned), k, v))
    (masked, k1, v1), (maskless, k2, v2) = outputs
    torch.testing.assert_close(maskless, masked, atol=ATOL, rtol=0)
    torch.testing.assert_close(k2, k1, atol=0, rtol=0)  # the same chunk stored
    torch.testing.assert_close(v2, v1, atol=0, rtol=0)


@torch.no_grad()
def test_steady_state_reads_no_tensor_value_on_the_host(model, context, monkeypatch):
    caches = [model.new_cache(2, H, W, **WINDOW), model.new_cache(1, H, W, sink_frames=0, ring_frames=2)]
    for cache in caches:
        _fill(model, cache, context, 4)
    x, t = _chunk(3, seed=9)
    model.forward_chunks(x, t, caches, context)  # warm-up outside the guard

    def host_read(*_args, **_kwargs):
        raise AssertionError("tensor value read on the host in the per-chunk path")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    for _ in range(3):
        model.forward_chunks(x, t, [caches[0].row_view(0, 2), caches[1]], context)
    monkeypatch.undo()
    assert [c.frames_written.tolist() for c in caches] == [[8, 8], [8]]


@torch.no_grad()
def test_journal_undo_restores_rotated_history_and_host_bound(model, context):
    """Past the window and while filling the sinks, through row views: undo puts back every byte and the host bound."""
    cache = model.new_cache(2, H, W, sink_frames=2, ring_frames=2)
    _fill(model, cache, context, 1)
    history = cache.geometry.scratch_start
    before = (cache.k[:, :, :history].clone(), cache.v[:, :, :history].clone(), cache.sink_keys.clone())
    counters = (cache.frames_written.clone(), cache.frames_at_least)
    cache.journal = CommitJournal()
    for i in range(6):
        target = cache.row_view(1, 2) if i % 3 == 2 else cache
        x, t = _chunk(target.rows, seed=20 + i)
        model.forward_chunk(x, t, target, context.expand(target.rows))
    assert cache.frames_at_least == (5, 7)
    cache.journal.undo()
    after = (cache.k[:, :, :history], cache.v[:, :, :history], cache.sink_keys)
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert torch.equal(cache.frames_written, counters[0]) and cache.frames_at_least == counters[1]


def test_pipeline_restore_puts_the_host_bound_back(monkeypatch):
    pipeline = VideoPipeline(build_tiny_video_model(seed=0))
    state = pipeline.create_state(None, {"width": 64, "height": 64, "num_inference_steps": 2, **WINDOW})
    clip = torch.randint(0, 256, (13, 64, 64, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    pipeline.step([state], [clip[:9]])
    bound, written = state.cache.frames_at_least, state.cache.frames_written.clone()
    checkpoint = pipeline.checkpoint(state)
    calls = {"n": 0}
    decode = pipeline.model.vae.decode_batch

    def failing_decode(*args, **kwargs):
        calls["n"] += 1
        raise RuntimeError("injected decode fault")

    monkeypatch.setattr(pipeline.model.vae, "decode_batch", failing_decode)
    with pytest.raises(RuntimeError, match="injected"):
        pipeline.step([state], [clip[9:13]])
    assert calls["n"] == 1 and state.cache.frames_at_least != bound  # the forward committed before the fault
    monkeypatch.setattr(pipeline.model.vae, "decode_batch", decode)
    pipeline.restore(state, checkpoint)
    assert state.cache.frames_at_least == bound and torch.equal(state.cache.frames_written, written)


@torch.no_grad()
def test_timing_probe_runs_the_slot_at_native_size_in_the_steady_state():
    model = build_tiny_video_model(seed=0)
    calls = []
    slot = model.forward_chunks

    def recording(latents, timesteps, segments, context):
        calls.append((tuple(latents.shape), [s.cache.plan(latents.shape[2]).needs_mask for s in segments]))
        return slot(latents, timesteps, segments, context)

    model.forward_chunks = recording
    probe = model.timing_probe
    first, second = probe(), probe()
    h, w = model.latent_size(*model.default_size)
    assert calls == [((2, 16, 1, h, w), [False])] * 2
    torch.testing.assert_close(first, second, atol=0, rtol=0)  # nothing written: every call does the same work
