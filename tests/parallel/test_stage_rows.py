"""How ready rows become a micro-batch: one shape, one row per cache row, and nothing overtakes a row of its own cache row."""

from __future__ import annotations

from collections import deque

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamgen.parallel.handles import ShardedContext, ShardedKVCache
from streamgen.parallel.rows import StageRow, take_micro_batch


class _Driver:
    """What handles need from a driver when nothing is sent: a place to report frees."""

    def release(self, op: str, object_id: int) -> None:
        pass


DRIVER = _Driver()
CONTEXT = ShardedContext(DRIVER, 1, 2)
CACHES = {cache_id: ShardedKVCache(DRIVER, cache_id, 0, 4) for cache_id in range(3)}


def _row(cache_id: int, step: int, height: int, label: int) -> StageRow:
    latents = torch.full((1, 2, 1, height, 4), float(label))
    return StageRow(latents, torch.zeros(1, 1), CACHES[cache_id].row_view(step, step + 1), CONTEXT, lambda _: None)


rows_strategy = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.sampled_from([4, 8])), max_size=12)


@settings(max_examples=200, deadline=None)
@given(rows_strategy, st.one_of(st.none(), st.integers(1, 4)))
def test_a_micro_batch_keeps_the_order_that_matters(specs, max_rows) -> None:
    rows = [_row(c, s, h, i) for i, (c, s, h) in enumerate(specs)]
    ready = deque(rows)
    batch = take_micro_batch(ready, max_rows)
    rest = list(ready)
    if not rows:
        assert batch == [] and rest == []
        return
    assert batch[0] is rows[0]  # the oldest row always goes
    assert sorted(map(id, batch + rest)) == sorted(map(id, rows))  # nothing lost, nothing doubled
    order = {id(r): i for i, r in enumerate(rows)}
    assert [order[id(r)] for r in batch] == sorted(order[id(r)] for r in batch)  # both keep submission order
    assert [order[id(r)] for r in rest] == sorted(order[id(r)] for r in rest)
    assert len({r.shape for r in batch}) == 1  # one forward, one shape
    assert len({r.cache_row for r in batch}) == len(batch)  # a cache row at most once: the later row must see the earlier's commit
    assert max_rows is None or len(batch) <= max_rows
    for row in batch:  # no row overtakes a waiting row of its own cache row
        assert not any(order[id(w)] < order[id(row)] and w.cache_row == row.cache_row for w in rest)
    # greedy: a waiting row is there for a reason
    for waiting in rest:
        earlier_same = any(order[id(w)] < order[id(waiting)] and w.cache_row == waiting.cache_row for w in rows if w is not waiting)
        blocked = waiting.shape != batch[0].shape or earlier_same or (max_rows is not None and len(batch) == max_rows)
        assert blocked or any(r.cache_row == waiting.cache_row for r in batch)


def test_a_stage_row_is_one_chunk_at_one_step() -> None:
    import pytest

    with pytest.raises(ValueError, match="one chunk at one step"):
        StageRow(torch.zeros(2, 2, 1, 4, 4), torch.zeros(2, 1), CACHES[0].row_view(0, 1), CONTEXT, lambda _: None)
    with pytest.raises(ValueError, match="one chunk at one step"):
        StageRow(torch.zeros(1, 2, 1, 4, 4), torch.zeros(1, 1), CACHES[0].row_view(0, 2), CONTEXT, lambda _: None)
