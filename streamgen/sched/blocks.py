"""Which DiT blocks each pipeline stage runs, and when to change that.

A causal video DiT is a chain of identical blocks (Wan-1.3B: 30, Wan-14B:
40). Pipelined over S ranks, each rank runs a contiguous range of them;
rank 0 also encodes (VAE encode, patch and time embedding) and the last rank
also decodes (head, VAE decode), so the two ends carry fixed work the
middle ranks do not. With as many micro-batches in flight as stages, the
pipeline delivers one micro-batch per *slowest stage time*: throughput is
set by the bottleneck stage, and a split is better when its slowest stage
is faster. The ranks need not be alike (another process on one GPU, a
slower link, a different device), so each stage's cost per block is
measured, not assumed.

- :class:`BlockSplit`: the split (stage boundaries) and which blocks change
  owner when it changes (their weights and KV cache move with them);
- :func:`balanced_split`: the best split for measured stage timings, exact;
- :class:`BlockBalancer`: the stateful policy that decides when a better
  split is worth the move (hysteresis: a minimum gain, agreement over
  several windows, a cooldown after each change).

Pure policy: no torch, no clock of its own. Time passes as observation
windows, one :meth:`BlockBalancer.observe` call each.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Stage costs are compared in whole nanoseconds: two splits whose stage times agree to the
# nanosecond tie, so tie-breaking is exact and the same on every machine (no float-rounding luck).
_NS_PER_S = 1_000_000_000


# --------------------------------------------------------------------- the split
@dataclass(frozen=True)
class BlockMove:
    """Block ``block`` changes owner from stage ``source`` to stage ``target``."""

    block: int
    source: int
    target: int


@dataclass(frozen=True)
class BlockSplit:
    """Contiguous block ranges, one per stage: stage s runs blocks ``bounds[s]`` up to ``bounds[s + 1]``.

    ``bounds`` has one entry more than there are stages, starts at 0, ends at
    the number of blocks and increases strictly (every stage runs at least one
    block). An invalid split raises ValueError saying what is wrong.
    """

    bounds: tuple[int, ...]

    def __post_init__(self) -> None:
        bounds = self.bounds
        if not isinstance(bounds, (tuple, list)):
            raise ValueError(f"a block split is a list of stage boundaries like [0, 15, 30], got {_short(bounds)}")
        if any(isinstance(b, bool) or not isinstance(b, int) for b in bounds):
            raise ValueError(f"block split boundaries must be integers, got {_short(list(bounds))}")
        if len(bounds) < 2:
            raise ValueError(f"a block split needs at least 2 boundaries (one stage), got {list(bounds)}")
        if bounds[0] != 0:
            raise ValueError(f"a block split starts at block 0, got {list(bounds)}")
        for stage, (start, end) in enumerate(zip(bounds, bounds[1:])):
            if end <= start:
                raise ValueError(f"stage {stage} of block split {list(bounds)} runs no block (boundaries must increase strictly)")
        object.__setattr__(self, "bounds", tuple(bounds))

    @classmethod
    def even(cls, num_blocks: int, stages: int) -> BlockSplit:
        """Stage sizes that differ by at most one block; the extra blocks go to the middle stages first.

        Rank 0 and the last rank carry the VAE and the embeddings/head besides
        their blocks, so the middle ranks take the remainder first (from rank 1
        up); only when there are more extra blocks than middle ranks does rank 0
        take one too (the decoder on the last rank is the heavier end).
        """
        _check_counts(num_blocks, stages)
        base, extra = divmod(num_blocks, stages)
        order = list(range(1, stages - 1)) + [0] + ([stages - 1] if stages > 1 else [])
        sizes = [base] * stages
        for stage in order[:extra]:
            sizes[stage] += 1
        return cls.from_sizes(sizes)

    @classmethod
    def from_sizes(cls, sizes: Sequence[int]) -> BlockSplit:
        """The split whose stages run ``sizes[s]`` blocks each, in order."""
        bounds = [0]
        for size in sizes:
            bounds.append(bounds[-1] + size)
        return cls(tuple(bounds))

    @classmethod
    def from_json(cls, value: Any) -> BlockSplit:
        """A split from its JSON form (the list of boundaries :meth:`to_json` writes); ValueError if invalid."""
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"a block split is a JSON list of stage boundaries like [0, 15, 30], got {_short(value)}")
        return cls(tuple(value))

    def to_json(self) -> list[int]:
        return list(self.bounds)

    @property
    def stages(self) -> int:
        return len(self.bounds) - 1

    @property
    def num_blocks(self) -> int:
        return self.bounds[-1]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Blocks per stage."""
        return tuple(end - start for start, end in zip(self.bounds, self.bounds[1:]))

    def blocks_of(self, stage: int) -> range:
        if not 0 <= stage < self.stages:
            raise ValueError(f"stage {stage} is not in this {self.stages}-stage split")
        return range(self.bounds[stage], self.bounds[stage + 1])

    def owner(self, block: int) -> int:
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"block {block} is not in this {self.num_blocks}-block split")
        return bisect_right(self.bounds, block) - 1

    def moves_to(self, new: BlockSplit) -> tuple[BlockMove, ...]:
        """The blocks whose owner differs in ``new``, in block order (same number of blocks; stages may differ)."""
        if new.num_blocks != self.num_blocks:
            raise ValueError(f"cannot move from a {self.num_blocks}-block split to a {new.num_blocks}-block one")
        moves = []
        for block in range(self.num_blocks):
            source, target = self.owner(block), new.owner(block)
            if source != target:
                moves.append(BlockMove(block, source, target))
        return tuple(moves)

    def __str__(self) -> str:
        return "/".join(str(size) for size in self.sizes)


# ------------------------------------------------------------------ measurements
@dataclass(frozen=True)
class StageTiming:
    """One measurement window of one stage, in seconds per micro-batch (averaged over the window by the caller).

    ``block_seconds`` is the time in the stage's ``blocks`` DiT blocks (all of
    them); ``fixed_seconds`` everything else the stage does per micro-batch
    (encode and embedding on stage 0, head and decode on the last, 0
    elsewhere); ``send_seconds`` the time to hand its output to the next
    stage that compute does not hide.
    """

    stage: int
    blocks: int
    block_seconds: float
    fixed_seconds: float = 0.0
    send_seconds: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.stage, bool) or not isinstance(self.stage, int) or self.stage < 0:
            raise ValueError(f"a stage index is an integer >= 0, got {self.stage!r}")
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, int) or self.blocks < 1:
            raise ValueError(f"stage {self.stage}: a stage runs at least one block, got blocks={self.blocks!r}")
        for name in ("block_seconds", "fixed_seconds", "send_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"stage {self.stage}: {name} must be a finite number >= 0, got {value!r}")

    @property
    def per_block_seconds(self) -> float:
        """This stage's cost of one block, from its own measurement (stages may be different devices)."""
        return self.block_seconds / self.blocks

    @property
    def overhead_seconds(self) -> float:
        """What the stage spends per micro-batch whatever its blocks: fixed work plus the exposed send."""
        return self.fixed_seconds + self.send_seconds


def stage_times(split: BlockSplit, timings: Sequence[StageTiming]) -> tuple[float, ...]:
    """Predicted seconds per micro-batch of every stage under ``split``: overhead + blocks × per-block cost."""
    ordered = _ordered(timings, split.stages)
    return tuple(t.overhead_seconds + size * t.per_block_seconds for t, size in zip(ordered, split.sizes))


def bottleneck(split: BlockSplit, timings: Sequence[StageTiming]) -> float:
    """The slowest stage's predicted time under ``split`` (the pipeline's period per micro-batch)."""
    return max(stage_times(split, timings))


# ----------------------------------------------------------------- the best split
def balanced_split(timings: Sequence[StageTiming], num_blocks: int, *, prefer: BlockSplit | None = None) -> BlockSplit:
    """The split of ``num_blocks`` blocks over the timed stages whose slowest stage is fastest. Exact.

    Stage s with n blocks is predicted to take ``a_s + n·b_s`` (``a_s`` its
    fixed work plus exposed send, ``b_s`` its measured per-block cost). Blocks
    are identical, so a split is fixed by its stage sizes, and the smallest
    possible bottleneck T* is found by water-filling: give every stage one
    block, then each further block to the stage whose time after taking it is
    smallest. No split does better: when the last block went in at time v,
    every stage's next block would have cost at least v, so a split whose
    slowest stage is faster than v holds at most the counts of that moment,
    one block short of all.

    Many splits often reach T*. Among those, deterministically (costs compared
    to the nanosecond), the winner is the one that

    1. moves the fewest blocks away from ``prefer`` (the split running now;
       moving weights and KV cache mid-stream costs, and a balancer that
       prefers the current split never flaps between equally good ones);
    2. has the smallest total of stage times (the pass latency: blocks go to
       the faster devices);
    3. is the most even below the bottleneck (smallest sum of squared stage
       times: headroom everywhere, not just at the slowest stage);
    4. is closest to :meth:`BlockSplit.even` (equal stages get the even split);
    5. has the lexicographically smallest boundaries.
    """
    stages = len(timings)
    _check_counts(num_blocks, stages)
    ordered = _ordered(timings, stages)
    if prefer is not None and (prefer.num_blocks != num_blocks or prefer.stages != stages):
        raise ValueError(f"prefer is a {prefer.stages}-stage split of {prefer.num_blocks} blocks, not {stages} of {num_blocks}")
    costs = [(_ns(t.overhead_seconds), _ns(t.per_block_seconds)) for t in ordered]
    limit = _smallest_bottleneck(costs, num_blocks)
    caps = [_most_blocks_within(limit, a, b, num_blocks - stages + 1) for a, b in costs]
    return _best_within(costs, caps, num_blocks, prefer, BlockSplit.even(num_blocks, stages))


def _smallest_bottleneck(costs: list[tuple[int, int]], num_blocks: int) -> int:
    """T*: water-filling, one block at a time to the stage that stays fastest after taking it."""
    counts = [1] * len(costs)
    limit = max(a + b for a, b in costs)
    heap = [(a + 2 * b, s) for s, (a, b) in enumerate(costs)]
    heapq.heapify(heap)
    for _ in range(num_blocks - len(costs)):
        value, s = heapq.heappop(heap)
        counts[s] += 1
        limit = max(limit, value)
        a, b = costs[s]
        heapq.heappush(heap, (a + (counts[s] + 1) * b, s))
    return limit


def _most_blocks_within(limit: int, a: int, b: int, most: int) -> int:
    return most if b == 0 else min(most, (limit - a) // b)


@dataclass(frozen=True)
class _Key:
    """Additive tie-break costs of a (partial) split, compared in order (see :func:`balanced_split`)."""

    moved: int = 0
    total: int = 0
    squares: int = 0
    off_even: int = 0

    def __add__(self, other: _Key) -> _Key:
        return _Key(self.moved + other.moved, self.total + other.total, self.squares + other.squares, self.off_even + other.off_even)

    def order(self) -> tuple[int, int, int, int]:
        return (self.moved, self.total, self.squares, self.off_even)


def _best_within(costs: list[tuple[int, int]], caps: list[int], num_blocks: int, prefer: BlockSplit | None, even: BlockSplit) -> BlockSplit:
    """Dynamic programme over stage boundaries, from the last stage back: best[s][i] covers blocks i.. with stages s..

    The keys add up stage by stage, so the order of their sums is exact; the
    forward walk takes the smallest next boundary among equal keys, which
    makes the boundaries lexicographically smallest among full ties.
    """
    stages = len(costs)
    best: list[dict[int, _Key]] = [dict() for _ in range(stages + 1)]
    best[stages][num_blocks] = _Key()
    for s in range(stages - 1, -1, -1):
        a, b = costs[s]
        for start in range(s, num_blocks - (stages - s) + 1):
            options = []
            for size in range(1, caps[s] + 1):
                end = start + size
                if end not in best[s + 1]:
                    continue
                stage_key = _stage_key(s, start, end, a + size * b, prefer, even)
                options.append(stage_key + best[s + 1][end])
            if options:
                best[s][start] = min(options, key=_Key.order)
    bounds, start = [0], 0
    for s in range(stages):
        a, b = costs[s]
        target = best[s][start]
        for size in range(1, caps[s] + 1):
            end = start + size
            if end in best[s + 1] and (_stage_key(s, start, end, a + size * b, prefer, even) + best[s + 1][end]).order() == target.order():
                break
        bounds.append(end)
        start = end
    return BlockSplit(tuple(bounds))


def _stage_key(stage: int, start: int, end: int, seconds_ns: int, prefer: BlockSplit | None, even: BlockSplit) -> _Key:
    moved = 0
    if prefer is not None:
        kept = prefer.blocks_of(stage)
        moved = (end - start) - max(0, min(end, kept.stop) - max(start, kept.start))
    return _Key(moved, seconds_ns, seconds_ns * seconds_ns, abs(end - even.bounds[stage + 1]))


# ---------------------------------------------------------------- when to change
@dataclass(frozen=True)
class RebalanceConfig:
    """Hysteresis of :class:`BlockBalancer`.

    A change needs the predicted bottleneck to drop by at least ``min_gain``
    (relative) and ``min_gain_seconds`` (absolute), for ``settle_windows``
    windows in a row, proposing the same split each time (or a split whose
    predicted bottleneck is within ``same_gain_tolerance`` of the window's
    best); after a change, ``cooldown_windows`` windows pass unexamined
    (their measurements straddle the move: caches warming, weights arriving).
    """

    min_gain: float = 0.10
    min_gain_seconds: float = 0.0
    settle_windows: int = 3
    cooldown_windows: int = 5
    same_gain_tolerance: float = 0.02

    def __post_init__(self) -> None:
        for name in ("min_gain", "min_gain_seconds", "same_gain_tolerance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.min_gain >= 1:
            raise ValueError(f"min_gain is a fraction of the bottleneck time (below 1), got {self.min_gain}")
        for name, least in (("settle_windows", 1), ("cooldown_windows", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


@dataclass(frozen=True)
class BalancerState:
    """What the balancer is doing, for metrics and logs."""

    split: BlockSplit
    windows: int  # observation windows seen
    changes: int  # splits returned by observe
    cooldown: int  # windows still to pass unexamined
    candidate: BlockSplit | None  # the better split waiting to settle
    streak: int  # windows in a row that proposed it
    predicted_gain: float  # the latest window's relative bottleneck gain of the best split (0: none)


@dataclass(eq=False)
class BlockBalancer:
    """The block split a pipeline should run, updated from one measurement window at a time.

    :meth:`observe` returns a new split to apply, or None. A returned split
    is assumed applied before the next window's measurements: the next
    window is the first of the cooldown. If the runtime could not apply it
    (or runs a split of its own choosing), it says so with :meth:`adopt`.

    Per-block costs come from each stage's own measurement of the blocks it
    ran (``block_seconds / blocks``), so a window after a move, with other
    block counts, is read the same way as any other.
    """

    split: BlockSplit
    config: RebalanceConfig = field(default_factory=RebalanceConfig)
    _windows: int = field(default=0, init=False)
    _changes: int = field(default=0, init=False)
    _cooldown: int = field(default=0, init=False)
    _candidate: BlockSplit | None = field(default=None, init=False)
    _streak: int = field(default=0, init=False)
    _gain: float = field(default=0.0, init=False)

    def observe(self, timings: Sequence[StageTiming]) -> BlockSplit | None:
        """One window's measurements of every stage; the split to apply now, or None."""
        _ordered(timings, self.split.stages)  # every stage measured once, else ValueError
        self._windows += 1
        if self._cooldown > 0:
            self._cooldown -= 1
            self._forget()
            return None
        proposal = balanced_split(timings, self.split.num_blocks, prefer=self.split)
        now = bottleneck(self.split, timings)
        self._gain = _relative_gain(now, bottleneck(proposal, timings))
        if not self._worth_it(now, proposal, timings):
            self._forget()
            return None
        if self._candidate is not None and self._still_as_good(self._candidate, proposal, now, timings):
            self._streak += 1
        else:
            self._candidate, self._streak = proposal, 1
        if self._streak < self.config.settle_windows:
            return None
        chosen = self._candidate
        self.adopt(chosen)
        self._changes += 1
        return chosen

    def adopt(self, split: BlockSplit) -> None:
        """The pipeline runs ``split`` from now on (a change applied, or a move that failed); a cooldown starts."""
        if split.num_blocks != self.split.num_blocks or split.stages != self.split.stages:
            raise ValueError(f"a {split.stages}-stage split of {split.num_blocks} blocks cannot replace a {self.split.stages}-stage split of {self.split.num_blocks}")
        self.split = split
        self._cooldown = self.config.cooldown_windows
        self._forget()

    @property
    def state(self) -> BalancerState:
        return BalancerState(self.split, self._windows, self._changes, self._cooldown, self._candidate, self._streak, self._gain)

    def _worth_it(self, now: float, proposal: BlockSplit, timings: Sequence[StageTiming]) -> bool:
        if proposal == self.split:
            return False
        return self._beats_current(proposal, now, timings)

    def _beats_current(self, split: BlockSplit, now: float, timings: Sequence[StageTiming]) -> bool:
        gain = now - bottleneck(split, timings)
        return gain >= self.config.min_gain * now and gain >= self.config.min_gain_seconds and gain > 0

    def _still_as_good(self, candidate: BlockSplit, proposal: BlockSplit, now: float, timings: Sequence[StageTiming]) -> bool:
        """The pending candidate keeps its streak if it is this window's proposal, or nearly as good and still worth it."""
        if candidate == proposal:
            return True
        near = bottleneck(candidate, timings) <= bottleneck(proposal, timings) * (1 + self.config.same_gain_tolerance)
        return near and self._beats_current(candidate, now, timings)

    def _forget(self) -> None:
        self._candidate, self._streak = None, 0


# ----------------------------------------------------------------------- helpers
def _ordered(timings: Sequence[StageTiming], stages: int) -> list[StageTiming]:
    """The timings sorted by stage; ValueError unless stages 0..stages-1 appear exactly once each."""
    found = sorted(t.stage for t in timings)
    if found != list(range(stages)):
        raise ValueError(f"expected one timing for each of stages 0..{stages - 1}, got stages {found}")
    return sorted(timings, key=lambda t: t.stage)


def _check_counts(num_blocks: int, stages: int) -> None:
    for name, value in (("num_blocks", num_blocks), ("stages", stages)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if num_blocks < stages:
        raise ValueError(f"{num_blocks} blocks cannot be split over {stages} stages (every stage needs a block)")


def _relative_gain(now: float, new: float) -> float:
    return 0.0 if now <= 0 else max(0.0, (now - new) / now)


def _ns(seconds: float) -> int:
    return round(seconds * _NS_PER_S)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
