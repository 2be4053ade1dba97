"""One denoising round for the chunks of many video streams, with as few DiT forwards as possible.

In a round every stream that has a chunk ready brings it (a stream in
stream-batch mode also brings the chunks it has in flight; a drain at the
end of a stream brings only those). A DiT forward needs all its rows at the
same chunk length and latent size, so streams are grouped by the shape of
their latents; different resolutions make different forwards.

Inside a group, rows are arranged by denoising step:

- forward 0 carries, for every stream-batch stream, its new chunk (step 0)
  and its chunks in flight (steps 1..), and for every sequential stream its
  new chunk at step 0;
- forward k (k >= 1) carries step k of every sequential stream that has
  more than k steps.

Each stream's rows form one :class:`~streamgen.models.video.causal_wan.CacheSegment`:
its chunks sit at consecutive steps, so they attend to the matching
consecutive rows of the stream's own KV cache (a row view, no copy), and the
model attends per segment. Every row is therefore computed exactly as in the
stream's own forward: a stream cannot see another's history, and the batch
changes only the shape of the matmuls (bit-level differences of float
reduction order at most).

A txt2vid chunk (it entered as pure noise, :mod:`streamgen.pipeline.video`)
is a row like any other: its latents have the same shape as a vid2vid
chunk's of the same size, so streams of both modes share forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..models.video.causal_wan import CacheSegment
from ..models.video.wan_context import CrossAttentionContext
from ..models.video.kv_cache import RollingKVCache
from ..models.video.flow import flow_renoise, flow_x0
from .noise import model_timesteps
from .video_state import ChunkInFlight, VideoState

# forward_chunks(latents, timesteps, segments, context) -> flow prediction (the model's, or a runtime's)
ForwardChunks = Callable[[torch.Tensor, torch.Tensor, Sequence[CacheSegment], CrossAttentionContext], torch.Tensor]


@dataclass(frozen=True)
class RoundEntry:
    """A stream taking part in a round, with the chunk it brings (None: drain the stream batch only)."""

    state: VideoState
    new: ChunkInFlight | None


@dataclass(frozen=True)
class FinishedChunk:
    """A chunk whose last step ran: its latents are clean and go to the decoder."""

    state: VideoState
    chunk: ChunkInFlight


@dataclass(frozen=True)
class StreamRows:
    """One stream's rows in a forward: chunks at consecutive steps, attending to the same rows of its cache."""

    state: VideoState
    chunks: list[ChunkInFlight]

    def __post_init__(self) -> None:
        steps = [c.step for c in self.chunks]
        first = steps[0]
        if steps != list(range(first, first + len(steps))):
            raise RuntimeError(f"rows of a stream must be at consecutive steps, got {steps}")

    def cache_rows(self) -> RollingKVCache:
        first = self.chunks[0].step
        return self.state.cache.row_view(first, first + len(self.chunks))

    @property
    def finished(self) -> bool:
        return all(c.finished for c in self.chunks)


def denoise_round(forward: ForwardChunks, entries: Sequence[RoundEntry]) -> list[FinishedChunk]:
    """Run one round (see module docstring); returns the chunks that finished, at most one per stream."""
    finished: list[FinishedChunk] = []
    for group in _shape_groups(entries):
        finished += _denoise_group(forward, group)
    return finished


def _shape_groups(entries: Sequence[RoundEntry]) -> list[list[RoundEntry]]:
    """Entries whose rows can share a forward: same latent shape (channels, chunk frames, height, width)."""
    groups: dict[tuple[int, ...], list[RoundEntry]] = {}
    for entry in entries:
        chunk = entry.new if entry.new is not None else (entry.state.in_flight or [None])[0]
        if chunk is None:
            continue  # nothing to run for this stream
        groups.setdefault(tuple(chunk.latents.shape[1:]), []).append(entry)
    return list(groups.values())


def _denoise_group(forward: ForwardChunks, entries: list[RoundEntry]) -> list[FinishedChunk]:
    stream_batch = [_stream_batch_rows(e) for e in entries if e.state.config.use_denoising_batch]
    sequential = [StreamRows(e.state, [e.new]) for e in entries if not e.state.config.use_denoising_batch]
    _forward_rows(forward, stream_batch + sequential)
    running = [rows for rows in sequential if not rows.finished]
    while running:
        _forward_rows(forward, running)
        running = [rows for rows in running if not rows.finished]
    finished = [FinishedChunk(rows.state, rows.chunks[0]) for rows in sequential]
    for rows in stream_batch:
        done = [c for c in rows.chunks if c.finished]
        rows.state.in_flight = [c for c in rows.chunks if not c.finished]
        finished += [FinishedChunk(rows.state, c) for c in done]
    return finished


def _stream_batch_rows(entry: RoundEntry) -> StreamRows:
    """The new chunk (step 0) ahead of the chunks in flight (steps 1..): one row per step in use."""
    new = [entry.new] if entry.new is not None else []
    return StreamRows(entry.state, new + entry.state.in_flight)


def _forward_rows(forward: ForwardChunks, streams: list[StreamRows]) -> None:
    """One forward over the rows of ``streams``; every chunk moves on to its next step (or finishes)."""
    chunks = [c for rows in streams for c in rows.chunks]
    latents = torch.cat([c.latents for c in chunks])
    sigmas = torch.stack([c.sigmas[c.step] for c in chunks])
    timesteps = model_timesteps(sigmas)[:, None].expand(len(chunks), latents.shape[2])
    segments = [CacheSegment(rows.cache_rows()) for rows in streams]
    v = forward(latents, timesteps, segments, _rows_context([c.context for c in chunks])).float()
    x0 = flow_x0(latents, v, sigmas.view(-1, 1, 1, 1, 1))
    for row, chunk in enumerate(chunks):
        advance_chunk(chunk, x0[row : row + 1])


def advance_chunk(chunk: ChunkInFlight, x0: torch.Tensor) -> None:
    """After step ``chunk.step``: keep the clean latents if it was the last step, else re-noise to the next."""
    nxt = chunk.step + 1
    if nxt == chunk.num_steps:
        chunk.latents = x0
    else:
        chunk.latents = flow_renoise(x0, chunk.noise[nxt : nxt + 1], chunk.sigmas[nxt])
    chunk.step = nxt


def _rows_context(contexts: list[CrossAttentionContext]) -> CrossAttentionContext:
    """One context for the rows: shared (no copy) when every row has the same prompt, else concatenated.

    The concatenation copies each row's text K/V (all layers) once per
    forward: tens of MB per row for Wan-1.3B, small next to the forward
    itself, and it keeps cross-attention one batched call per block.
    """
    if all(c is contexts[0] for c in contexts):
        return contexts[0]
    concat = type(contexts[0]).concat  # a staged model's contexts concatenate as handles (streamgen.parallel)
    return concat([c.expand(1) if c.rows == 1 else c for c in contexts])
