"""Rank 0 of the pipeline stages: the pipeline's view of a DiT whose blocks live on several ranks.

:class:`StageDriver` offers what the video pipeline needs from a transformer
(:meth:`forward_chunks`, :meth:`new_cache`, :meth:`encode_context`) and does
it across the ranks:

- a forward is cut into up to ``stages`` micro-batches of rows (at cache
  segment boundaries where possible, else into smaller row views). For
  each, the driver embeds it, runs its own blocks and sends the hidden
  states on without waiting, so while rank 1 runs micro-batch i the driver
  already runs micro-batch i+1; the flow predictions come back from the
  last rank and are joined in row order. Every row sees exactly the
  arithmetic of a single-process forward; only the matmul shapes differ;
- every other operation is a message that rides the same ring, so each
  rank applies it between the same two forwards;
- a rank that dies (its process exits), fails (an exception) or hangs (no
  answer within ``result_timeout`` seconds) turns the driver *failed*:
  every later call raises :class:`~.errors.StageFailure` with the reason,
  which the server gives to the sessions and to new offers;
- per-stage times come back with each result; every ``window`` forwards
  they go to a :class:`~streamgen.sched.blocks.BlockBalancer`, and a split
  it proposes is applied before the next forward (:mod:`.rebalance`).

One lock serialises everything that sends: the pipeline's model thread
(forwards) and the setup thread (new streams, prompts) may both call in.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from ..models.video.causal_wan import CacheSegment, EmbeddedChunk
from ..models.video.kv_cache import CommitJournal
from ..sched.blocks import BlockBalancer, BlockSplit, StageTiming
from .errors import StageFailure
from .handles import ShardedContext, ShardedKVCache
from .messages import Message, Sender, receive
from .rebalance import exchange_blocks
from .stage_loop import apply_control
from .stage_shard import RowContexts, SegmentSpec, StageShard, shard_inventory

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MicroBatch:
    """Rows ``start:stop`` of a forward and the cache segments they attend to."""

    start: int
    stop: int
    segments: tuple[SegmentSpec, ...]


class StageDriver:
    """Rank 0 (see module docstring)."""

    def __init__(
        self,
        shard: StageShard,
        split: BlockSplit,
        comm_device: torch.device,
        *,
        liveness: Callable[[], str | None] = lambda: None,
        result_timeout: float = 60.0,
        balancer: BlockBalancer | None = None,
        window: int = 16,
        max_in_flight: int = 2,
    ) -> None:
        self.shard = shard
        self.split = split
        self.stages = split.stages
        self.comm_device = comm_device
        self.liveness = liveness
        self.result_timeout = result_timeout
        self.balancer = balancer
        self.window = window
        self.sender = Sender(1, comm_device, max_in_flight)
        self.failure: str | None = None
        self.rebalances = 0
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._items = itertools.count(1)
        self._released: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self._results: queue.Queue[Message | None] = queue.Queue()
        self._timings: list[list[tuple[float, float]]] = []
        self._pending_split: BlockSplit | None = None
        self._closed = False
        self._receiver = threading.Thread(target=self._receive_results, name="stage-results", daemon=True)
        self._receiver.start()

    # ------------------------------------------------------------- lifecycle
    def check(self) -> None:
        """Raise :class:`StageFailure` if the stages can no longer run."""
        if self.failure is None:
            reason = self.liveness()
            if reason is not None:
                self._fail(reason)
        if self.failure is not None:
            raise StageFailure(self.failure)

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            logger.error("pipeline stages failed: %s", reason)
        self._results.put(None)  # wake a forward waiting for results

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Tell every rank to exit (in ring order, after what was sent before) and wait for the last rank's goodbye.

        False when that could not happen in ``timeout`` (a step still holds
        the driver, or a rank failed): the caller kills the ranks instead.
        """
        if not self._lock.acquire(timeout=min(timeout, 2.0)):
            return False
        try:
            if self._closed:
                return True
            self._closed = True
            if self.failure is not None:
                return False
            try:
                self.sender.send(Message("shutdown"))
                self.sender.flush()
            except RuntimeError as error:  # a rank is gone: the launcher kills the rest
                logger.warning("stage shutdown: %s", error)
                return False
        finally:
            self._lock.release()
        self._receiver.join(timeout)
        return not self._receiver.is_alive()

    # ------------------------------------------------------------- messages
    def release(self, op: str, object_id: int) -> None:
        """Called by handle finalizers (any thread, any time): queue a free for the next send."""
        self._released.put((op, object_id))

    def _send(self, message: Message) -> None:
        """Send on the ring, after the frees that piled up (the lock is held)."""
        self.check()
        while True:
            try:
                op, object_id = self._released.get_nowait()
            except queue.Empty:
                break
            self._apply_local(Message(op, {"id": object_id}))
            self._send_raw(Message(op, {"id": object_id}))
        self._apply_local(message)
        self._send_raw(message)

    def _send_raw(self, message: Message) -> None:
        try:
            self.sender.send(message)
        except RuntimeError as error:
            self._fail(self._broken_link_reason(1, error))
            raise StageFailure(self.failure) from None

    def _apply_local(self, message: Message) -> None:
        """The driver's own shard applies every control message as it is sent."""
        if message.op not in ("forward", "inventory"):
            apply_control(self.shard, message)

    # ---------------------------------------------------------------- caches
    def new_cache(self, rows: int, latent_h: int, latent_w: int, **options: Any) -> ShardedKVCache:
        with self._lock:
            cache_id = next(self._ids)
            self._send(Message("cache.new", {"id": cache_id, "rows": rows, "latent": [latent_h, latent_w], "options": options}))
            return ShardedKVCache(self, cache_id, 0, rows)

    def reset_cache(self, cache: ShardedKVCache, rows: list[int] | None) -> None:
        with self._lock:
            if self.failure is not None:
                return  # nothing to keep in step any more; the stream fails at its next forward
            self._send(Message("cache.reset", {"id": cache.cache_id, "start": cache.start, "stop": cache.stop, "rows": rows}))

    def restore_counters(self, cache: ShardedKVCache, frames_written: list[int], frames_at_least: list[int]) -> None:
        with self._lock:
            if self.failure is not None:
                return  # a rollback after a stage failure: the streams fail at their next forward
            meta = {"id": cache.cache_id, "start": cache.start, "stop": cache.stop, "frames_written": frames_written, "frames_at_least": frames_at_least}
            self._send(Message("cache.counters", meta))

    def attach_journal(self, cache_id: int, journal: CommitJournal | None) -> None:
        """The driver's layers record into ``journal`` itself; the other ranks keep journals that follow it."""
        with self._lock:
            local = self.shard.caches[cache_id]
            local.journal = journal
            if journal is None or journal.closed or self.failure is not None:
                return
            self._send_raw(Message("cache.journal", {"id": cache_id, "action": "begin"}))
            journal.follow(_RemoteJournal(self, cache_id))

    def journal_action(self, cache_id: int, action: str) -> None:
        with self._lock:
            if self.failure is None and not self._closed:
                self._send_raw(Message("cache.journal", {"id": cache_id, "action": action}))

    # -------------------------------------------------------------- contexts
    def encode_context(self, text_embeds: torch.Tensor) -> ShardedContext:
        """A prompt's context: the driver projects the text once; each rank computes its blocks' K/V from it."""
        text = self.shard.model.embed_text(text_embeds)
        if text.shape[0] != 1:
            raise InputError("pipeline stages encode one prompt at a time")
        with self._lock:
            context_id = next(self._ids)
            self._send(Message("context.define", {"id": context_id}, [text]))
            return ShardedContext(self, context_id, self.split.num_blocks)

    def blend_contexts(self, start: ShardedContext, target: ShardedContext, weight: float) -> ShardedContext:
        with self._lock:
            context_id = next(self._ids)
            meta = {"id": context_id, "start": start.context_id, "target": target.context_id, "weight": weight}
            self._send(Message("context.blend", meta))
            return ShardedContext(self, context_id, self.split.num_blocks)

    # --------------------------------------------------------------- forward
    def forward_chunks(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        segments: Sequence[CacheSegment | ShardedKVCache],
        context: ShardedContext,
    ) -> torch.Tensor:
        """One chunk forward for rows of several caches, across the stages (see module docstring)."""
        model = self.shard.model
        rows, _, frames, height, width = model._check_latents(latents, timesteps)
        segments = [s if isinstance(s, CacheSegment) else CacheSegment(s) for s in segments]
        model._check_segments(segments, rows, height, width)  # the one-process checks, before anything is sent
        sources = context.row_sources(rows)
        with self._lock:
            self.check()
            self._apply_pending_split()
            batches = _micro_batches(segments, rows, self.stages)
            began = time.perf_counter()
            # One embedding for all rows (as one process computes it: a convolution's result may depend on the batch size)
            embedded = self.shard.model.embed(latents, timesteps)
            embed_seconds = (_synchronized(self.shard.device) - began) / len(batches)
            items = [self._submit(embedded, batch, sources, frames, embed_seconds) for batch in batches]
            outputs = [self._collect(item) for item in items]
            self._maybe_plan_rebalance()
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _submit(self, embedded: EmbeddedChunk, batch: MicroBatch, sources: tuple, frames: int, embed_seconds: float) -> int:
        item = next(self._items)
        rows = RowContexts(sources[batch.start : batch.stop])
        part = slice(batch.start, batch.stop)
        began = time.perf_counter()
        x = self.shard.run(embedded.x[part], embedded.modulation[part], frames, (embedded.grid_h, embedded.grid_w), batch.segments, rows)
        done = _synchronized(self.shard.device)
        meta = {
            "item": item,
            "frames": frames,
            "grid": [embedded.grid_h, embedded.grid_w],
            "segments": [s.to_json() for s in batch.segments],
            "rows": rows.to_json(),
            "times": [[done - began, embed_seconds]],
        }
        self._send(Message("forward", meta, [x, embedded.modulation[part], embedded.temb[part]]))
        return item

    def _collect(self, item: int) -> torch.Tensor:
        message = self._collect_message(item)
        self._timings.append([tuple(t) for t in message.meta["times"]])
        return message.tensors[0].to(self.shard.device)

    def inventory(self) -> list[dict[str, Any]]:
        """What every rank holds: its blocks, parameter count and KV-cache bytes (asked through the ring)."""
        with self._lock:
            item = next(self._items)
            self._send(Message("inventory", {"item": item, "ranks": [shard_inventory(self.shard, 0)]}))
            return self._collect_message(item).meta["ranks"]

    def _collect_message(self, item: int) -> Message:
        deadline = time.monotonic() + self.result_timeout
        while True:
            self.check()
            try:
                message = self._results.get(timeout=min(0.25, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    self._fail(f"no answer from the pipeline stages within {self.result_timeout:g} s (a rank hangs)")
                continue
            if message is None:
                continue  # woken by a failure: check() raises
            if message.op == "error":
                self._fail(f"stage rank {message.meta.get('rank')} failed: {message.meta.get('error')}")
                continue
            if message.meta.get("item") != item:
                self._fail(f"pipeline stages answered item {message.meta.get('item')} while {item} was expected")
                continue
            return message

    def _receive_results(self) -> None:
        last = self.stages - 1
        while True:
            try:
                message = receive(last, self.comm_device)
            except RuntimeError as error:
                if not self._closed:
                    self._fail(self._broken_link_reason(last, error))
                return
            if message.op == "bye":
                return
            self._results.put(message)

    def _broken_link_reason(self, peer: int, error: Exception, wait: float = 2.0) -> str:
        """Why a link broke: the exited rank if the supervisor sees one within ``wait`` seconds, else the link's error."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reason = self.liveness()
            if reason is not None:
                return reason
            time.sleep(0.05)
        detail = str(error).split("] ", 1)[-1].split(". ", 1)[0]  # gloo: "[file:line] Connection closed by peer ..."
        return f"the connection to stage rank {peer} broke ({detail})"

    # ------------------------------------------------------------- rebalance
    def stage_timings(self) -> list[StageTiming]:
        """Mean per-micro-batch times of each stage over the forwards since the last call."""
        window, self._timings = self._timings, []
        if not window:
            return []
        timings = []
        for stage in range(self.stages):
            block = sum(t[stage][0] for t in window) / len(window)
            fixed = sum(t[stage][1] for t in window) / len(window)
            timings.append(StageTiming(stage, len(self.split.blocks_of(stage)), block, fixed, 0.0))
        return timings

    def _maybe_plan_rebalance(self) -> None:
        if self.balancer is None or len(self._timings) < self.window:
            return
        proposal = self.balancer.observe(self.stage_timings())
        if proposal is not None and proposal != self.split:
            self._pending_split = proposal

    def rebalance(self, split: BlockSplit) -> None:
        """Move blocks (weights, KV-cache layers, context layers) so that ``split`` holds, before the next forward."""
        with self._lock:
            self._pending_split = split
            self._apply_pending_split()

    def _apply_pending_split(self) -> None:
        """Apply a pending split now, unless a step's undo journal has records (moving layers would void them)."""
        split = self._pending_split
        if split is None:
            return
        if any(cache.journal is not None and len(cache.journal) for cache in self.shard.caches.values()):
            return  # mid-step: the next step's first forward applies it
        self._pending_split = None
        if split == self.split:
            return
        began = time.perf_counter()
        self._send(Message("rebalance", {"bounds": list(split.bounds)}))
        exchange_blocks(self.shard, self.split, split, rank=0, device=self.comm_device)
        self.split = split
        self.rebalances += 1
        self._timings = []
        logger.info("pipeline stages rebalanced to blocks %s in %.0f ms", list(split.bounds), (time.perf_counter() - began) * 1e3)


class _RemoteJournal:
    """Follows a driver-side :class:`CommitJournal`: the other ranks undo and close theirs in step."""

    def __init__(self, driver: StageDriver, cache_id: int) -> None:
        self.driver = driver
        self.cache_id = cache_id

    def undo(self) -> None:
        self.driver.journal_action(self.cache_id, "undo")

    def close(self) -> None:
        self.driver.journal_action(self.cache_id, "end")


def _micro_batches(segments: Sequence[CacheSegment], rows: int, stages: int) -> list[MicroBatch]:
    """Contiguous row ranges, at most ``stages`` of them, cut at segment boundaries where there are enough."""
    count = min(stages, rows)
    bounds = [round(i * rows / count) for i in range(count + 1)]
    edges = list(itertools.accumulate([0] + [s.rows for s in segments]))
    if len(segments) >= count:  # whole segments per micro-batch: no cache is split
        per = [round(i * len(segments) / count) for i in range(count + 1)]
        bounds = [edges[i] for i in per]
    batches = []
    for start, stop in zip(bounds, bounds[1:]):
        specs = []
        for segment, first, last in zip(segments, edges, edges[1:]):
            lo, hi = max(start, first), min(stop, last)
            if lo >= hi:
                continue
            cache = segment.cache
            if not isinstance(cache, ShardedKVCache):
                raise InputError("pipeline stages run on caches made by the staged model (new_cache)")
            write = None
            if segment.write is not None:
                write = tuple(bool(w) for w in segment.write[lo - first : hi - first].tolist())
            specs.append(SegmentSpec(cache.cache_id, cache.start + lo - first, cache.start + hi - first, write))
        batches.append(MicroBatch(start, stop, tuple(specs)))
    return batches


def _synchronized(device: torch.device) -> float:
    """``perf_counter`` after the device finished its queued work (so stage times are compute, not launch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
