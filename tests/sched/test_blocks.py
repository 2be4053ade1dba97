"""The block split policy: valid splits, the balanced split (exact, against brute force), and hysteresis."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamgen.sched.blocks import (
    BlockBalancer,
    BlockMove,
    BlockSplit,
    RebalanceConfig,
    StageTiming,
    balanced_split,
    bottleneck,
    stage_times,
)


def _timings(per_block, fixed=None, send=None, split=None):
    """Timings of a window run under ``split`` (default: even) with these per-block, fixed and send seconds."""
    stages = len(per_block)
    fixed = fixed or [0.0] * stages
    send = send or [0.0] * stages
    split = split or BlockSplit.even(30, stages)
    return [StageTiming(s, n, n * per_block[s], fixed[s], send[s]) for s, n in enumerate(split.sizes)]


def _all_splits(num_blocks, stages):
    for cuts in itertools.combinations(range(1, num_blocks), stages - 1):
        yield BlockSplit((0, *cuts, num_blocks))


# -------------------------------------------------------------------- BlockSplit
def test_a_split_knows_its_stages_blocks_and_owners():
    split = BlockSplit((0, 7, 15, 23, 30))
    assert (split.stages, split.num_blocks, split.sizes) == (4, 30, (7, 8, 8, 7))
    assert split.blocks_of(1) == range(7, 15)
    assert [split.owner(b) for b in (0, 6, 7, 14, 15, 29)] == [0, 0, 1, 1, 2, 3]
    assert str(split) == "7/8/8/7"
    with pytest.raises(ValueError, match="stage 4"):
        split.blocks_of(4)
    with pytest.raises(ValueError, match="block 30"):
        split.owner(30)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0,15,30", "JSON list"),
        ({"bounds": [0, 30]}, "JSON list"),
        ([0], "at least 2"),
        ([1, 30], "starts at block 0"),
        ([0, 15, 15, 30], "stage 1 .* runs no block"),
        ([0, 20, 10], "stage 1 .* runs no block"),
        ([0, 15.0, 30], "integers"),
        ([0, True, 30], "integers"),
    ],
)
def test_from_json_says_what_is_wrong(value, message):
    with pytest.raises(ValueError, match=message):
        BlockSplit.from_json(value)


def test_json_round_trip():
    split = BlockSplit.even(40, 8)
    assert split.to_json() == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    assert BlockSplit.from_json(split.to_json()) == split


@pytest.mark.parametrize(
    ("blocks", "stages", "sizes"),
    [
        (30, 1, (30,)),
        (30, 2, (15, 15)),
        (31, 2, (16, 15)),  # no middle rank: rank 0 (encode) before the last (decode)
        (30, 4, (7, 8, 8, 7)),  # extras to the middle ranks
        (40, 8, (5,) * 8),
        (30, 8, (3, 4, 4, 4, 4, 4, 4, 3)),
        (30, 7, (4, 5, 5, 4, 4, 4, 4)),  # fewer extras than middle ranks: from rank 1 up
        (35, 4, (9, 9, 9, 8)),  # more extras than middle ranks: then rank 0
        (3, 3, (1, 1, 1)),
    ],
)
def test_even_split_gives_extra_blocks_to_the_middle_ranks_first(blocks, stages, sizes):
    split = BlockSplit.even(blocks, stages)
    assert split.sizes == sizes
    assert max(sizes) - min(sizes) <= 1


def test_even_split_needs_a_block_per_stage():
    with pytest.raises(ValueError, match="2 blocks cannot be split over 3 stages"):
        BlockSplit.even(2, 3)


@st.composite
def splits(draw, num_blocks=None):
    n = num_blocks if num_blocks is not None else draw(st.integers(1, 40))
    stages = draw(st.integers(1, n))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), min_size=stages - 1, max_size=stages - 1))) if n > 1 else []
    return BlockSplit((0, *cuts, n))


@given(st.data())
def test_every_block_has_exactly_one_owner_and_moves_lead_from_one_split_to_the_other(data):
    old = data.draw(splits())
    new = data.draw(splits(num_blocks=old.num_blocks))
    for stage in range(old.stages):
        assert all(old.owner(b) == stage for b in old.blocks_of(stage))
    assert sorted(b for s in range(old.stages) for b in old.blocks_of(s)) == list(range(old.num_blocks))
    moves = old.moves_to(new)
    assert [m.block for m in moves] == sorted({m.block for m in moves})
    owners = [old.owner(b) for b in range(old.num_blocks)]
    for move in moves:
        assert owners[move.block] == move.source != move.target
        owners[move.block] = move.target
    assert owners == [new.owner(b) for b in range(new.num_blocks)]
    assert old.moves_to(old) == ()


def test_moves_between_splits():
    assert BlockSplit((0, 7, 15, 23, 30)).moves_to(BlockSplit((0, 6, 15, 24, 30))) == (BlockMove(6, 0, 1), BlockMove(23, 3, 2))
    with pytest.raises(ValueError, match="30-block split to a 40-block"):
        BlockSplit.even(30, 2).moves_to(BlockSplit.even(40, 2))


# ------------------------------------------------------------- the balanced split
def test_uniform_stages_get_the_even_split():
    timings = _timings([0.01] * 4)
    assert balanced_split(timings, 30) == BlockSplit.even(30, 4)


def test_fixed_work_at_the_ends_takes_blocks_away_from_them():
    # 30 blocks of 1 ms; rank 0 encodes for 4 ms, the last rank decodes for 8 ms: 42 ms over 4 stages.
    timings = _timings([0.001] * 4, fixed=[0.004, 0, 0, 0.008])
    split = balanced_split(timings, 30)
    # Bottleneck 11 ms (10.5 would be ideal); stage times 10, 10, 11, 11 in some order tie on total and spread,
    # and of those splits this one is closest to the even 7/8/8/7.
    assert split.sizes == (6, 10, 11, 3)
    assert stage_times(split, timings) == pytest.approx((0.010, 0.010, 0.011, 0.011))


def test_a_slower_device_gets_fewer_blocks():
    timings = _timings([0.001, 0.002, 0.001])  # stage 1 runs each block twice as slowly
    split = balanced_split(timings, 30)
    assert split.sizes == (12, 6, 12)
    assert bottleneck(split, timings) == pytest.approx(0.012)


def test_exposed_send_time_counts_like_fixed_work():
    timings = _timings([0.001] * 2, send=[0.004, 0.0])
    assert balanced_split(timings, 30).sizes == (13, 17)


def test_the_answer_does_not_depend_on_the_order_of_the_timings():
    timings = _timings([0.0011, 0.0009, 0.001, 0.0012], fixed=[0.003, 0, 0, 0.006])
    assert balanced_split(timings, 30) == balanced_split(list(reversed(timings)), 30)
    assert balanced_split(timings, 30) == balanced_split(timings, 30)


def test_invalid_timings_are_refused():
    with pytest.raises(ValueError, match="stages 0..3"):
        balanced_split(_timings([0.001] * 4)[:3] + [StageTiming(4, 1, 0.001)], 30)
    with pytest.raises(ValueError, match=r"got stages \[0, 0\]"):
        balanced_split([StageTiming(0, 1, 0.001), StageTiming(0, 1, 0.001)], 30)
    with pytest.raises(ValueError, match="3 blocks cannot be split over 4"):
        balanced_split(_timings([0.001] * 4), 3)
    with pytest.raises(ValueError, match="block_seconds"):
        StageTiming(0, 3, float("nan"))
    with pytest.raises(ValueError, match="at least one block"):
        StageTiming(0, 0, 0.1)
    with pytest.raises(ValueError, match="send_seconds"):
        StageTiming(0, 1, 0.1, send_seconds=-1)
    with pytest.raises(ValueError, match="prefer"):
        balanced_split(_timings([0.001] * 4), 30, prefer=BlockSplit.even(30, 3))


stage_costs = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 20), st.integers(0, 5)),  # (fixed, per block, send) in units of 0.5 ms
    min_size=1,
    max_size=4,
)


def _unit_timings(costs):
    return [StageTiming(s, 1, b * 5e-4, f * 5e-4, x * 5e-4) for s, (f, b, x) in enumerate(costs)]


@settings(max_examples=150, deadline=None)
@given(stage_costs, st.integers(1, 10), st.data())
def test_balanced_split_is_optimal_against_brute_force(costs, num_blocks, data):
    if num_blocks < len(costs):
        num_blocks = len(costs)
    timings = _unit_timings(costs)
    every = list(_all_splits(num_blocks, len(costs)))
    best = min(bottleneck(s, timings) for s in every)
    split = balanced_split(timings, num_blocks)
    assert bottleneck(split, timings) == pytest.approx(best, abs=1e-12)
    # Preferring a split: among the optimal ones, the fewest blocks move (none, if the preferred one is optimal).
    prefer = data.draw(st.sampled_from(every))
    kept = balanced_split(timings, num_blocks, prefer=prefer)
    assert bottleneck(kept, timings) == pytest.approx(best, abs=1e-12)
    fewest = min(len(prefer.moves_to(s)) for s in every if bottleneck(s, timings) <= best + 1e-12)
    assert len(prefer.moves_to(kept)) == fewest
    if bottleneck(prefer, timings) <= best + 1e-12:
        assert kept == prefer


@settings(max_examples=60, deadline=None)
@given(stage_costs, st.integers(1, 10))
def test_among_optimal_splits_the_total_then_the_spread_is_smallest(costs, num_blocks):
    num_blocks = max(num_blocks, len(costs))
    timings = _unit_timings(costs)
    every = list(_all_splits(num_blocks, len(costs)))
    best = min(bottleneck(s, timings) for s in every)
    optimal = [s for s in every if bottleneck(s, timings) <= best + 1e-12]
    split = balanced_split(timings, num_blocks)
    least_total = min(sum(stage_times(s, timings)) for s in optimal)
    assert sum(stage_times(split, timings)) == pytest.approx(least_total, abs=1e-12)
    tied = [s for s in optimal if sum(stage_times(s, timings)) <= least_total + 1e-12]
    least_squares = min(sum(t * t for t in stage_times(s, timings)) for s in tied)
    assert sum(t * t for t in stage_times(split, timings)) == pytest.approx(least_squares, rel=1e-9, abs=1e-15)


# --------------------------------------------------------------------- hysteresis
TRUE_PER_BLOCK = [0.001] * 4
TRUE_FIXED = [0.004, 0.0, 0.0, 0.008]


def _noisy(split, rng, per_block=TRUE_PER_BLOCK, fixed=TRUE_FIXED, noise=0.05):
    """One window's measurements of ``split``: every stage's times off by up to ±noise (relative), independently."""
    jitter = lambda: 1 + rng.uniform(-noise, noise)  # noqa: E731
    return [StageTiming(s, n, n * per_block[s] * jitter(), fixed[s] * jitter()) for s, n in enumerate(split.sizes)]


def _run(balancer, windows, rng, **kwargs):
    changes = []
    for window in range(windows):
        new = balancer.observe(_noisy(balancer.split, rng, **kwargs))
        if new is not None:
            changes.append((window, new))
    return changes


def test_an_imbalanced_pipeline_is_rebalanced_once_and_stays_put():
    balancer = BlockBalancer(BlockSplit.even(30, 4))  # 7/8/8/7: the decoding rank's 15 ms is the bottleneck
    changes = _run(balancer, 1000, random.Random(1))
    assert len(changes) == 1
    window, split = changes[0]
    assert window == 2  # the third window in a row that agreed
    truth = _timings(TRUE_PER_BLOCK, TRUE_FIXED)
    assert bottleneck(split, truth) == pytest.approx(bottleneck(balanced_split(truth, 30), truth))  # 15 ms → 11 ms
    assert balancer.state.changes == 1 and balancer.state.windows == 1000


@pytest.mark.parametrize("seed", range(3))
def test_noise_alone_never_moves_a_balanced_split(seed):
    rng = random.Random(seed)
    start = balanced_split(_timings(TRUE_PER_BLOCK, TRUE_FIXED), 30)
    balancer = BlockBalancer(start)
    assert _run(balancer, 1000, rng, noise=0.08) == []
    assert balancer.split == start


@pytest.mark.parametrize("seed", range(3))
def test_heavy_noise_does_not_flap(seed):
    """±30% per stage and window: windows rarely agree, so a move comes late or not at all, and a change
    never leads back to a split already left."""
    balancer = BlockBalancer(BlockSplit.even(30, 4))
    seen = [balancer.split]
    for _, split in _run(balancer, 1000, random.Random(seed), noise=0.30):
        assert split not in seen
        seen.append(split)
    assert len(seen) - 1 <= 2


def test_a_gain_below_min_gain_is_not_worth_a_move():
    # Even split 7/8/8/7 with a 0.5 ms decode: the best split (8/8/8/6 → 8.0 ms vs 8.5 ms) gains only 6%.
    timings = _timings([0.001] * 4, fixed=[0, 0, 0, 0.0015])
    assert bottleneck(balanced_split(timings, 30), timings) < bottleneck(BlockSplit.even(30, 4), timings)
    balancer = BlockBalancer(BlockSplit.even(30, 4))
    assert all(balancer.observe(timings) is None for _ in range(50))
    assert 0 < balancer.state.predicted_gain < 0.10
    eager = BlockBalancer(BlockSplit.even(30, 4), RebalanceConfig(min_gain=0.05))
    assert [eager.observe(timings) for _ in range(3)][-1] is not None


def test_min_gain_seconds_ignores_small_absolute_gains():
    timings = _timings([0.001] * 4, fixed=[0, 0, 0, 0.008])  # 15 ms → 10 ms: 33% but only 5 ms
    strict = BlockBalancer(BlockSplit.even(30, 4), RebalanceConfig(min_gain_seconds=0.006))
    assert all(strict.observe(timings) is None for _ in range(20))
    lenient = BlockBalancer(BlockSplit.even(30, 4), RebalanceConfig(min_gain_seconds=0.004))
    assert [lenient.observe(timings) for _ in range(3)][-1] is not None


def test_a_change_waits_for_settle_windows_in_a_row_and_then_a_cooldown():
    config = RebalanceConfig(settle_windows=4, cooldown_windows=6)
    balancer = BlockBalancer(BlockSplit.even(30, 4), config)
    skewed = _timings([0.001] * 4, fixed=[0, 0, 0, 0.008])
    decisions = [balancer.observe(skewed) for _ in range(4)]
    assert decisions[:3] == [None] * 3 and decisions[3] is not None
    first = decisions[3]
    # Now stage 1's device slows down 3x: the split must change again, but only after the cooldown and a settle.
    slow = _timings([0.001, 0.003, 0.001, 0.001], fixed=[0, 0, 0, 0.008], split=first)
    later = [balancer.observe(slow) for _ in range(6 + 4)]
    assert later[:9] == [None] * 9 and later[9] is not None
    assert later[9].sizes[1] < first.sizes[1]
    assert all(m.source == 1 or m.target != 1 for m in first.moves_to(later[9]))  # blocks leave the slow stage


def test_a_streak_restarts_when_windows_disagree():
    skew_last = _timings([0.001] * 4, fixed=[0, 0, 0, 0.008])
    skew_first = _timings([0.001] * 4, fixed=[0.008, 0, 0, 0])
    balancer = BlockBalancer(BlockSplit.even(30, 4))
    decisions = [balancer.observe(t) for t in [skew_last, skew_last, skew_first, skew_first, skew_last, skew_last]]
    assert decisions == [None] * 6
    assert balancer.state.streak == 2
    assert balancer.observe(skew_last) is not None


def test_near_equal_proposals_keep_the_first_candidate():
    """Two windows whose best splits differ but are equally good for both: the streak goes on, the first one wins."""
    config = RebalanceConfig(same_gain_tolerance=0.05)
    a = _timings([0.001, 0.00102, 0.001, 0.001], fixed=[0, 0, 0, 0.008])
    b = _timings([0.001, 0.001, 0.00102, 0.001], fixed=[0, 0, 0, 0.008])
    start = BlockSplit.even(30, 4)
    assert balanced_split(a, 30, prefer=start) != balanced_split(b, 30, prefer=start)
    balancer = BlockBalancer(start, config)
    assert [balancer.observe(t) for t in (a, b)] == [None, None]
    assert balancer.observe(a) == balanced_split(a, 30, prefer=start)
    strict = BlockBalancer(start, RebalanceConfig(same_gain_tolerance=0.0))
    assert [strict.observe(t) for t in (a, b, a)] == [None, None, None]


def test_identical_inputs_give_identical_decisions():
    def decisions(seed):
        rng = random.Random(seed)
        balancer = BlockBalancer(BlockSplit.even(30, 4), RebalanceConfig(cooldown_windows=2))
        per_block = [0.001, 0.001, 0.001, 0.001]
        out = []
        for window in range(400):
            if window == 200:
                per_block = [0.001, 0.0025, 0.001, 0.001]
            out.append(balancer.observe(_noisy(balancer.split, rng, per_block=per_block, noise=0.15)))
        return out

    assert decisions(7) == decisions(7)
    assert any(d is not None for d in decisions(7))


def test_adopt_replaces_the_split_and_starts_a_cooldown():
    config = RebalanceConfig(settle_windows=1, cooldown_windows=2)
    balancer = BlockBalancer(BlockSplit.even(30, 4), config)
    skewed = _timings([0.001] * 4, fixed=[0, 0, 0, 0.008])
    balancer.adopt(BlockSplit.even(30, 4))  # e.g. a move failed and the old split runs on
    decisions = [balancer.observe(skewed) for _ in range(3)]
    assert decisions[:2] == [None, None] and decisions[2] is not None
    with pytest.raises(ValueError, match="cannot replace"):
        balancer.adopt(BlockSplit.even(30, 3))


def test_observe_refuses_timings_of_another_pipeline():
    balancer = BlockBalancer(BlockSplit.even(30, 4))
    with pytest.raises(ValueError, match="stages 0..3"):
        balancer.observe(_timings([0.001] * 3, split=BlockSplit.even(30, 3)))


def test_rebalance_config_is_validated():
    for bad in ({"min_gain": 1.0}, {"min_gain": -0.1}, {"settle_windows": 0}, {"cooldown_windows": -1}, {"min_gain_seconds": float("inf")}):
        with pytest.raises(ValueError):
            RebalanceConfig(**bad)
