"""CausalWanTransformer: chunked forward over the KV cache = block-causal reference = diffusers for one chunk."""

from __future__ import annotations

import pytest
import torch

from streamgen.errors import InputError
from streamgen.models.video.causal_wan import CacheSegment
from streamgen.models.video.tiny_video_dit import tiny_causal_wan
from streamgen.models.video.wan_context import CrossAttentionContext

H = W = 8  # latent size -> 16 tokens per frame
ATOL = 1e-5



@pytest.fixture(scope="module")
def model():
    return tiny_causal_wan(seed=0)


@pytest.fixture(scope="module")
def context(model):
    text = torch.randn(2, 7, model.text_dim, generator=torch.Generator().manual_seed(3))
    return model.encode_context(text)


def _inputs(frames: int, rows: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(rows, 16, frames, H, W, generator=g)
    timesteps = torch.rand(rows, frames, generator=g) * 1000  # a different timestep for every frame
    return latents, timesteps


def _chunked(model, latents, timesteps, context, sizes, cache):
    outs, start = [], 0
    for size in sizes:
        outs.append(model.forward_chunk(latents[:, :, start : start + size], timesteps[:, start : start + size], cache, context))
        start += size
    return torch.cat(outs, dim=2)


@torch.no_grad()
@pytest.mark.parametrize(
    ("sizes", "chunk_frames", "sink", "ring"),
    [
        ([1] * 7, 1, 3, 3),  # fills the default window exactly
        ([2] * 4, 2, 3, 3),  # chunks of 2 straddle the sinks
        ([2, 1, 1, 1, 1, 1], 2, 3, 3),  # the first chunk is 2 latent frames, then 1 (as the streaming VAE gives)
        ([1] * 5, 1, 0, 4),  # no sinks at all
    ],
)
def test_chunked_forward_equals_block_causal_inside_the_window(model, context, sizes, chunk_frames, sink, ring):
    latents, timesteps = _inputs(sum(sizes))
    cache = model.new_cache(2, H, W, sink_frames=sink, ring_frames=ring, chunk_frames=chunk_frames)
    chunked = _chunked(model, latents, timesteps, context, sizes, cache)
    reference = model.forward_block_causal(latents, timesteps, context, chunk_frames=sizes)
    assert reference.shape == latents.shape
    torch.testing.assert_close(chunked, reference, atol=ATOL, rtol=0)
    # the mask matters: the block-causal reference differs from full attention
    full = model.forward_block_causal(latents, timesteps, context, chunk_frames=sum(sizes))
    assert (full - reference).abs().max() > 1e-3


@torch.no_grad()
def test_one_chunk_equals_unmodified_diffusers_forward(model):
    latents, timesteps = _inputs(3)
    text = torch.randn(2, 5, model.text_dim, generator=torch.Generator().manual_seed(9))
    per_token = timesteps.repeat_interleave(model.tokens_per_frame(H, W), dim=1)
    expected = model.transformer(latents, per_token, text, return_dict=False)[0]
    context = model.encode_context(text)
    cache = model.new_cache(2, H, W, chunk_frames=3)
    torch.testing.assert_close(model.forward_chunk(latents, timesteps, cache, context), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        model.forward_block_causal(latents, timesteps, context, chunk_frames=3), expected, atol=ATOL, rtol=0
    )
    # one timestep per row (the plain diffusers call) is the same as equal per-frame timesteps
    scalar = model.transformer(latents, timesteps[:, 0], text, return_dict=False)[0]
    same = model.forward_block_causal(latents, timesteps[:, :1].expand(2, 3), context, chunk_frames=3)
    torch.testing.assert_close(same, scalar, atol=ATOL, rtol=0)


@torch.no_grad()
def test_fused_projections_give_the_same_output():
    model = tiny_causal_wan(seed=4)
    latents, timesteps = _inputs(2)
    text = torch.randn(2, 5, model.text_dim, generator=torch.Generator().manual_seed(2))
    before = model.forward_block_causal(latents, timesteps, model.encode_context(text))
    model.fuse_projections()
    after = model.forward_block_causal(latents, timesteps, model.encode_context(text))
    torch.testing.assert_close(after, before, atol=ATOL, rtol=0)


def _stream(model, context, inputs, timestep=600.0, **cache_options):
    cache = model.new_cache(1, H, W, **cache_options)
    t = torch.full((1, 1), timestep)
    return [model.forward_chunk(x, t, cache, context) for x in inputs], cache


@torch.no_grad()
def test_constant_stream_reaches_a_fixed_point_across_the_reference_reset(model, context):
    one_row = context.select([0])
    frame = _inputs(1, rows=1)[0]
    outputs, _ = _stream(model, one_row, [frame] * 80)
    # once the window (3 sinks + 3 ring) is full and its content settled, every chunk is the same,
    # including around frame 50 where the reference resets its positions
    for out in outputs[20:]:
        torch.testing.assert_close(out, outputs[20], atol=ATOL, rtol=0)
    assert (outputs[0] - outputs[20]).abs().max() > 1e-4  # the stream did evolve before that


@torch.no_grad()
def test_periodic_stream_repeats_exactly(model, context):
    one_row = context.select([1])
    period = [_inputs(1, rows=1, seed=s)[0] for s in range(4)]
    outputs, _ = _stream(model, one_row, [period[i % 4] for i in range(81)])
    torch.testing.assert_close(outputs[40], outputs[80], atol=ATOL, rtol=0)
    torch.testing.assert_close(outputs[44], outputs[48], atol=ATOL, rtol=0)
    assert (outputs[40] - outputs[41]).abs().max() > 1e-4


@torch.no_grad()
def test_cache_never_reallocates_over_a_long_stream(model, context):
    """500 chunks: far past the window and past frame 50, where the reference resets its positions."""
    cache = model.new_cache(1, H, W)
    pointers, nbytes = (cache.k.data_ptr(), cache.v.data_ptr()), cache.nbytes
    x, t = _inputs(1, rows=1)
    ctx = context.select([0])
    for _ in range(500):
        out = model.forward_chunk(x, t, cache, ctx)
    assert torch.isfinite(out).all()
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == pointers and cache.nbytes == nbytes
    assert cache.frames_written.tolist() == [500]


@torch.no_grad()
def test_write_false_rows_see_the_same_history_next_time(model, context):
    """A row that did not write behaves as if that chunk never happened (what sequential denoising relies on)."""
    latents, timesteps = _inputs(6)
    both = model.new_cache(2, H, W)
    for i in range(4):
        model.forward_chunk(latents[:, :, i : i + 1], timesteps[:, i : i + 1], both, context)
    probe = model.forward_chunk(
        latents[:, :, 4:5], timesteps[:, 4:5], both, context, write=torch.tensor([True, False])
    )
    assert both.frames_written.tolist() == [5, 4]
    again = model.forward_chunk(latents[:, :, 4:5], timesteps[:, 4:5], both, context, write=torch.tensor([False, False]))
    torch.testing.assert_close(again[1], probe[1], atol=ATOL, rtol=0)  # row 1's history did not change
    assert (again[0] - probe[0]).abs().max() > 1e-4  # row 0's did


@torch.no_grad()
def test_context_rows_blend_and_broadcast(model, context):
    assert isinstance(context, CrossAttentionContext) and context.rows == 2
    mixed = CrossAttentionContext.concat([context.select([1]), context.select([0])])
    torch.testing.assert_close(mixed.keys[:, 0], context.keys[:, 1])
    halfway = context.select([0]).lerp(context.select([1]), 0.5)
    torch.testing.assert_close(halfway.values, (context.values[:, :1] + context.values[:, 1:]) / 2)
    latents, timesteps = _inputs(2)
    broadcast = model.forward_block_causal(latents, timesteps, context.select([0]))
    explicit = model.forward_block_causal(latents, timesteps, context.select([0, 0]))
    torch.testing.assert_close(broadcast, explicit, atol=ATOL, rtol=0)


def test_wrong_shapes_are_input_errors(model, context):
    cache = model.new_cache(2, H, W)
    latents, timesteps = _inputs(1)
    with pytest.raises(InputError):
        model.forward_chunk(latents[:, :8], timesteps, cache, context)  # channels
    with pytest.raises(InputError):
        model.forward_chunk(latents, timesteps[:, :0], cache, context)  # timesteps
    with pytest.raises(InputError):
        model.forward_chunk(latents[:1], timesteps[:1], cache, context)  # rows != cache rows
    with pytest.raises(InputError):
        model.forward_chunk(torch.randn(2, 16, 1, 4, 4), timesteps, cache, context)  # other resolution
    with pytest.raises(InputError):
        model.forward_chunk(torch.randn(2, 16, 1, 7, 8), timesteps, cache, context)  # odd size
    with pytest.raises(InputError):
        model.forward_chunk(torch.randn(2, 16, 2, H, W), torch.zeros(2, 2), cache, context)  # chunk too long
    with pytest.raises(InputError):
        model.encode_context(torch.randn(1, 5, 31))


def test_real_architectures_build_on_meta():
    from streamgen.models.video.wan_build import build_dummy_causal_wan

    small = build_dummy_causal_wan("wan-1.3b", device="meta")
    assert (small.num_layers, small.num_heads, small.head_dim) == (30, 12, 128)
    assert 1.2e9 < sum(p.numel() for p in small.parameters()) < 1.6e9
    big = build_dummy_causal_wan("wan-14b", device="meta")
    assert (big.num_layers, big.num_heads) == (40, 40)
    assert 13e9 < sum(p.numel() for p in big.parameters()) < 15e9
    assert small.tokens_per_frame(512 // 8, 512 // 8) == 1024


@torch.no_grad()
def test_chunk_path_never_reads_tensor_values_on_the_host(model, context, monkeypatch):
    """No .item()/.tolist()/bool()/int() in forward_chunk: a prerequisite for CUDA-graph capture."""
    cache = model.new_cache(2, H, W, chunk_frames=2, adaptive_sink_threshold=0.2)
    latents, timesteps = _inputs(2)
    write = torch.tensor([True, False])
    model.forward_chunk(latents, timesteps, cache, context)  # warm-up outside the guard

    def host_read(*_args, **_kwargs):
        raise AssertionError("tensor value read on the host in the per-chunk path")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    for _ in range(5):
        model.forward_chunk(latents[:, :, :1], timesteps[:, :1], cache, context, write=write)


def _caches_with_history(model, context):
    """Three streams' caches: different geometries (sinks, ring, rows) and different amounts of history."""
    specs = [  # (rows, sink, ring, chunks already in the cache)
        (2, 3, 3, 9),  # past the window
        (1, 1, 2, 2),  # still inside it
        (3, 0, 4, 0),  # empty
    ]
    caches = []
    for seed, (rows, sink, ring, chunks) in enumerate(specs):
        cache = model.new_cache(rows, H, W, sink_frames=sink, ring_frames=ring)
        ctx = context.select([seed % 2]).expand(rows)
        for i in range(chunks):
            x, t = _inputs(1, rows=rows, seed=100 * seed + i)
            model.forward_chunk(x, t, cache, ctx)
        caches.append(cache)
    return caches


def _clone(cache):
    return cache.k.clone(), cache.v.clone(), cache.frames_written.clone()


@torch.no_grad()
def test_forward_chunks_equals_one_forward_per_cache(model, context):
    """Rows of three caches in one forward: each row attends to its own cache only, with its own prompt."""
    batched, solo = _caches_with_history(model, context), _caches_with_history(model, context)
    rows = [c.rows for c in batched]
    latents, timesteps = _inputs(1, rows=sum(rows), seed=7)
    prompt_of_row = [r % 2 for r in range(sum(rows))]
    write = torch.tensor([True, False])
    segments = [CacheSegment(batched[0], write), batched[1], CacheSegment(batched[2])]
    out = model.forward_chunks(latents, timesteps, segments, context.select(prompt_of_row))
    expected, start = [], 0
    for i, cache in enumerate(solo):
        rows_i = slice(start, start + cache.rows)
        expected.append(
            model.forward_chunk(
                latents[rows_i], timesteps[rows_i], cache, context.select(prompt_of_row[rows_i]), write=write if i == 0 else None
            )
        )
        start += cache.rows
    torch.testing.assert_close(out, torch.cat(expected), atol=ATOL, rtol=0)
    for a, b in zip(batched, solo):
        history = a.geometry.scratch_start
        torch.testing.assert_close(a.k[:, :, :history], b.k[:, :, :history], atol=ATOL, rtol=0)
        torch.testing.assert_close(a.v[:, :, :history], b.v[:, :, :history], atol=ATOL, rtol=0)
        assert torch.equal(a.frames_written, b.frames_written)
    assert batched[0].frames_written.tolist() == [10, 9]


@torch.no_grad()
def test_forward_chunks_commits_nothing_when_a_layer_fails(model, context, monkeypatch):
    caches = _caches_with_history(model, context)[:2]
    before = [_clone(c) for c in caches]
    latents, timesteps = _inputs(1, rows=3, seed=8)
    calls = {"n": 0}
    original = model._block

    def failing_block(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected fault in the second block")
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "_block", failing_block)
    with pytest.raises(RuntimeError, match="injected"):
        model.forward_chunks(latents, timesteps, caches, context.select([0]))
    for cache, (k, v, written) in zip(caches, before):
        history = cache.geometry.scratch_start
        assert torch.equal(cache.k[:, :, :history], k[:, :, :history]) and torch.equal(cache.v[:, :, :history], v[:, :, :history])
        assert torch.equal(cache.frames_written, written)


def test_forward_chunks_refuses_mismatched_segments(model, context):
    a, b = model.new_cache(2, H, W), model.new_cache(1, H, W)
    latents, timesteps = _inputs(1, rows=2)
    with pytest.raises(InputError, match="segments"):
        model.forward_chunks(latents, timesteps, [a, b], context)  # 2 rows, 3 cache rows
    with pytest.raises(InputError, match="tokens per frame"):
        model.forward_chunks(latents, timesteps, [b, model.new_cache(1, 4, 4)], context)
    with pytest.raises(InputError, match="at least one"):
        model.forward_chunks(latents, timesteps, [], context)


@torch.no_grad()
def test_forward_chunks_never_reads_tensor_values_on_the_host(model, context, monkeypatch):
    caches = [model.new_cache(2, H, W, chunk_frames=2, adaptive_sink_threshold=0.2), model.new_cache(1, H, W, sink_frames=1)]
    latents, timesteps = _inputs(1, rows=3)
    model.forward_chunks(latents, timesteps, caches, context.select([0]))  # warm-up outside the guard

    def host_read(*_args, **_kwargs):
        raise AssertionError("tensor value read on the host in the per-chunk path")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    for _ in range(3):
        model.forward_chunks(latents, timesteps, [CacheSegment(caches[0], torch.tensor([True, False])), caches[1]], context.select([0]))
