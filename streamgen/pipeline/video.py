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

Prompt switch by re-cache (``prompt_switch="recache"``, the LongLive
method): when a step applies a new prompt, before any chunk of that step is
denoised, every cache row's history is rebuilt under the new prompt's
context. The stream keeps the clean latents of its finished frames that are
still in the window (:class:`~streamgen.pipeline.video_state.KeptFrame`).
Cache row i is normally written by step i's forward, i.e. from the chunk's
latents at its step-i noise level σᵢ and timestep; the rebuild re-runs the
kept frames the same way: each frame's clean latent re-noised to σᵢ with its
chunk's own step-i noise, at that timestep, chunk by chunk from an empty
cache (sinks first, then the ring frames oldest first), and the resulting
K/V replace the frames' slots (ring keys re-rotated to their absolute
frame index; frame counters unchanged). Rows that hold the same frames share
the forwards. Stream batch: the chunks in flight (at steps 1..n−1) have no
clean latents yet; the slots their frames hold in the lower rows keep their
old K/V, and those chunks continue under the new prompt (their context is
switched at the same moment) over the rebuilt rows. The switch is immediate
(``transition_chunks`` does not apply). ``state.recaches`` and
``state.recache_forwards`` count the switches and the forwards they cost.
Over pipeline stages the stream's chunks on the ring finish first (so
every finished frame is rebuilt, as in sequential mode) and the rebuilt
K/V replace the slots on every rank (:mod:`streamgen.pipeline.video_staged`).

Many streams in one ``step`` call share the work: the call runs in *rounds*;
in each round every stream that has a chunk ready enters it (the VAE encodes
all of them in one call per compatible group), the DiT runs one forward for
the rows of all those streams (plus one per further step of sequential
streams: :mod:`streamgen.pipeline.video_batch`) and the VAE decodes the
chunks that finished in one call per group. Each stream's rows attend only
to its own KV cache rows (one cache segment per stream), so a stream gets
what it would get alone; batching buys larger matmuls and fewer kernel
launches, which is where a GPU's throughput comes from. A stream fed several
chunks' worth of frames takes part in as many rounds.

A step that raises can be undone: :meth:`VideoPipeline.checkpoint` before
the step and :meth:`VideoPipeline.restore` after it put a stream back
exactly (:mod:`streamgen.pipeline.video_checkpoint`).

Text to video (``mode="txt2vid"``): the stream takes no frames
(``step([state], [None])``) and every step generates the next chunk. Its
starting latents are the chunk's ``noise[0]`` at σ = 1 (the first step runs
at t = 1000; :data:`T2V_TIMESTEPS`), drawn from the stream's seeded
generator like a vid2vid chunk's noise; nothing is encoded and the motion
controller is idle. Everything after that is the same: the chunk is
denoised over the KV cache (stream batch or sequential, sharing forwards
and VAE decodes with other streams), decoded and emitted, so modes mix
freely in one ``step``. A txt2vid step's frames carry the step's one tag
(``tags[i] = (tag,)``) or, without one, their index in the stream (0, 1, 2,
... since it began or was reset).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..config import StreamConfig, StreamParams
from ..errors import ConfigError, InputError
from ..frames import model_to_uint8, uint8_to_model
from ..models.video.video_model import VideoModel
from ..models.video.wan_context import CrossAttentionContext
from ..models.video.kv_cache import RollingKVCache
from .noise import MAX_STEPS, MotionNoiseController, base_timesteps, shifted_sigma, step_sigmas
from .contract import StepShape, StreamShape
from .output import PADDING, StepOutput
from .video_batch import FinishedChunk, RoundEntry, denoise_round
from .video_checkpoint import VideoCheckpoint, restore_checkpoint, settle_checkpoint, take_checkpoint
from .video_params import (
    VIDEO_PARAM_NAMES, VideoConfig, VideoParams, check_mode_params, parse_video_config, parse_video_params, parse_video_settings,
)
from .video_state import ChunkInFlight, ContextTransition, KeptFrame, VideoState
from ..models.video.causal_wan import CacheSegment
from ..models.video.flow import flow_renoise
from .noise import model_timesteps

# The txt2vid schedules for 1..4 denoising steps (unshifted grid): from pure noise (t = 1000, σ = 1) in equal strides.
T2V_TIMESTEPS: dict[int, tuple[int, ...]] = {n: tuple(round(1000 * (n - i) / n) for i in range(n)) for n in range(1, MAX_STEPS + 1)}


class VideoPipeline:
    """Shared weights + the causal stream algorithm; all per-stream data lives in :class:`VideoState`.

    Drivers use it through :mod:`streamgen.pipeline.contract` (the methods
    under "contract" below).
    """

    kind = "video"

    def __init__(self, model: VideoModel) -> None:
        if model.stages is not None and type(self) is VideoPipeline:
            raise ConfigError("this model runs as pipeline stages: use StagedVideoPipeline (or video_pipeline_for(model))")
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

    # ---------------------------------------------------------------- contract
    @property
    def model_name(self) -> str:
        return str(self.model.name)

    @property
    def native_size(self) -> tuple[int, int]:
        return tuple(self.model.default_size)

    @property
    def live_params(self) -> tuple[str, ...]:
        return VIDEO_PARAM_NAMES

    @property
    def engine_limits(self) -> None:
        return None  # video backends (eager, compile) take any shape

    @property
    def temporal_factor(self) -> int:
        """Input frames per latent frame: the VAE's temporal compression (a model fact, never assumed)."""
        return int(self.model.vae.temporal_factor)

    def settings_shape(self, settings: Mapping[str, Any]) -> StreamShape:
        config, params = self.validate_settings(settings)
        return self._shape(config, params.num_inference_steps)

    def state_from_settings(self, settings: Mapping[str, Any]) -> VideoState:
        return self.create_state(None, dict(settings))

    def stream_shape(self, state: VideoState) -> StreamShape:
        """The stream's shape under its newest parameters (a queued update included: the next step applies it)."""
        return self._shape(state.config, state.latest_params.num_inference_steps)

    def shape_with(self, state: VideoState, params: VideoParams) -> StreamShape:
        return self._shape(state.config, params.num_inference_steps)

    def step_work(self, state: VideoState, new_frames: int) -> StepShape:
        """Only a step that completes a chunk runs the model; in stream batch its rows are the chunks in flight plus the new one.

        Every txt2vid step makes a chunk (``new_frames`` does not apply: it takes none).
        """
        shape = self.stream_shape(state)
        unit = shape.unit()
        if not state.generates and len(state.pending_frames) + new_frames < state.frames_needed:
            return StepShape(unit.bucket, 0, 1)
        if shape.stream_batch:
            return StepShape(unit.bucket, min(len(state.in_flight) + 1, shape.steps), 1)
        return unit

    def frames_per_step(self, state: VideoState) -> int:
        """Frames per step: one input frame (vid2vid), or the one optional tag of a txt2vid step (it takes no frame)."""
        return state.frames_per_call

    def frame_size(self, state: VideoState) -> tuple[int, int]:
        return state.config.width, state.config.height

    def takes_frames(self, state: VideoState) -> bool:
        return not state.generates

    def params_json(self, state: VideoState) -> dict[str, Any]:
        return state.latest_params.to_dict()

    def prepare_update(self, params: VideoParams) -> None:
        """Encode the prompts ``params`` name now (memoised), off the model thread."""
        for prompt in params.prompt:
            try:
                self.model.encode_prompt(prompt.text)
            except UnicodeError as error:
                raise ConfigError(f"the prompt {prompt.text[:40]!r} cannot be encoded as text ({error.reason})") from None

    def _shape(self, config: VideoConfig, steps: int) -> StreamShape:
        """One step per chunk: ``frames_per_unit`` is a chunk's frames (what vid2vid consumes, what txt2vid makes)."""
        return StreamShape(
            "video", config.width, config.height, 1, steps, config.use_denoising_batch, 1, config.chunk_frames,
            frames_per_unit=self.temporal_factor * config.chunk_frames, generates=config.mode == "txt2vid",
        )

    # ------------------------------------------------------------------ states
    def validate_settings(self, settings: Mapping[str, Any]) -> tuple[VideoConfig, VideoParams]:
        """Check creation settings (shape + live fields) without building a state (cheap); returns them resolved."""
        config, params = parse_video_settings(settings, self._defaults())
        config = config.resolved(self.model.default_size, self.model.recipe.window)
        self._check_size(config)
        return config, params

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
        config = config.resolved(self.model.default_size, self.model.recipe.window)
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
            base_timesteps=self._base_timesteps(params.num_inference_steps, config.mode),
            context=ContextTransition(current=self._prompt_context(params)),
            temporal_factor=self.temporal_factor,
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
            check_mode_params(config.mode, params)
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

    def _base_timesteps(self, steps: int, mode: str) -> torch.Tensor:
        """The stream's schedule: the V2V reference (scaled per chunk by its noise level) or, in txt2vid, the model's recipe (else :data:`T2V_TIMESTEPS`)."""
        if mode == "txt2vid":
            schedule = self.model.recipe.txt2vid_timesteps(steps) or T2V_TIMESTEPS[steps]
        else:
            schedule = base_timesteps(steps)
        return torch.tensor(schedule, dtype=torch.float32, device=self.device)

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
        params = self.parse_update(state, {**(changes or {}), **kwargs})
        state.pending.set(params)
        return params

    def parse_update(self, state: VideoState, changes: Mapping[str, Any]) -> VideoParams:
        """The parameters ``changes`` would put in force, validated but not queued."""
        check_mode_params(state.config.mode, changes)
        return parse_video_params(changes, state.latest_params)

    def apply_pending(self, state: VideoState) -> None:
        """Apply a queued update now (same thread as ``step``)."""
        new = state.pending.take()
        if new is None:
            return
        old = state.params
        state.params = new
        if new.prompt != old.prompt:
            context = self._prompt_context(new)
            if new.prompt_switch == "recache" and new.num_inference_steps == old.num_inference_steps:
                state.context.retarget(context, 0)
                state.in_flight = [dataclasses.replace(chunk, context=context) for chunk in state.in_flight]
                self._recache(state, context)
            else:
                state.context.retarget(context, new.transition_chunks)
        if new.noise_settings != old.noise_settings:
            state.noise.configure(new.noise_settings)
        if new.num_inference_steps != old.num_inference_steps:
            state.cache = self._new_cache(state.config, state.latent_size, new.num_inference_steps)
            state.base_timesteps = self._base_timesteps(new.num_inference_steps, state.config.mode)
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
        state.kept = []
        state.frames_done = 0

    # ----------------------------------------------------------- re-cache
    def _recache(self, state: VideoState, context: CrossAttentionContext) -> None:
        """Rebuild every cache row's history from the kept clean latents under ``context`` (see module docstring)."""
        cache = state.cache
        g = cache.geometry
        if not state.kept or cache.rotation is None or g.adaptive_sink_threshold is not None:
            return
        kept = {frame.index: frame for frame in state.kept}
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, n in enumerate(cache.frames_written.tolist()):  # a host sync, on a switch only
            window = [*range(min(g.sink_frames, n)), *range(max(g.sink_frames, n - g.ring_frames), n)]
            frames = tuple(f for f in window if f < state.frames_done)  # finished ones: the rest are in flight
            if frames:
                groups.setdefault(frames, []).append(row)
        if not groups:
            return
        if cache.journal is not None:
            cache.journal.save_cache(cache)
        for frames, rows in groups.items():
            self._rebuild_rows(state, context, [kept[f] for f in frames], rows)
        state.recaches += 1

    def _rebuild_rows(self, state: VideoState, context: CrossAttentionContext, frames: list[KeptFrame], rows: list[int]) -> None:
        """Re-run ``frames`` (oldest first, one forward per chunk) for cache ``rows`` from an empty cache; write their K/V back."""
        h, w = state.latent_size
        config = state.config
        scratch = self.model.transformer.new_cache(
            len(rows), h, w, sink_frames=config.sink_frames, ring_frames=config.ring_frames, chunk_frames=config.chunk_frames
        )
        runs: list[list[KeptFrame]] = []
        for frame in frames:
            if runs and runs[-1][-1].chunk == frame.chunk and len(runs[-1]) < config.chunk_frames:
                runs[-1].append(frame)
            else:
                runs.append([frame])
        for run in runs:
            latents = torch.cat([
                torch.cat([flow_renoise(f.clean, f.noise[r : r + 1], f.sigmas[r]) for f in run], dim=2) for r in rows
            ])
            timesteps = torch.stack([model_timesteps(torch.stack([f.sigmas[r] for f in run])) for r in rows])
            self.model.forward_chunks(latents, timesteps, [CacheSegment(scratch)], context)
            state.recache_forwards += 1
        state.cache.replace_frames(rows, scratch, [f.index for f in frames])

    def _keep_frames(self, state: VideoState, chunk: ChunkInFlight) -> None:
        """A chunk finished: keep its frames' clean latents; drop the kept frames that left the window."""
        first = state.frames_done
        count = chunk.latents.shape[2]
        new = [
            KeptFrame(first + j, first, chunk.latents[:, :, j : j + 1], chunk.noise[:, :, j : j + 1], chunk.sigmas)
            for j in range(count)
        ]
        state.frames_done = first + count
        sinks, oldest = state.config.sink_frames, state.frames_done - state.config.ring_frames
        state.kept = [f for f in state.kept + new if f.index < sinks or f.index >= oldest]

    # ------------------------------------------------------------- rollback
    def checkpoint(self, state: VideoState) -> VideoCheckpoint:
        """An opaque checkpoint of ``state``, to :meth:`restore` if the next step or flush raises (cheap)."""
        return take_checkpoint(state)

    def restore(self, state: VideoState, checkpoint: VideoCheckpoint) -> None:
        """Put ``state`` back exactly as it was at ``checkpoint`` (after a step that raised, at any point).

        Raises RuntimeError if a step over the stream succeeded since (the checkpoint is spent).
        """
        restore_checkpoint(state, checkpoint)

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
        tags of the input frames they depict. The streams' chunks share DiT
        forwards and VAE calls (see module docstring). A txt2vid stream takes
        None and makes one chunk per step; ``tags[i]`` is then None or one
        tag, which every frame of that chunk carries (without it, their
        index in the stream).
        """
        self._buffer_inputs(states, frames, tags)
        outputs = self._run_ready_chunks(states)
        for state in states:
            settle_checkpoint(state)
        return outputs

    def _buffer_inputs(self, states: Sequence[VideoState], frames: Sequence[torch.Tensor | None], tags: Sequence[Any] | None) -> None:
        """Check a step's inputs (before anything changes), apply queued updates, buffer the frames."""
        if len(frames) != len(states):
            raise InputError(f"got {len(frames)} frame batches for {len(states)} streams")
        if len(set(map(id, states))) != len(states):
            raise InputError("a stream may appear only once per step")
        tags = list(tags) if tags is not None else [None] * len(states)
        if len(tags) != len(states):
            raise InputError(f"got {len(tags)} tag tuples for {len(states)} streams")
        images = [self._prepare_input(s, f) for s, f in zip(states, frames)]
        call_tags = [_call_tags(t, image.shape[0]) if image is not None else _step_tag(t) for t, image in zip(tags, images)]
        for state, image, tag in zip(states, images, call_tags):
            self.apply_pending(state)
            if image is None:
                _queue_generated_chunk(state, tag)
                continue
            state.counters.frames_in += image.shape[0]
            state.pending_frames.extend(image.unbind(0))
            state.pending_tags.extend(tag)

    @torch.inference_mode()
    def flush(self, state: VideoState) -> StepOutput:
        """End of a finite stream: complete a partial chunk with copies of the last frame and drain the stream batch.

        Only frames that depict real inputs come back (the copies' frames are left out).
        """
        self._pad_last_chunk(state)
        parts = self._run_ready_chunks([state])
        while state.in_flight:
            parts += self._drain_round(state)
        settle_checkpoint(state)
        return concat_outputs(parts, self._empty_frames(state)).real()

    def _pad_last_chunk(self, state: VideoState) -> None:
        """End of a finite stream: apply queued updates, complete a partial chunk with copies of the last frame (tag PADDING)."""
        self.apply_pending(state)
        if state.pending_frames:
            missing = state.frames_needed - len(state.pending_frames)
            state.pending_frames.extend([state.pending_frames[-1]] * missing)
            state.pending_tags.extend([PADDING] * missing)

    def _prepare_input(self, state: VideoState, frames: torch.Tensor | None) -> torch.Tensor | None:
        if state.generates:
            if frames is not None:
                raise InputError("this video stream is txt2vid: it takes no frames; pass None and each step generates the next chunk")
            return None
        if frames is None:
            raise InputError("this video stream is vid2vid and needs input frames: a uint8 tensor of shape (k, H, W, 3) with k >= 1 (mode txt2vid generates without input)")
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

    def _run_ready_chunks(self, states: Sequence[VideoState]) -> list[StepOutput]:
        """Rounds until no stream has a whole chunk pending; each round batches the streams that have one."""
        parts: dict[VideoState, list[StepOutput]] = {state: [] for state in states}
        while ready := [s for s in states if len(s.pending_frames) >= s.frames_needed]:
            entries = [RoundEntry(state, chunk) for state, chunk in zip(ready, self._enter_chunks(ready))]
            for state, output in self._decode(denoise_round(self.model.forward_chunks, entries)):
                parts[state].append(output)
        return [concat_outputs(parts[state], self._empty_frames(state)) for state in states]

    def _drain_round(self, state: VideoState) -> list[StepOutput]:
        """One forward over the stream batch's chunks in flight, no new chunk: the oldest one finishes."""
        finished = denoise_round(self.model.forward_chunks, [RoundEntry(state, None)])
        return [output for _, output in self._decode(finished)]

    def _empty_frames(self, state: VideoState) -> torch.Tensor:
        return torch.empty((0, state.config.height, state.config.width, 3), dtype=torch.uint8, device=self.device)

    # ------------------------------------------------------------------ chunks
    def _enter_chunks(self, states: list[VideoState]) -> list[ChunkInFlight]:
        """Take each stream's next chunk of frames, measure its motion, encode them all, noise each to its first step.

        A txt2vid stream's chunk has no frames: it enters as pure noise (no motion measured, nothing encoded).
        """
        taken = [_take_chunk_frames(state) for state in states]
        inputs = [(state, frames) for state, (frames, _) in zip(states, taken) if frames is not None]
        levels = [state.noise.update(frames) for state, frames in inputs]
        latents = self.model.vae.encode_batch([frames for _, frames in inputs], [state.encoder for state, _ in inputs]) if inputs else []
        encoded = {state: (z, level) for (state, _), z, level in zip(inputs, latents, levels)}
        chunks = []
        for state, (frames, tags) in zip(states, taken):
            if frames is None:
                chunks.append(self._noise_chunk(state, tags))
            else:
                z, level = encoded[state]
                chunks.append(self._noised_chunk(state, z.float(), level, tags))
        return chunks

    def _noise_chunk(self, state: VideoState, tags: tuple[Any, ...]) -> ChunkInFlight:
        """A txt2vid chunk: its noise for every step drawn from the stream's generator; ``noise[0]`` is its start (σ = 1)."""
        t = state.config.chunk_frames
        h, w = state.latent_size
        noise = torch.randn(
            (state.num_steps, self.model.vae.z_dim, t, h, w), generator=state.generator, device=self.device, dtype=torch.float32
        )
        sigmas = shifted_sigma(state.base_timesteps, self.model.flow_shift)
        state.chunks_in += 1
        return ChunkInFlight(latents=noise[:1], sigmas=sigmas, noise=noise, context=state.context.next_chunk(), tags=tags)

    def _noised_chunk(self, state: VideoState, latents: torch.Tensor, level: torch.Tensor, tags: tuple[Any, ...]) -> ChunkInFlight:
        """Draw the chunk's noise for every step (from the stream's generator) and noise it to step 0."""
        noise = torch.randn(
            (state.num_steps, *latents.shape[1:]), generator=state.generator, device=self.device, dtype=torch.float32
        )
        sigmas = step_sigmas(state.base_timesteps, level, self.model.flow_shift)
        x = level * noise[:1] + (1.0 - level) * latents
        state.chunks_in += 1
        return ChunkInFlight(latents=x, sigmas=sigmas, noise=noise, context=state.context.next_chunk(), tags=tags)

    def _decode(self, finished: list[FinishedChunk]) -> list[tuple[VideoState, StepOutput]]:
        """Decode the chunks that finished (one VAE call per compatible group) into each stream's output frames."""
        if not finished:
            return []
        for f in finished:
            self._keep_frames(f.state, f.chunk)
        videos = self.model.vae.decode_batch([f.chunk.latents for f in finished], [f.state.decoder for f in finished])
        return [(f.state, _chunk_output(f.state, f.chunk, video)) for f, video in zip(finished, videos)]


# ---------------------------------------------------------------------- helpers
def _take_chunk_frames(state: VideoState) -> tuple[torch.Tensor | None, tuple[Any, ...]]:
    """The next chunk's frames ``(1, 3, t, H, W)`` (None for a txt2vid chunk) and tags, removed from the stream's pending input."""
    count = state.frames_needed
    frames = None if state.generates else torch.stack(state.pending_frames[:count], dim=1)[None]
    tags = tuple(state.pending_tags[:count])
    del state.pending_frames[:count], state.pending_tags[:count]
    return frames, tags


def _queue_generated_chunk(state: VideoState, tag: Any) -> None:
    """A txt2vid step asks for one chunk: placeholders for its frames, tagged ``tag`` (None: each frame's index in the stream).

    A chunk still queued (a failed step that was not undone) is generated first, instead of a second one.
    """
    if state.pending_frames:
        return
    count, first = state.frames_needed, state.frames_entered
    state.pending_frames.extend([None] * count)
    state.pending_tags.extend([tag] * count if tag is not None else range(first, first + count))


def _chunk_output(state: VideoState, chunk: ChunkInFlight, video: torch.Tensor) -> StepOutput:
    """A decoded chunk ``(1, 3, t, H, W)`` as uint8 frames with the tags of the inputs they depict."""
    frames = model_to_uint8(video[0].transpose(0, 1))
    if frames.shape[0] != len(chunk.tags):
        raise RuntimeError(f"decoded {frames.shape[0]} frames for a chunk of {len(chunk.tags)} inputs")
    state.counters.frames_processed += sum(t is not PADDING for t in chunk.tags)
    return StepOutput(frames, tags=chunk.tags)


def _step_tag(tags: Any) -> Any:
    """The one tag of a txt2vid step (None when it has none)."""
    if tags is None:
        return None
    tags = tuple(tags)
    if len(tags) > 1:
        raise InputError(f"a txt2vid step takes at most one tag (it makes one chunk from no input); got {len(tags)}")
    return tags[0] if tags else None


def _call_tags(tags: Any, count: int) -> tuple[Any, ...]:
    if tags is None:
        return (None,) * count
    tags = tuple(tags)
    if len(tags) != count:
        raise InputError(f"got {len(tags)} tags for {count} frame(s)")
    return tags


def concat_outputs(parts: list[StepOutput], empty: torch.Tensor) -> StepOutput:
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
        raise ConfigError("mode txt2img is an image stream mode; video streams take mode vid2vid or txt2vid (a VideoConfig or a settings mapping)")
    return VideoConfig(width=config.width, height=config.height, use_denoising_batch=config.use_denoising_batch)
