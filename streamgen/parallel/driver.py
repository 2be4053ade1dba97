"""Rank 0 of the pipeline stages: keeps every stage busy with the rows that are ready.

:class:`StageDriver` owns rank 0's part of the DiT and two threads:

- the **stage-0 executor** takes the rows that are ready
  (:func:`~.rows.take_micro_batch`), embeds them, runs rank 0's blocks and
  sends the micro-batch on without waiting, then takes the next. Rows come
  from the pipeline (a new chunk's first step) and from results (a chunk's
  next step), so the ring holds as many micro-batches as there is work,
  bounded by the sender's in-flight limit: while rank 1 runs one, rank 0
  already runs the next;
- the **result** thread receives what the last rank sends: a flow
  prediction per row, and for a row that was a chunk's last step the
  decoded frames (the last rank decodes). It hands each to its row's
  ``on_result`` (which may submit the chunk's next step at once).

Every other operation (a new cache, a reset, a prompt's text, a decoder, a
new block split) is a message that rides the same ring, sent under the same
lock as the micro-batches, so each rank applies it between the same two
micro-batches as rank 0 did and the shards never disagree.

A rank that dies (its process exits), fails (an exception) or hangs (no
answer within ``result_timeout`` seconds) turns the driver *failed*: every
later call raises :class:`~.errors.StageFailure` with the reason, which the
server gives to the sessions and to new offers.

Per-stage times come back with each result; every ``window`` micro-batches
they go to a :class:`~streamgen.sched.blocks.BlockBalancer`, and a split it
proposes is applied by the executor before its next micro-batch
(:mod:`.rebalance`): micro-batches already on the ring finish on the old
split at every rank, later ones run on the new split everywhere.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from ..models.video.causal_wan import CacheSegment
from ..sched.blocks import BlockBalancer, BlockSplit, StageTiming
from .errors import StageFailure, StreamFault
from .handles import ShardedContext, ShardedDecoder, ShardedKVCache
from .device_streams import bind_device, finished, mark, new_stream, on_stream, wait_for
from .links import current_links, keepalive_seconds
from .messages import Message, Sender, receive
from .rebalance import exchange_blocks
from .rows import StageRow, take_micro_batch
from .stage_loop import apply_control
from .stage_shard import RowContexts, SegmentSpec, StageShard, shard_inventory

logger = logging.getLogger(__name__)
WATCH_SECONDS = 0.25
SERVICE_DECAY = 0.2


@dataclass
class _OnTheRing:
    """A micro-batch rank 0 sent and the last rank has not answered yet."""

    rows: list[StageRow]
    sent_at: float


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
        max_rows: int | None = None,
        encoder_vae: torch.nn.Module | None = None,
    ) -> None:
        self.shard = shard
        self.split = split
        self.stages = split.stages
        self.comm_device = comm_device
        self.liveness = liveness
        self.result_timeout = result_timeout
        self.balancer = balancer
        self.window = window
        self.max_rows = max_rows
        self.encoder_vae = encoder_vae
        links = current_links()
        self.links = links
        self.sender = Sender(1, links.ring, comm_device, max_in_flight=max_in_flight, keepalive_s=keepalive_seconds(links.timeout_s), name="stage-0")
        self._compute_stream = new_stream(shard.device)  # rank 0's blocks (the executor thread)
        self._receive_stream = new_stream(shard.device)  # results landing (the result thread)
        self.failure: str | None = None
        self.rebalances = 0
        self.micro_batches = 0
        self.peak_on_ring = 0
        self.row_seconds: float | None = None  # the slowest stage's seconds per row (moving mean): the stages' service time
        self._lock = threading.RLock()  # everything that sends, and rank 0's shard
        self._ready_cond = threading.Condition()  # the rows waiting for rank 0 (never held while computing)
        self._ready: deque[StageRow] = deque()
        self._ids = itertools.count(1)
        self._items = itertools.count(1)
        self._released: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self._on_ring: dict[int, _OnTheRing] = {}
        self._answers: dict[int, concurrent.futures.Future] = {}
        self._timings: list[list[tuple[float, float]]] = []
        self._rank0_work: list[Any] = []  # seconds, or (start, end) CUDA events, of rank 0's work outside the ring
        self._pending_split: BlockSplit | None = None
        self._closed = False
        self._receiver = threading.Thread(target=self._receive_results, name="stage-results", daemon=True)
        self._executor = threading.Thread(target=self._execute, name="stage-0", daemon=True)
        self._receiver.start()
        self._executor.start()

    # ------------------------------------------------------------- lifecycle
    def check(self) -> None:
        """Raise :class:`StageFailure` if the stages can no longer run."""
        if self.failure is None:
            reason = self.liveness() or self._hang()
            if reason is not None:
                self._fail(reason)
        if self.failure is not None:
            raise StageFailure(self.failure)

    def _hang(self) -> str | None:
        oldest = min((flight.sent_at for flight in list(self._on_ring.values())), default=None)
        if oldest is not None and time.monotonic() - oldest > self.result_timeout:
            return f"no answer from the pipeline stages within {self.result_timeout:g} s (a rank hangs)"
        return None

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            logger.error("pipeline stages failed: %s", reason)
        for future in list(self._answers.values()):
            if not future.done():
                future.set_exception(StageFailure(reason))
        with self._ready_cond:
            self._ready.clear()
            self._ready_cond.notify_all()

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Tell every rank to exit (in ring order, after what was sent before) and wait for the last rank's goodbye.

        False when that could not happen in ``timeout`` (rank 0 is stuck in
        a micro-batch, or a rank failed): the caller kills the ranks instead.
        """
        with self._ready_cond:
            if self._closed:
                return not self._receiver.is_alive()
            self._closed = True
            self._ready.clear()
            self._ready_cond.notify_all()
        if not self._lock.acquire(timeout=min(timeout, 2.0)):
            return False
        try:
            if self.failure is not None:
                return False
            try:
                self.sender.close()  # no keep-alive after the goodbye: the ranks exit on it
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
        self._send_releases()
        self._apply_local(message)
        self._send_raw(message)

    def _send_releases(self) -> None:
        while True:
            try:
                op, object_id = self._released.get_nowait()
            except queue.Empty:
                return
            self._apply_local(Message(op, {"id": object_id}))
            self._send_raw(Message(op, {"id": object_id}))

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
                return  # nothing to keep in step any more; the stream fails at its next step
            self._send(Message("cache.reset", {"id": cache.cache_id, "start": cache.start, "stop": cache.stop, "rows": rows}))

    def replace_frames(self, cache: ShardedKVCache, rows: Sequence[int], scratch: ShardedKVCache, frames: Sequence[int]) -> None:
        """A re-cache on every rank: history ``frames`` of ``rows`` (of ``cache``) from ``scratch`` (see ``RollingKVCache.replace_frames``).

        The caller waited for the scratch forwards' results, so every rank
        has written ``scratch`` before this message reaches it (the ring is in order).
        """
        with self._lock:
            self.check()
            meta = {"id": cache.cache_id, "start": cache.start, "stop": cache.stop, "rows": [int(r) for r in rows],
                    "scratch": scratch.cache_id, "frames": [int(f) for f in frames]}
            self._send(Message("cache.replace", meta))

    # -------------------------------------------------------------- decoders
    def new_decoder(self) -> ShardedDecoder:
        """A stream's decode state on the last rank."""
        with self._lock:
            decoder_id = next(self._ids)
            self._send(Message("decoder.new", {"id": decoder_id}))
            return ShardedDecoder(self, decoder_id)

    def reset_decoder(self, decoder_id: int) -> None:
        with self._lock:
            if self.failure is None:
                self._send(Message("decoder.reset", {"id": decoder_id}))

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

    # ------------------------------------------------------------------ rows
    def submit(self, rows: Sequence[StageRow]) -> None:
        """Queue rows for rank 0 (any thread; never blocks on a micro-batch in progress).

        On a GPU the rows' tensors may still be in the making on the
        caller's stream: an event marks that point, and rank 0's stream
        waits for it (not for the whole device).
        """
        self.check()
        ready = mark(self.shard.device)
        for row in rows:
            row.ready = ready
        with self._ready_cond:
            self._ready.extend(rows)
            self._ready_cond.notify_all()

    @property
    def on_ring(self) -> int:
        """Micro-batches sent and not answered yet."""
        return len(self._on_ring)

    def forward_chunks(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        segments: Sequence[CacheSegment | ShardedKVCache],
        context: ShardedContext,
    ) -> torch.Tensor:
        """One chunk forward for rows of several caches, waiting for the answer (the transformer's call, for tests and tools).

        The rows go round the ring as the pipeline's rows do: one row per
        cache row, each attending to its own cache row.
        """
        model = self.shard.model
        rows, *_ = model.check_latents(latents, timesteps)
        segments = [s if isinstance(s, CacheSegment) else CacheSegment(s) for s in segments]
        model.check_segments(segments, rows, latents.shape[3], latents.shape[4])
        results: list[concurrent.futures.Future] = [concurrent.futures.Future() for _ in range(rows)]
        contexts = context.expand(rows) if context.rows == 1 else context
        staged, row = [], 0
        for segment in segments:
            cache = segment.cache
            if not isinstance(cache, ShardedKVCache):
                raise InputError("pipeline stages run on caches made by the staged model (new_cache)")
            for offset in range(cache.rows):
                write = None if segment.write is None else bool(segment.write[offset])
                staged.append(StageRow(
                    latents[row : row + 1], timesteps[row : row + 1], cache.row_view(offset, offset + 1),
                    contexts.row(row), results[row].set_result, write=write,
                    on_error=lambda reason, future=results[row]: future.set_exception(StreamFault(reason)),
                ))
                row += 1
        self.submit(staged)
        return torch.cat([self._wait(future) for future in results])

    def _wait(self, future: concurrent.futures.Future) -> Any:
        while True:
            self.check()
            try:
                return future.result(timeout=WATCH_SECONDS)
            except concurrent.futures.TimeoutError:
                continue

    # ------------------------------------------------------------- stage 0
    def _execute(self) -> None:
        """The stage-0 executor thread (see module docstring)."""
        bind_device(self.shard.device)
        while True:
            with self._ready_cond:
                while not self._ready and not self._closed:
                    self._ready_cond.wait(WATCH_SECONDS)
                    if self.failure is None and self._on_ring:
                        reason = self.liveness() or self._hang()
                        if reason is not None:
                            self._fail(reason)
                if self._closed:
                    return
                batch = take_micro_batch(self._ready, self.max_rows)
            try:
                with torch.inference_mode(), on_stream(self._compute_stream):
                    self._run_micro_batch(batch)
            except StageFailure:
                pass  # already failed: callers see it at their next call
            except Exception as error:  # noqa: BLE001  - rank 0's forward raised before committing or sending: only these rows
                logger.exception("pipeline stage 0 failed on a micro-batch")
                self._fail_rows(batch, f"stage rank 0 failed: {type(error).__name__}: {error}")

    def _run_micro_batch(self, batch: list[StageRow]) -> None:
        """Embed the rows, run rank 0's blocks, send the hidden states on (the lock keeps control messages out of the middle)."""
        with self._lock:
            if self.failure is not None or self._closed:
                return
            batch = [row for row in batch if not row.ticket.cancelled]
            if not batch:
                return
            self._apply_pending_split()
            self._send_releases()
            model = self.shard.model
            for event in {id(r.ready): r.ready for r in batch}.values():
                wait_for(self._compute_stream, event)
            began = time.perf_counter()
            embedded = model.embed(torch.cat([r.latents for r in batch]), torch.cat([r.timesteps for r in batch]))
            embedded_at = finished(self.shard.device)
            segments = [SegmentSpec(r.cache.cache_id, r.cache.start, r.cache.stop, None if r.write is None else (r.write,)) for r in batch]
            contexts = RowContexts(tuple(r.context.row_sources(1)[0] for r in batch))
            frames = batch[0].latents.shape[2]
            x = self.shard.run(embedded.x, embedded.modulation, frames, (embedded.grid_h, embedded.grid_w), segments, contexts)
            done = finished(self.shard.device)
            finals = [i for i, r in enumerate(batch) if r.decode is not None]
            item = next(self._items)
            meta = {
                "item": item,
                "frames": frames,
                "grid": [embedded.grid_h, embedded.grid_w],
                "segments": [s.to_json() for s in segments],
                "rows": contexts.to_json(),
                "decode": [[i, batch[i].decode.decoder_id] for i in finals],
                "times": [[done - embedded_at, embedded_at - began]],
            }
            tensors = [x, embedded.modulation, embedded.temb]
            if finals:
                tensors += [torch.cat([batch[i].latents for i in finals]).float(), torch.cat([batch[i].decode.sigma for i in finals]).float()]
            self._on_ring[item] = _OnTheRing(batch, time.monotonic())
            self.micro_batches += 1
            self.peak_on_ring = max(self.peak_on_ring, len(self._on_ring))
            self._send_raw(Message("forward", meta, tensors))

    # --------------------------------------------------------------- results
    def _receive_results(self) -> None:
        bind_device(self.shard.device)
        last = self.stages - 1
        while True:
            try:
                message = receive(last, self.links.back, self.comm_device, self._receive_stream)
            except RuntimeError as error:
                if not self._closed:
                    self._fail(self._broken_link_reason(last, error))
                return
            if message.op == "bye":
                return
            if message.op == "error":
                self._row_error(message.meta.get("item"), f"stage rank {message.meta.get('rank')} failed: {message.meta.get('error')}")
            elif message.op == "inventory":
                future = self._answers.pop(message.meta["item"], None)
                if future is not None and not future.done():
                    future.set_result(message.meta["ranks"])
            elif message.op == "result":
                with torch.inference_mode():
                    self._deliver(message)

    def _deliver(self, message: Message) -> None:
        """Hand each row its prediction or its frames, in row order."""
        flight = self._on_ring.pop(message.meta["item"], None)
        if flight is None:
            self._fail(f"pipeline stages answered micro-batch {message.meta['item']}, which was never sent")
            return
        times = [tuple(t) for t in message.meta["times"]]
        self._timings.append(times)
        self._observe_service(max(block + fixed for block, fixed in times) / len(flight.rows))
        self._maybe_plan_rebalance()
        predictions, *frames = message.tensors
        predictions = predictions.to(self.shard.device)
        decoded = iter(frames)
        for index, row in enumerate(flight.rows):
            result = next(decoded).to(self.shard.device) if row.decode is not None else predictions[index : index + 1]
            if row.ticket.cancelled or self.failure is not None:
                continue
            try:
                if row.decode is not None and row.on_prediction is not None:
                    row.on_prediction(predictions[index : index + 1])
                row.on_result(result)
            except Exception as error:  # noqa: BLE001  - the stream's continuation broke: its state cannot be trusted
                logger.exception("pipeline stages: a result could not be handled")
                self._fail(f"handling a stage result failed: {type(error).__name__}: {error}")
                return

    def _observe_service(self, seconds_per_row: float) -> None:
        old = self.row_seconds
        self.row_seconds = seconds_per_row if old is None else old + SERVICE_DECAY * (seconds_per_row - old)

    def _row_error(self, item: int | None, reason: str) -> None:
        """A rank's forward or decode raised: the rows of that micro-batch fail; a failed control operation fails all."""
        flight = self._on_ring.pop(item, None) if item is not None else None
        if flight is None:
            self._fail(reason)
            return
        logger.error("pipeline stages: %s (the streams of that micro-batch end)", reason)
        self._fail_rows(flight.rows, reason)

    def _fail_rows(self, rows: Sequence[StageRow], reason: str) -> None:
        if any(row.on_error is None for row in rows if not row.ticket.cancelled):
            self._fail(reason)
            return
        for row in rows:
            if not row.ticket.cancelled:
                row.on_error(reason)

    def inventory(self) -> list[dict[str, Any]]:
        """What every rank holds: its blocks, parameter count, KV-cache bytes and decoders (asked through the ring)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            item = next(self._items)
            self._answers[item] = future
            self._send(Message("inventory", {"item": item, "ranks": [shard_inventory(self.shard, 0, self.encoder_vae)]}))
        deadline = time.monotonic() + self.result_timeout
        while True:
            self.check()
            try:
                return future.result(timeout=WATCH_SECONDS)
            except concurrent.futures.TimeoutError:
                if time.monotonic() > deadline:
                    self._fail(f"no answer from the pipeline stages within {self.result_timeout:g} s (a rank hangs)")

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
    def note_rank0_work(self, work: float | tuple[Any, Any]) -> None:
        """Rank 0 also encodes (the pipeline's step): ``work`` seconds, or CUDA events around it, count as its fixed time."""
        self._rank0_work.append(work)

    def stage_timings(self) -> list[StageTiming]:
        """Mean per-micro-batch times of each stage over the micro-batches since the last call.

        Rank 0's fixed time includes the encoding the pipeline did meanwhile,
        spread over the window's micro-batches: on one device it competes
        with rank 0's blocks, so the balancer must see it to give rank 0
        fewer blocks.
        """
        window, self._timings = self._timings, []
        extra, self._rank0_work = self._rank0_work, []
        if not window:
            return []
        encoding = sum(_seconds(work) for work in extra) / len(window)
        timings = []
        for stage in range(self.stages):
            block = sum(t[stage][0] for t in window) / len(window)
            fixed = sum(t[stage][1] for t in window) / len(window) + (encoding if stage == 0 else 0.0)
            timings.append(StageTiming(stage, len(self.split.blocks_of(stage)), block, fixed, 0.0))
        return timings

    def _maybe_plan_rebalance(self) -> None:
        if self.balancer is None or len(self._timings) < self.window:
            return
        proposal = self.balancer.observe(self.stage_timings())
        if proposal is not None and proposal != self.split:
            self._pending_split = proposal

    def rebalance(self, split: BlockSplit) -> None:
        """Move blocks (weights, KV-cache layers, context layers) so that ``split`` holds, before the next micro-batch."""
        with self._lock, torch.inference_mode():
            self._pending_split = split
            self._apply_pending_split()

    def _apply_pending_split(self) -> None:
        """Apply a pending split now (the lock is held, so no micro-batch is half-sent)."""
        split, self._pending_split = self._pending_split, None
        if split is None or split == self.split:
            return
        began = time.perf_counter()
        self._send(Message("rebalance", {"bounds": list(split.bounds)}))
        exchange_blocks(self.shard, self.split, split, rank=0, device=self.comm_device, group=self.links.exchange)
        self.split = split
        self.rebalances += 1
        self._timings = []
        logger.info("pipeline stages rebalanced to blocks %s in %.0f ms", list(split.bounds), (time.perf_counter() - began) * 1e3)


def _seconds(work: float | tuple[Any, Any]) -> float:
    if isinstance(work, tuple):
        start, end = work
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    return float(work)

