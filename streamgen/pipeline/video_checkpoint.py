"""Checkpoints of a video stream, so that a step that raised can be undone (the server's failure isolation).

The worker steps many streams in one call. If the call raises (a bug, an
out-of-memory error, a fault in one stream's data), it restores every stream
from the checkpoint it took just before, then retries each stream alone to
find the culprit. That only works if a restored stream is *exactly* what it
was before the failed call: no input frame lost or fed twice, no chunk
advanced, no noise drawn, no cache entry overwritten.

What a step changes, and how the checkpoint puts it back:

- lists mutated in place (pending frames and tags): shallow copies (a
  txt2vid step's chunk request lives there too, as placeholders);
- chunks in flight (their ``latents``/``step`` are reassigned in place):
  copies of the chunk objects; their tensors are shared because a step
  replaces them and never writes into them;
- counters, ``chunks_in``, parameters, the prompt transition, the step
  schedule: copied values or references to immutable objects;
- the motion-noise controller: a snapshot of its (replaced, never written)
  tensors;
- the noise generator: ``get_state()`` / ``set_state()`` (a txt2vid
  chunk's starting latents come from it, so a retry draws them again);
- the VAE encode/decode caches: the list of entries (diffusers replaces
  entries, never writes into them) and the frame counters;
- the KV cache: ``frames_written`` (cloned) and its host-side lower bound
  ``frames_at_least`` (which decides when attention may drop its mask),
  the cache object itself (a change of ``num_inference_steps`` replaces
  it), and a
  :class:`~streamgen.models.video.kv_cache.CommitJournal` that records, before
  every commit of the step, what that commit overwrites. Commits cannot be
  deferred to the end of the step: a stream fed several chunks' worth of
  frames runs them one after another, each attending to the one before.
  The K/V scratch slots are not restored: they hold nothing between chunks.
  A re-cache (``prompt_switch="recache"``) rewrites history in place, so
  the journal first saves the whole cache (one copy, on a switch only);
- the kept clean latents of the frames in the window (for a re-cache), the
  count of finished frames and the re-cache counters: a tuple of the
  (immutable) kept frames and copied values.

Cost: a few list copies and, per chunk the step commits, one chunk's K/V
per cache row (what the commit overwrites). Nothing is proportional to the
cache size.

A checkpoint stays valid through failed steps (it can be restored again
after a failed retry) until a step or flush over the stream returns
normally: then it is *spent* (its journal is closed) and restoring it
raises. Taking a new checkpoint spends the previous one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..models.video.stream_vae import DecodeState, EncodeState
from ..models.video.kv_cache import CommitJournal, RollingKVCache
from .noise import MotionNoiseSnapshot
from .output import StreamCounters
from .video_params import VideoParams
from .video_state import ChunkInFlight, ContextTransition, KeptFrame, VideoState


@dataclass(frozen=True)
class VideoCheckpoint:
    """Everything of one :class:`VideoState` a step can change (opaque to callers; see module docstring)."""

    params: VideoParams
    pending_params: VideoParams | None
    pending_frames: tuple[torch.Tensor, ...]
    pending_tags: tuple[Any, ...]
    in_flight: tuple[ChunkInFlight, ...]
    chunks_in: int
    counters: StreamCounters
    context: ContextTransition
    noise: MotionNoiseSnapshot
    generator_state: torch.Tensor
    base_timesteps: torch.Tensor
    cache: RollingKVCache
    frames_written: torch.Tensor | None  # None: the cache is not the step's to undo (pipeline stages)
    frames_at_least: tuple[int, ...]
    encoder: EncodeState
    decoder: DecodeState
    journal: CommitJournal
    kept: tuple[KeptFrame, ...] = ()
    frames_done: int = 0
    recaches: int = 0
    recache_forwards: int = 0


def take_checkpoint(state: VideoState, *, track_cache: bool = True) -> VideoCheckpoint:
    """Checkpoint ``state`` and start recording what the KV-cache commits overwrite.

    ``track_cache=False``: the step never commits into the cache itself
    (pipeline stages commit on the ring, after the step hands the chunk
    over, and nothing on the ring is undone); the journal then only marks
    the checkpoint spent or not.
    """
    settle_checkpoint(state)
    journal = CommitJournal()
    state.journal = journal
    if track_cache:
        state.cache.journal = journal
    return VideoCheckpoint(
        params=state.params,
        pending_params=state.pending.peek(),
        pending_frames=tuple(state.pending_frames),
        pending_tags=tuple(state.pending_tags),
        in_flight=tuple(chunk.copy() for chunk in state.in_flight),
        chunks_in=state.chunks_in,
        counters=dataclasses.replace(state.counters),
        context=state.context.copy(),
        noise=state.noise.snapshot(),
        generator_state=state.generator.get_state(),
        base_timesteps=state.base_timesteps,
        cache=state.cache,
        frames_written=state.cache.frames_written.clone() if track_cache else None,
        frames_at_least=state.cache.frames_at_least if track_cache else (),
        encoder=state.encoder.copy(),
        decoder=state.decoder.copy(),
        journal=journal,
        kept=tuple(state.kept),
        frames_done=state.frames_done,
        recaches=state.recaches,
        recache_forwards=state.recache_forwards,
    )


def restore_checkpoint(state: VideoState, checkpoint: VideoCheckpoint) -> None:
    """Put ``state`` back to ``checkpoint`` (after a step or flush that raised)."""
    if checkpoint.journal.closed or state.journal is not checkpoint.journal:
        raise RuntimeError("this checkpoint is spent: a step over the stream succeeded, or a newer checkpoint was taken")
    checkpoint.journal.undo()
    _restore_cache(state, checkpoint)
    _restore_params(state, checkpoint)
    state.pending_frames = list(checkpoint.pending_frames)
    state.pending_tags = list(checkpoint.pending_tags)
    state.in_flight = [chunk.copy() for chunk in checkpoint.in_flight]
    state.chunks_in = checkpoint.chunks_in
    for counter in dataclasses.fields(StreamCounters):  # in place: stats readers may hold the object
        setattr(state.counters, counter.name, getattr(checkpoint.counters, counter.name))
    state.context = checkpoint.context.copy()
    state.noise.restore(checkpoint.noise)
    state.generator.set_state(checkpoint.generator_state)
    state.encoder = checkpoint.encoder.copy()
    state.decoder = checkpoint.decoder.copy()
    state.kept = list(checkpoint.kept)
    state.frames_done = checkpoint.frames_done
    state.recaches = checkpoint.recaches
    state.recache_forwards = checkpoint.recache_forwards


def settle_checkpoint(state: VideoState) -> None:
    """The step went through: the open checkpoint (if any) is spent and the cache stops recording."""
    journal = state.journal
    if journal is None:
        return
    journal.close()
    if state.cache.journal is journal:
        state.cache.journal = None
    state.journal = None


def _restore_cache(state: VideoState, checkpoint: VideoCheckpoint) -> None:
    state.cache = checkpoint.cache
    state.base_timesteps = checkpoint.base_timesteps
    if checkpoint.frames_written is None:
        return
    state.cache.restore_counters(checkpoint.frames_written, checkpoint.frames_at_least)
    state.cache.journal = checkpoint.journal  # keeps recording: the checkpoint may be restored again


def _restore_params(state: VideoState, checkpoint: VideoCheckpoint) -> None:
    """Parameters back; the newest requested update is queued again so that the retry applies it.

    A step takes the queued update and applies it; meanwhile another thread
    may queue a newer one (built on top of it). Whichever is newest (still
    queued, else applied by the failed step, else the one queued at the
    checkpoint) goes back in the queue.
    """
    applied = state.params if state.params is not checkpoint.params else None
    state.pending.restore(at_checkpoint=checkpoint.pending_params, applied=applied)
    state.params = checkpoint.params
