"""The causal video stream pipeline: chunked flow-matching denoising over a rolling KV cache.

A stream's input frames are buffered into *chunks* of ``T'`` latent frames
(4·T' video frames; the stream's first chunk is 1 + 4·(T' − 1) frames,
because Wan's VAE turns the first frame alone into a latent frame). For each
chunk:

1. the motion-aware noise controller measures the chunk and picks its noise
   level ``s`` (:mod:`streamgen.pipeline.noise`);
2. the streaming VAE encodes it (caches kept across chunks);
3. the latent is mixed with fresh noise, ``s·ε + (1 − s)·latent``, and
   denoised in n = 1..4 flow-matching steps by the block-causal DiT, each
   step attending to the stream's KV cache row of that step;
4. the clean latent is decoded (streaming) into the chunk's frames, which
   carry the tags of the input frames they depict.

Why every step has its own cache row: the K/V a chunk leaves behind depend
on the noise level it was seen at. Row i holds the history of chunks as
seen at step i, so step i of every chunk sees the same kind of history in
both modes below, and stream batch computes exactly what sequential does.

Two modes (:attr:`VideoConfig.use_denoising_batch`):

- **sequential**: the n steps of a chunk run one after another (n forwards,
  the chunk's frames come out in the same call: lowest latency);
- **stream batch**: ONE forward per chunk carries n rows, row i being the
  chunk that is at step i (the newest chunk at step 0, the oldest at step
  n − 1), each with its own timestep and its own cache row. Output lags the
  input by n − 1 chunks. During warm-up rows that hold no chunk yet are
  simply left out of the forward (it runs on a row view of the cache), so no
  garbage frames are computed or emitted; :meth:`VideoPipeline.flush`
  drains the chunks in flight at the end of a finite stream.

Noise is drawn per chunk from the stream's seeded generator when the chunk
enters, so both modes use identical noise. Prompt changes swap the
cross-attention context (optionally lerped over ``transition_chunks``)
without touching the KV cache; each chunk keeps the context it entered with.
Streams are stepped one after another in one ``step`` call: each has its own
KV cache, so their DiT rows cannot share a forward without a shared cache pool.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..config import StreamConfig, StreamParams
from ..errors import ConfigError, InputError
from ..frames import model_to_uint8, uint8_to_model
from ..models.video_model import VideoModel
from ..models.wan_context import CrossAttentionContext
from .kv_cache import RollingKVCache
from .noise import MotionNoiseController, base_timesteps, flow_renoise, flow_x0, model_timesteps, step_sigmas
from .output import StepOutput
from .video_params import VideoConfig, VideoParams, parse_video_config, parse_video_params, parse_video_settings
from .video_state import ChunkInFlight, ContextTransition, VideoState


class VideoPipeline:
    """Shared weights + the causal stream algorithm; all per-stream data lives in :class:`VideoState`."""

    def __init__(self, model: VideoModel) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def default_params(self) -> dict[str, Any]:
        return dict(self.model.default_params)

    # ------------------------------------------------------------------ states
    def validate_settings(self, settings: Mapping[str, Any]) -> None:
        """Check creation settings (shape + live fields) without building a state (cheap)."""
        config, _ = parse_video_settings(settings, self._defaults())
        self._check_size(config.resolved(self.model.default_size))

    def create_state(
        self,
        config: VideoConfig | StreamConfig | Mapping[str, Any] | None = None,
        params: VideoParams | Mapping[str, Any] | None = None,
    ) -> VideoState:
        """A fresh stream (encodes its prompt: call off the event loop).

        ``config`` may be None with ``params`` a mapping holding both the
        stream's shape and its live fields (what the server passes).
        """
        config, params = self._resolve_settings(config, params)
        config = config.resolved(self.model.default_size)
        self._check_size(config)
        latent_size = self.model.latent_size(config.width, config.height)
        generator = torch.Generator(device=self.device).manual_seed(params.seed)
        state = VideoState(
            config=config,
            params=params,
            latent_size=latent_size,
            cache=self._new_cache(config, latent_size, params.num_inference_steps),
            encoder=self.model.vae.new_encode_state(),
            decoder=self.model.vae.new_decode_state(),
            noise=MotionNoiseController(params.noise_settings, self.device),
            generator=generator,
            base_timesteps=self._base_timesteps(params.num_inference_steps),
            context=ContextTransition(current=self._prompt_context(params)),
        )
        return state

    def _defaults(self) -> VideoParams | None:
        return parse_video_params(self.model.default_params) if self.model.default_params else None

    def _resolve_settings(self, config: Any, params: Any) -> tuple[VideoConfig, VideoParams]:
        base = self._defaults()
        if config is None and isinstance(params, Mapping):
            return parse_video_settings(params, base)
        if isinstance(config, Mapping):
            config = parse_video_config(config)
        elif isinstance(config, StreamConfig):
            config = _from_image_config(config)
        elif config is None:
            config = VideoConfig()
        elif not isinstance(config, VideoConfig):
            raise ConfigError(f"config must be a VideoConfig or a mapping, got {type(config).__name__}")
        if params is None:
            params = base or VideoParams()
        elif isinstance(params, Mapping):
            params = parse_video_params(params, base)
        elif isinstance(params, StreamParams):
            raise ConfigError("video streams take video parameters (VideoParams or a mapping), not image StreamParams")
        elif not isinstance(params, VideoParams):
            raise ConfigError(f"params must be VideoParams or a mapping, got {type(params).__name__}")
        return config, params

    def _check_size(self, config: VideoConfig) -> None:
        multiple = self.model.size_multiple
        if config.width % multiple or config.height % multiple:
            raise ConfigError(f"width and height must be multiples of {multiple} for {self.model.name}; got {config.width}x{config.height}")

    def _new_cache(self, config: VideoConfig, latent_size: tuple[int, int], steps: int) -> RollingKVCache:
        h, w = latent_size
        return self.model.transformer.new_cache(
            steps, h, w, sink_frames=config.sink_frames, ring_frames=config.ring_frames, chunk_frames=config.chunk_frames
        )

    def _base_timesteps(self, steps: int) -> torch.Tensor:
        return torch.tensor(base_timesteps(steps), dtype=torch.float32, device=self.device)

    def _prompt_context(self, params: VideoParams) -> CrossAttentionContext:
        total = sum(p.weight for p in params.prompt)
        embeds = sum(self.model.encode_prompt(p.text).float() * (p.weight / total) for p in params.prompt)
        return self.model.encode_context(embeds.to(self.dtype))

    # ----------------------------------------------------------------- updates
    def update(self, state: VideoState, changes: Mapping[str, Any] | None = None, **kwargs: Any) -> VideoParams:
        """Validate a live update now; it takes effect at the stream's next step (safe from any thread).

        A change of ``num_inference_steps`` resets the stream (the KV cache
        has one row per step); every other change keeps the cache.
        """
        params = parse_video_params({**(changes or {}), **kwargs}, state.latest_params)
        state.set_pending(params)
        return params

    def apply_pending(self, state: VideoState) -> None:
        """Apply a queued update now (same thread as ``step``)."""
        new = state.take_pending()
        if new is None:
            return
        old = state.params
        state.params = new
        if new.prompt != old.prompt:
            state.context.retarget(self._prompt_context(new), new.transition_chunks)
        if new.noise_settings != old.noise_settings:
            state.noise.configure(new.noise_settings)
        if new.num_inference_steps != old.num_inference_steps:
            state.cache = self._new_cache(state.config, state.latent_size, new.num_inference_steps)
            state.base_timesteps = self._base_timesteps(new.num_inference_steps)
            self.reset(state)
        elif new.seed != old.seed:
            state.generator.manual_seed(new.seed)

    def reset(self, state: VideoState) -> None:
        """Forget the stream's history (KV cache, VAE caches, chunks in flight, motion EMA); keep its parameters."""
        state.cache.reset()
        state.encoder.reset()
        state.decoder.reset()
        state.noise.reset()
        state.generator.manual_seed(state.params.seed)
        state.pending_frames.clear()
        state.pending_tags.clear()
        state.in_flight.clear()
        state.chunks_in = 0

    # -------------------------------------------------------------------- step
    @torch.inference_mode()
    def step(
        self,
        states: Sequence[VideoState],
        frames: Sequence[torch.Tensor | None],
        tags: Sequence[Any] | None = None,
    ) -> list[StepOutput]:
        """Feed each stream ``frames[i]`` ((k, H, W, 3) uint8, any size) and return what is ready.

        Each :class:`StepOutput` holds 0..m frames (whole chunks) with the
        tags of the input frames they depict.
        """
        if len(frames) != len(states):
            raise InputError(f"got {len(frames)} frame batches for {len(states)} streams")
        if len(set(map(id, states))) != len(states):
            raise InputError("a stream may appear only once per step")
        tags = list(tags) if tags is not None else [None] * len(states)
        if len(tags) != len(states):
            raise InputError(f"got {len(tags)} tag tuples for {len(states)} streams")
        images = [self._prepare_input(s, f) for s, f in zip(states, frames)]
        call_tags = [_call_tags(t, image.shape[0]) for t, image in zip(tags, images)]
        outputs = []
        for state, image, tag in zip(states, images, call_tags):
            self.apply_pending(state)
            state.counters.frames_in += image.shape[0]
            state.pending_frames.extend(image.unbind(0))
            state.pending_tags.extend(tag)
            outputs.append(self._run_ready_chunks(state))
        return outputs

    @torch.inference_mode()
    def flush(self, state: VideoState) -> StepOutput:
        """End of a finite stream: complete a partial chunk with copies of the last frame and drain the stream batch.

        Padding frames carry the tag None (callers do not show them).
        """
        self.apply_pending(state)
        if state.pending_frames:
            missing = state.frames_needed - len(state.pending_frames)
            state.pending_frames.extend([state.pending_frames[-1]] * missing)
            state.pending_tags.extend([None] * missing)
        parts = [self._run_ready_chunks(state)]
        while state.in_flight:
            parts.append(self._emit(state, self._stream_batch_round(state, None)))
        return _concat_outputs(parts, self._empty_frames(state))

    def _prepare_input(self, state: VideoState, frames: torch.Tensor | None) -> torch.Tensor:
        if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            shape = tuple(frames.shape) if hasattr(frames, "shape") else type(frames).__name__
            dtype = f" {frames.dtype}" if hasattr(frames, "dtype") else ""
            raise InputError(f"video frames must be a uint8 tensor of shape (k, H, W, 3) with k >= 1; got{dtype} {shape}")
        if frames.shape[0] < 1:
            raise InputError("a video step needs at least one frame per stream")
        if min(frames.shape[1], frames.shape[2]) < 8:
            raise InputError(f"frames are {frames.shape[2]}x{frames.shape[1]}; frames must be at least 8x8 pixels")
        config = state.config
        return uint8_to_model(frames, config.width, config.height, self.device, torch.float32)

    def _run_ready_chunks(self, state: VideoState) -> StepOutput:
        parts = []
        while len(state.pending_frames) >= state.frames_needed:
            chunk = self._enter_chunk(state)
            if state.config.use_denoising_batch:
                finished = self._stream_batch_round(state, chunk)
            else:
                finished = self._sequential(state, chunk)
            parts.append(self._emit(state, finished))
        return _concat_outputs(parts, self._empty_frames(state))

    def _empty_frames(self, state: VideoState) -> torch.Tensor:
        return torch.empty((0, state.config.height, state.config.width, 3), dtype=torch.uint8, device=self.device)

    # ------------------------------------------------------------------ chunks
    def _enter_chunk(self, state: VideoState) -> ChunkInFlight:
        """Take the next chunk's frames, measure motion, encode, and noise it to the first step."""
        count = state.frames_needed
        frames = torch.stack(state.pending_frames[:count], dim=1)[None]  # (1, 3, t, H, W)
        tags = tuple(state.pending_tags[:count])
        del state.pending_frames[:count], state.pending_tags[:count]
        level = state.noise.update(frames)
        latents = self.model.vae.encode(frames, state.encoder).float()
        steps = state.num_steps
        noise = torch.randn((steps, *latents.shape[1:]), generator=state.generator, device=self.device, dtype=torch.float32)
        sigmas = step_sigmas(state.base_timesteps, level, self.model.flow_shift)
        x = level * noise[:1] + (1.0 - level) * latents
        state.chunks_in += 1
        return ChunkInFlight(latents=x, sigmas=sigmas, noise=noise, context=state.context.next_chunk(), tags=tags)

    def _sequential(self, state: VideoState, chunk: ChunkInFlight) -> ChunkInFlight:
        """All steps of one chunk, one forward each, on cache row i for step i."""
        x = chunk.latents
        for i in range(state.num_steps):
            v = self._forward(x, chunk.sigmas[i : i + 1], _row_view(state.cache, i, i + 1), chunk.context)
            x0 = flow_x0(x, v, chunk.sigmas[i])
            if i + 1 < state.num_steps:
                x = flow_renoise(x0, chunk.noise[i + 1 : i + 2], chunk.sigmas[i + 1])
        chunk.latents, chunk.step = x0, state.num_steps
        return chunk

    def _stream_batch_round(self, state: VideoState, new: ChunkInFlight | None) -> ChunkInFlight | None:
        """One forward over every chunk in flight (row = its step); returns the chunk that finished, if any."""
        rows = ([new] if new is not None else []) + state.in_flight
        if not rows:
            return None
        first = rows[0].step
        if [c.step for c in rows] != list(range(first, first + len(rows))):
            raise RuntimeError(f"stream batch rows out of order: steps {[c.step for c in rows]}")
        latents = torch.cat([c.latents for c in rows])
        sigmas = torch.stack([c.sigmas[c.step] for c in rows])
        context = _rows_context([c.context for c in rows])
        v = self._forward(latents, sigmas, _row_view(state.cache, first, first + len(rows)), context)
        x0 = flow_x0(latents, v, sigmas.view(-1, 1, 1, 1, 1))
        finished, still = None, []
        last = state.num_steps - 1
        for r, chunk in enumerate(rows):
            if chunk.step == last:
                chunk.latents, chunk.step, finished = x0[r : r + 1], chunk.step + 1, chunk
                continue
            nxt = chunk.step + 1
            chunk.latents = flow_renoise(x0[r : r + 1], chunk.noise[nxt : nxt + 1], chunk.sigmas[nxt])
            chunk.step = nxt
            still.append(chunk)
        state.in_flight = still
        return finished

    def _forward(
        self, latents: torch.Tensor, sigmas: torch.Tensor, cache: RollingKVCache, context: CrossAttentionContext
    ) -> torch.Tensor:
        """Flow prediction for ``R`` rows; ``sigmas`` (R,) is each row's noise level."""
        frames = latents.shape[2]
        timesteps = model_timesteps(sigmas)[:, None].expand(latents.shape[0], frames)
        return self.model.forward_chunk(latents, timesteps, cache, context).float()

    def _emit(self, state: VideoState, chunk: ChunkInFlight | None) -> StepOutput:
        if chunk is None:
            return StepOutput(self._empty_frames(state))
        video = self.model.vae.decode(chunk.latents, state.decoder)  # (1, 3, t, H, W)
        frames = model_to_uint8(video[0].transpose(0, 1))
        if frames.shape[0] != len(chunk.tags):
            raise RuntimeError(f"decoded {frames.shape[0]} frames for a chunk of {len(chunk.tags)} inputs")
        state.counters.frames_processed += sum(t is not None for t in chunk.tags)
        return StepOutput(frames, tags=chunk.tags)


# ---------------------------------------------------------------------- helpers
def _row_view(cache: RollingKVCache, start: int, stop: int) -> RollingKVCache:
    """Rows ``start:stop`` of a cache as a cache of their own (views: writes land in ``cache``)."""
    if start == 0 and stop == cache.rows:
        return cache
    geometry = dataclasses.replace(cache.geometry, rows=stop - start)
    return RollingKVCache(geometry, cache.k[:, start:stop], cache.v[:, start:stop], cache.frames_written[start:stop])


def _rows_context(contexts: list[CrossAttentionContext]) -> CrossAttentionContext:
    """One context for the rows: shared (no copy) when every row has the same prompt, else concatenated."""
    if all(c is contexts[0] for c in contexts):
        return contexts[0]
    return CrossAttentionContext.concat([c.expand(1) if c.rows == 1 else c for c in contexts])


def _call_tags(tags: Any, count: int) -> tuple[Any, ...]:
    if tags is None:
        return (None,) * count
    tags = tuple(tags)
    if len(tags) != count:
        raise InputError(f"got {len(tags)} tags for {count} frame(s)")
    return tags


def _concat_outputs(parts: list[StepOutput], empty: torch.Tensor) -> StepOutput:
    parts = [p for p in parts if p.frames.shape[0]]
    if not parts:
        return StepOutput(empty)
    if len(parts) == 1:
        return parts[0]
    return StepOutput(torch.cat([p.frames for p in parts]), tags=tuple(t for p in parts for t in p.tags))


def _from_image_config(config: StreamConfig) -> VideoConfig:
    """The video shape of an image-style StreamConfig (the CLI's shape flags)."""
    if config.frame_buffer_size != 1:
        raise ConfigError("frame_buffer_size does not apply to video streams (they buffer frames into chunks; see chunk_frames)")
    if config.mode != "img2img":
        raise ConfigError("video streams are video-to-video; mode txt2img is not supported")
    return VideoConfig(width=config.width, height=config.height, use_denoising_batch=config.use_denoising_batch)
