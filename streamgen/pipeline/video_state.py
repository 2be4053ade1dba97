"""Everything that belongs to ONE causal video stream, and nothing shared.

The :class:`~streamgen.pipeline.video.VideoPipeline` owns weights; a
:class:`VideoState` owns the stream's KV cache (one
:class:`~streamgen.models.video.kv_cache.RollingKVCache` with one row per
denoising step), its VAE encode/decode caches, the motion-noise controller,
its noise generator, the input frames waiting to fill a chunk, the chunks in
flight through the stream batch and the prompt's cross-attention context.
A txt2vid stream (``config.mode``) has no input: each step queues one
chunk's worth of *placeholders* (None) in ``pending_frames``, whose tags are
the tags the generated frames will carry, and the chunk enters from noise.
For ``prompt_switch="recache"`` it also keeps the clean latents of the
finished frames still inside the cache window (:class:`KeptFrame`, at most
sinks + ring of them).
Two states never share tensors, so a step over many streams gives each one
exactly what it would get alone, even when their rows share a DiT forward
or a VAE call.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from .pending import PendingUpdate
from ..models.video.stream_vae import DecodeState, EncodeState
from ..models.video.wan_context import CrossAttentionContext
from ..models.video.kv_cache import CommitJournal, RollingKVCache
from .noise import MotionNoiseController
from .output import StreamCounters
from .video_params import VideoConfig, VideoParams

_state_ids = itertools.count(1)


@dataclass
class ChunkInFlight:
    """One chunk on its way through the denoising steps.

    ``latents`` (1, C, T', h, w) float32 are at the noise level of step
    ``step`` (the next step to run); ``sigmas`` (n,) are the chunk's noise
    levels, fixed when it entered; ``noise`` (n, C, T', h, w) was drawn when
    it entered: ``noise[0]`` noised the input (txt2vid: it *is* the starting
    latents, at σ = 1), ``noise[i]`` re-noises to step i.
    """

    latents: torch.Tensor
    sigmas: torch.Tensor
    noise: torch.Tensor
    context: CrossAttentionContext
    tags: tuple[Any, ...]
    step: int = 0

    @property
    def num_steps(self) -> int:
        return self.sigmas.shape[0]

    @property
    def finished(self) -> bool:
        return self.step >= self.num_steps

    def copy(self) -> ChunkInFlight:
        """A chunk that can advance without changing this one (tensors are shared: steps replace them, never write into them)."""
        return dataclasses.replace(self)


@dataclass(frozen=True)
class KeptFrame:
    """The clean latent of one finished latent frame, kept while the frame is in the KV-cache window (for a re-cache).

    ``index``: the frame's absolute index in the stream; ``chunk``: the index
    of its chunk's first frame (frames of one chunk are re-run together);
    ``clean`` (1, C, 1, h, w) its final latents; ``noise`` (n, C, 1, h, w)
    and ``sigmas`` (n,) its chunk's noise and noise levels, which re-noise it
    to the level each cache row was written at. All are views of the
    chunk's own tensors (no copy).
    """

    index: int
    chunk: int
    clean: torch.Tensor
    noise: torch.Tensor
    sigmas: torch.Tensor


@dataclass
class ContextTransition:
    """The cross-attention context in use and, during a prompt transition, where it is heading.

    A transition over k chunks gives chunk j (1..k) ``lerp(start, target, j/k)``;
    the KV cache is never touched, so the video morphs instead of restarting.
    """

    current: CrossAttentionContext
    start: CrossAttentionContext | None = None
    target: CrossAttentionContext | None = None
    done: int = 0
    total: int = 0

    @property
    def in_progress(self) -> bool:
        return self.target is not None

    def retarget(self, target: CrossAttentionContext, chunks: int) -> None:
        if chunks <= 0:
            self.current, self.start, self.target = target, None, None
            return
        self.start, self.target, self.done, self.total = self.current, target, 0, chunks

    def copy(self) -> ContextTransition:
        return dataclasses.replace(self)

    def next_chunk(self) -> CrossAttentionContext:
        """The context of the next chunk (advances a transition by one chunk)."""
        if self.target is not None:
            self.done += 1
            if self.done >= self.total:
                self.current, self.start, self.target = self.target, None, None
            else:
                self.current = self.start.lerp(self.target, self.done / self.total)
        return self.current


@dataclass(eq=False)
class VideoState:
    """Per-stream state of a video pipeline (see module docstring)."""

    config: VideoConfig
    params: VideoParams
    latent_size: tuple[int, int]
    cache: RollingKVCache
    encoder: EncodeState
    decoder: DecodeState
    noise: MotionNoiseController
    generator: torch.Generator
    base_timesteps: torch.Tensor  # (n,) the step schedule on the model device
    context: ContextTransition
    pending_frames: list[torch.Tensor | None] = field(default_factory=list)  # (3, H, W) each, in [-1, 1]; None: to generate (txt2vid)
    pending_tags: list[Any] = field(default_factory=list)
    in_flight: list[ChunkInFlight] = field(default_factory=list)  # ordered by step
    chunks_in: int = 0
    counters: StreamCounters = field(default_factory=StreamCounters)
    state_id: int = field(default_factory=lambda: next(_state_ids))
    journal: CommitJournal | None = field(default=None, repr=False)  # of the open checkpoint (video_checkpoint.py)
    ring: Any = field(default=None, repr=False)  # its chunks on the pipeline stages (video_staged.py), else None
    pending: PendingUpdate[VideoParams] = field(default_factory=PendingUpdate)
    # Re-cache (prompt_switch="recache"): the finished frames still in the cache window (at most sinks + ring) ...
    kept: list[KeptFrame] = field(default_factory=list)
    frames_done: int = 0  # ... latent frames finished since the stream began or was reset (the next one's index) ...
    recaches: int = 0  # ... prompt switches that rebuilt the cache ...
    recache_forwards: int = 0  # ... and the DiT forwards they ran (what a switch costs over a normal chunk)

    # The server steps a video stream on every input frame; the pipeline builds chunks itself.
    frames_per_call: int = 1
    temporal_factor: int = 4  # input frames per latent frame: the model's VAE says (VideoPipeline.temporal_factor)

    @property
    def num_steps(self) -> int:
        return self.cache.rows

    @property
    def generates(self) -> bool:
        """A txt2vid stream: no input frames, every chunk starts from noise."""
        return self.config.mode == "txt2vid"

    @property
    def frames_needed(self) -> int:
        """Frames of the next chunk: 1 + f(T' − 1) for the stream's first, fT' after (f: the VAE's temporal factor).

        Input frames a vid2vid chunk needs; output frames a txt2vid chunk makes.
        """
        t, f = self.config.chunk_frames, self.temporal_factor
        return f * (t - 1) + 1 if self.chunks_in == 0 else f * t

    @property
    def frames_entered(self) -> int:
        """Frames of all the chunks that entered since the stream began (or was reset): a txt2vid frame's index."""
        if self.chunks_in == 0:
            return 0
        t, f = self.config.chunk_frames, self.temporal_factor
        return f * (t - 1) + 1 + (self.chunks_in - 1) * f * t

    @property
    def latest_params(self) -> VideoParams:
        """The parameters in force after any queued update is applied."""
        return self.pending.latest(self.params)
