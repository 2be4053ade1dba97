"""Keys stored rotated at their absolute frame index: same attention as window-relative positions, at any stream length."""

from __future__ import annotations

import pytest
import torch

from streamgen.models.video.tiny_video_dit import tiny_causal_wan
from streamgen.models.video.wan_rope import apply_rope

H = W = 8  # latent size -> a 4x4 token grid



@pytest.fixture(scope="module")
def model():
    return tiny_causal_wan(seed=0)


def _rotated(rope, x, position):
    cos, sin = rope.tables(torch.tensor([[position]]), 4, 4)
    return apply_rope(x, cos, sin)


def test_tables_are_diffusers_inside_its_table_and_exact_beyond(model):
    rope = model.rope
    diffusers_rope = model.transformer.rope
    positions = torch.arange(40)[None]
    cos, sin = rope.tables(positions, 4, 4)
    expected = diffusers_rope(torch.zeros(1, 16, 40, H, W))  # diffusers' own (cos, sin) for frames 0..39
    torch.testing.assert_close(cos, expected[0], atol=0, rtol=0)
    torch.testing.assert_close(sin.abs(), expected[1].abs(), atol=0, rtol=0)
    far = 10**9 + 7  # far past the table (1024 positions): computed, not looked up
    cos, _ = rope.tables(torch.tensor([[far]]), 1, 1)
    freqs = 1.0 / (10000.0 ** (torch.arange(0, rope.time_dim, 2, dtype=torch.float64) / rope.time_dim))
    reference = torch.cos(far * freqs).repeat_interleave(2).float()
    torch.testing.assert_close(cos[0, 0, 0, : rope.time_dim], reference, atol=0, rtol=0)


def test_scores_depend_only_on_the_distance_at_any_position(model):
    rope = model.rope
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 16, 2, 24, generator=g), torch.randn(1, 16, 2, 24, generator=g)
    near = (_rotated(rope, q, 9) * _rotated(rope, k, 4)).sum(-1)
    far = (_rotated(rope, q, 10**7 + 9) * _rotated(rope, k, 10**7 + 4)).sum(-1)
    torch.testing.assert_close(far, near, atol=2e-5, rtol=0)


def test_shift_time_composes_and_unrotate_inverts(model):
    rotation = model.rope.key_rotation(4, 4)
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(2, 16, 2, 24, generator=g)  # 2 rows, one frame each
    at_3 = torch.cat([_rotated(model.rope, raw[:1], 3), _rotated(model.rope, raw[1:], 3)])
    shifted = rotation.shift_time(at_3, torch.tensor([5, 1000]))
    expected = torch.cat([_rotated(model.rope, raw[:1], 8), _rotated(model.rope, raw[1:], 1003)])
    torch.testing.assert_close(shifted, expected, atol=2e-6, rtol=0)
    torch.testing.assert_close(shifted[..., rotation.time_dim :], at_3[..., rotation.time_dim :], atol=0, rtol=0)
    torch.testing.assert_close(rotation.unrotate(shifted, torch.tensor([[8], [1003]])), raw, atol=2e-6, rtol=0)


@torch.no_grad()
def test_cache_holds_ring_keys_at_their_frame_and_sinks_at_the_window_position(model):
    """History is written once; only the sink slots follow the window (time channels advanced by the shift)."""
    cache = model.new_cache(1, H, W, sink_frames=2, ring_frames=2)
    context = model.encode_context(torch.randn(1, 5, model.text_dim, generator=torch.Generator().manual_seed(2)))
    tpf = cache.tokens_per_frame
    for i in range(6):
        g = torch.Generator().manual_seed(i)
        model.forward_chunk(torch.randn(1, 16, 1, H, W, generator=g), torch.full((1, 1), 500.0), cache, context)
        if i == 4:
            ring_slot_of_frame_4 = cache.k[:, 0, 2 * tpf : 3 * tpf].clone()  # ring slot (4 - 2) % 2 = 0
    # frame 4 has not moved since it was written, though the window moved on (frame 5 went to ring slot 1)
    torch.testing.assert_close(cache.k[:, 0, 2 * tpf : 3 * tpf], ring_slot_of_frame_4, atol=0, rtol=0)
    shift = 6 - 2 - 2
    rotation = cache.rotation
    expected_sinks = rotation.shift_time(cache.sink_keys, torch.tensor([[shift]]))
    torch.testing.assert_close(cache.k[:, :, : 2 * tpf], expected_sinks, atol=0, rtol=0)


@torch.no_grad()
def test_adaptive_sink_takes_the_raw_keys_of_the_new_scene(model):
    """A replaced sink holds the new frame's keys re-rotated to the sink's position (raw keys equal the frame's)."""
    cache = model.new_cache(1, H, W, sink_frames=2, ring_frames=2, adaptive_sink_threshold=1.01)  # always replace
    context = model.encode_context(torch.randn(1, 5, model.text_dim, generator=torch.Generator().manual_seed(2)))
    tpf = cache.tokens_per_frame
    for i in range(3):
        g = torch.Generator().manual_seed(10 + i)
        model.forward_chunk(torch.randn(1, 16, 1, H, W, generator=g), torch.full((1, 1), 500.0), cache, context)
    # frame 2 (the first past the sinks) replaced one sink in every layer; it also sits in ring slot 0
    ring_raw = cache._raw_keys(cache.k[:, :, 2 * tpf : 3 * tpf], torch.tensor([[2]]))
    sinks_raw = cache._raw_keys(cache.sink_keys, torch.tensor([[0, 1]])).unflatten(2, (2, tpf))
    replaced = [(sinks_raw[layer, 0] - ring_raw[layer, 0]).abs().amax(dim=(1, 2, 3)).min() for layer in range(cache.num_layers)]
    assert max(replaced) < 1e-5
    assert torch.equal(cache.frames_written, torch.tensor([3]))
