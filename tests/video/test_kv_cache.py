"""RollingKVCache: sinks kept, ring overwritten in place, window-relative positions, adaptive sinks, row writes."""

from __future__ import annotations

import pytest
import torch

from streamgen.errors import ConfigError, InputError
from streamgen.models.video.kv_cache import CommitJournal, RollingKVCache

TPF = 2  # tokens per frame
HEADS, HEAD_DIM = 1, 4


def _cache(rows=1, sink=3, ring=3, chunk=1, layers=2, threshold=None) -> RollingKVCache:
    return RollingKVCache.allocate(
        layers, rows, TPF, HEADS, HEAD_DIM, sink, ring, chunk, adaptive_sink_threshold=threshold
    )


def _push(cache: RollingKVCache, frames: int, value_of_frame, write=None):
    """Store a chunk whose K/V hold a recognisable value per frame (e.g. the frame index), then commit."""
    layout = cache.plan(frames, write)
    rows = cache.rows
    for layer in range(cache.num_layers):
        k = torch.stack(
            [torch.stack([value_of_frame(layer, r, int(layout.query_frames[r, j])) for j in range(frames)]) for r in range(rows)]
        )  # (R, frames, H*D)
        k = k[:, :, None, :].expand(rows, frames, TPF, HEADS * HEAD_DIM).reshape(rows, frames * TPF, HEADS, HEAD_DIM)
        cache.store(layer, layout, k, -k)
    cache.commit(layout)
    return layout


def _frame_value(layer, row, frame):
    return torch.full((HEADS * HEAD_DIM,), float(frame + 1000 * row + 100000 * layer))


def _slot_values(cache, layer=0, row=0):
    """The value of each frame slot (sinks, ring, scratch) of the K buffer."""
    return cache.keys(layer)[row].reshape(cache.geometry.slots, TPF, -1)[:, 0, 0].tolist()


def test_positions_are_absolute_inside_the_window_and_stop_growing_after():
    cache = _cache(sink=3, ring=3)
    for n in range(12):
        layout = _push(cache, 1, _frame_value)
        query = int(layout.query_positions[0, 0])
        assert query == min(n, 6)
        valid = layout.key_valid[0].tolist()
        positions = layout.key_positions[0].tolist()
        visible = sorted(p for p, v in zip(positions, valid) if v)
        # sinks, ring and the chunk form one gap-free run of positions ending at the query's
        assert visible == list(range(min(n, 6) + 1))


def test_sinks_retained_and_ring_in_order_after_many_evictions():
    cache = _cache(sink=3, ring=3)
    for _ in range(500):
        _push(cache, 1, _frame_value)
    values = _slot_values(cache)
    assert values[:3] == [0.0, 1.0, 2.0]  # sinks: the first frames of the stream
    # ring slot (f - 3) % 3 holds frame f for the last three frames 497, 498, 499
    assert values[3:6] == [float(f) for f in sorted(range(497, 500), key=lambda f: (f - 3) % 3)]
    assert cache.frames_written.tolist() == [500]
    layout = cache.plan(1)
    pos = dict(zip(range(9), layout.key_positions[0].tolist()))
    valid = layout.key_valid[0].tolist()
    by_frame = {int(values[s]): pos[s] for s in range(3, 6)}
    assert by_frame == {497: 3, 498: 4, 499: 5}  # ring by recency
    assert [pos[s] for s in range(3)] == [0, 1, 2] and all(valid[:7])
    assert int(layout.query_positions[0, 0]) == 6
    window = 6 * TPF
    assert torch.equal(cache.values(0)[0, :window], -cache.keys(0)[0, :window])  # V travels with K


def test_memory_and_work_constant_over_500_chunks():
    cache = _cache(rows=2, sink=3, ring=3, chunk=2)
    pointers = (cache.k.data_ptr(), cache.v.data_ptr(), cache.frames_written.data_ptr())
    nbytes = cache.nbytes
    attended = []
    for i in range(500):
        layout = _push(cache, 2 if i == 0 else 1, _frame_value)
        attended.append(int(layout.attention_mask.sum()) // cache.rows)
        assert layout.attention_mask.shape[-1] == cache.capacity_tokens
    assert (cache.k.data_ptr(), cache.v.data_ptr(), cache.frames_written.data_ptr()) == pointers
    assert cache.nbytes == nbytes
    assert attended[0] == 2 * TPF
    assert set(attended[6:]) == {(3 + 3 + 1) * TPF}  # sinks + ring + the chunk, forever


def test_chunk_straddling_the_sinks_goes_to_sink_and_ring():
    cache = _cache(sink=3, ring=2, chunk=2)
    _push(cache, 2, _frame_value)  # frames 0, 1 -> sinks 0, 1
    _push(cache, 2, _frame_value)  # frames 2, 3 -> sink 2, ring 0
    _push(cache, 2, _frame_value)  # frames 4, 5 -> ring 1, ring 0
    values = _slot_values(cache)
    assert values[:5] == [0.0, 1.0, 2.0, 5.0, 4.0]
    layout = cache.plan(2)
    assert layout.query_frames[0].tolist() == [6, 7]
    assert layout.query_positions[0].tolist() == [5, 6]  # shift = 6 - 3 - 2
    assert layout.key_positions[0, :5].tolist() == [0, 1, 2, 4, 3]


def test_rows_with_write_false_keep_their_history():
    cache = _cache(rows=3, sink=2, ring=2)
    for _ in range(3):
        _push(cache, 1, _frame_value)
    history = cache.geometry.scratch_start
    before_k = cache.k[:, :, :history].clone()
    before_v = cache.v[:, :, :history].clone()
    write = torch.tensor([True, False, True])
    _push(cache, 1, lambda layer, row, frame: torch.full((HEADS * HEAD_DIM,), -7.0), write=write)
    assert cache.frames_written.tolist() == [4, 3, 4]
    assert torch.equal(cache.k[:, 1, :history], before_k[:, 1])
    assert torch.equal(cache.v[:, 1, :history], before_v[:, 1])
    assert not torch.equal(cache.k[:, 0, :history], before_k[:, 0])


def test_reset_by_mask_and_by_index():
    cache = _cache(rows=3)
    for _ in range(4):
        _push(cache, 1, _frame_value)
    cache.reset(torch.tensor([False, True, False]))
    assert cache.frames_written.tolist() == [4, 0, 4]
    cache.reset([2])
    assert cache.frames_written.tolist() == [4, 0, 0]
    cache.reset()
    assert cache.frames_written.tolist() == [0, 0, 0]
    assert cache.plan(1).key_valid[:, :-1].sum() == 0  # nothing from before is visible


def _direction(index: int, extra: dict[int, float] | None = None) -> torch.Tensor:
    vector = torch.zeros(HEADS * HEAD_DIM)
    vector[index] = 1.0
    for i, w in (extra or {}).items():
        vector[i] = w
    return vector


def test_adaptive_sink_replaces_least_similar_sink_below_threshold_only():
    cache = _cache(sink=3, ring=2, layers=2, threshold=0.2)
    sinks = [_direction(0), _direction(1), _direction(2)]
    for f in range(3):
        _push(cache, 1, lambda layer, row, frame, f=f: sinks[f])
    # Layer 0: a new scene (similarities 0.1, 0.05, 0 -> all below 0.2) replaces the least similar sink (2).
    # Layer 1: a frame close to sink 0 (similarity ~0.99) replaces nothing.
    scene = _direction(3, {0: 0.1, 1: 0.05})
    close = _direction(0, {3: 0.1})
    _push(cache, 1, lambda layer, row, frame: scene if layer == 0 else close)
    sink_k = cache.k[:, 0, : 3 * TPF].reshape(2, 3, TPF, -1)[:, :, 0]
    assert torch.equal(sink_k[0, 0], sinks[0]) and torch.equal(sink_k[0, 1], sinks[1])
    assert torch.equal(sink_k[0, 2], scene)
    assert torch.equal(cache.v[0, 0, 2 * TPF], -scene.view(HEADS, HEAD_DIM))
    assert all(torch.equal(sink_k[1, s], sinks[s]) for s in range(3))


def test_adaptive_sink_ignores_rows_that_do_not_write_and_the_sink_phase():
    cache = _cache(rows=2, sink=2, ring=2, layers=1, threshold=0.5)
    _push(cache, 1, lambda layer, row, frame: _direction(0))
    _push(cache, 1, lambda layer, row, frame: _direction(1))  # sink phase: orthogonal, still just a sink
    before = cache.k[:, :, : 2 * TPF].clone()
    _push(cache, 1, lambda layer, row, frame: _direction(2), write=torch.tensor([False, True]))
    assert torch.equal(cache.k[:, 0, : 2 * TPF], before[:, 0])
    assert not torch.equal(cache.k[:, 1, : 2 * TPF], before[:, 1])


def test_invalid_geometry_and_chunks_are_rejected():
    with pytest.raises(ConfigError):
        _cache(ring=0)
    with pytest.raises(ConfigError):
        _cache(sink=0, threshold=0.2)
    cache = _cache(rows=2, chunk=1)
    with pytest.raises(InputError):
        cache.plan(2)
    with pytest.raises(InputError):
        cache.plan(1, torch.ones(3, dtype=torch.bool))


def _history(cache):
    """Everything but the scratch slots (which hold nothing between chunks)."""
    end = cache.geometry.scratch_start
    return cache.k[:, :, :end].clone(), cache.v[:, :, :end].clone(), cache.frames_written.clone()


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_journal_undoes_commits_newest_first_through_row_views(threshold):
    cache = _cache(rows=2, sink=2, ring=2, threshold=threshold)
    for _ in range(3):
        _push(cache, 1, _frame_value)
    before = _history(cache)
    journal = CommitJournal()
    cache.journal = journal
    # five more chunks wrap the ring twice (the same slots overwritten again); some through a row view
    for i in range(5):
        target = cache.row_view(1, 2) if i % 2 else cache
        _push(target, 1, lambda layer, row, frame, i=i: _direction(i % 4) * (frame + 1))
    assert len(journal) == 5 and cache.frames_written.tolist() == [6, 8]
    journal.undo()
    after = _history(cache)
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert len(journal) == 0
    journal.close()
    _push(cache, 1, _frame_value)  # a closed journal records nothing
    assert len(journal) == 0
    with pytest.raises(RuntimeError, match="closed"):
        journal.undo()


def test_row_view_shares_storage_and_checks_bounds():
    cache = _cache(rows=3)
    view = cache.row_view(1, 3)
    assert view.rows == 2 and view.k.data_ptr() == cache.k[:, 1].data_ptr()
    assert cache.row_view(0, 3) is cache
    with pytest.raises(InputError):
        cache.row_view(2, 4)
