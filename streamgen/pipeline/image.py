"""The image stream pipeline: StreamDiffusion's techniques over many sessions at once.

Terms: a stream has n denoising *slots* (``t_index_list``) and f frames per
call. Slot 0 holds the newest frame noised to t_0; slot i holds an older frame
already denoised i times. One step:

1. applies queued parameter updates (prompt encoding happens here, on the
   worker thread, never on an event loop);
2. runs the similarity filter and skips unchanged frames;
3. encodes the frames of every stream in one VAE call per resolution;
4. runs each stream's *program* (a generator that yields rows for the UNet
   and receives their noise estimates); the driver gathers the rows of all
   streams into ONE UNet call per round and resolution;
5. decodes the finished latents of every stream in one VAE call.

Stream batch (``use_denoising_batch``): every slot is one group of rows in a
single UNet call; the most-denoised slot is the output, so an output lags its
input by n − 1 calls. The buffer of a new stream is *prefilled* by denoising
its first frame slot by slot, so the very first call already returns a fully
denoised frame (no garbage warm-up frames). Sequential mode runs the n slots
one after another on the same frame (n calls, no lag). Both modes compute the
same numbers; tests hold them to that.

Residual CFG (guidance g, delta δ): ``full`` adds an uncond row per row,
``self`` uses δ·stock noise as the uncond estimate (no extra rows),
``initialize`` measures the uncond estimate of slot 0 once with the negative
prompt ((n+1)·f rows on that call) and then behaves like ``self``. The stock
noise of slot i+1 is the noise that, paired with the negative estimate of x0
carried from slot i, re-creates slot i+1's latent:

    Δ_i = x0(ε̂_i) − x0(stock_i) = c_out_i · β_i · (stock_i − ε̂_i) / α_i
    stock_{i+1} = noise_{i+1} + (α_{i+1} / β_{i+1}) · Δ_i

and slot 0's stock is the noise actually added to the input (``self``) or the
measured uncond estimate (``initialize``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict, deque
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import StreamConfig, StreamParams
from ..errors import ConfigError, InputError
from ..frames import model_to_uint8, uint8_to_model
from ..models.image.image_model import ImageModel, PromptEmbedding
from ..params import PARAM_NAMES, parse_params
from ..runtime.engine_limits import EngineLimits, engine_limits_of
from ..models.preprocessors import PreprocessorBank
from .contract import StepShape, StreamShape
from .image_control import (
    ControlImages,
    ControlRows,
    PreparedFrames,
    ReferenceRows,
    control_residuals,
    first_rows,
    make_control_images,
    slot_control_rows,
)
from .image_steering import ImageSteering
from .image_settings import TXT2IMG_STRENGTH, full_cfg_rows, parse_image_settings
from .image_state import ImageCheckpoint, ImageStreamState
from .output import PADDING, StepOutput
from .prompts import PromptTransition, blend_prompts
from .schedule import SlotSchedule, make_slot_schedule
from .seeds import blended_noise
from .similarity import SimilarityFilter


@dataclass(frozen=True)
class RowSegment:
    """A run of UNet rows of one stream that share a prompt."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    prompt: PromptEmbedding
    time_ids: torch.Tensor | None
    controls: tuple[ControlRows, ...] = ()
    reference: ReferenceRows | None = None


Program = Generator[list[RowSegment], list[torch.Tensor], torch.Tensor]


class ImagePipeline(ImageSteering):
    """Shared weights + the stream algorithm; all per-stream data lives in states.

    Drivers use it through :mod:`streamgen.pipeline.contract` (the methods
    under "contract" below), the Python API through ``create_state`` /
    ``step`` / ``update``.
    """

    kind = "image"

    def __init__(self, model: ImageModel) -> None:
        self.model = model
        self.preprocessors = PreprocessorBank()  # shared, like the weights: a depth estimator loads once
        self._references: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._references_lock = threading.Lock()
        # The Python API loads a ControlNet or a preprocessor's estimator the first time a stream names it; a
        # server turns this off after loading what its operator chose, so a client can never make it load a path.
        self.load_on_demand = True

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # ---------------------------------------------------------------- contract
    @property
    def model_name(self) -> str:
        return str(self.model.name)

    @property
    def native_size(self) -> tuple[int, int]:
        return tuple(self.model.default_size)

    @property
    def live_params(self) -> tuple[str, ...]:
        return PARAM_NAMES

    @property
    def engine_limits(self) -> EngineLimits | None:
        return engine_limits_of(self.model)

    def settings_shape(self, settings: Mapping[str, Any]) -> StreamShape:
        """Validate a session's settings (over the model's defaults) and say what its steps will cost."""
        config, params = parse_image_settings(settings, self.model.default_params)
        self.check_control(params, load=False)
        return self._shape(config.resolved(self.native_size), params)

    def state_from_settings(self, settings: Mapping[str, Any]) -> ImageStreamState:
        config, params = parse_image_settings(settings, self.model.default_params)
        return self.create_state(config, params)

    def stream_shape(self, state: ImageStreamState) -> StreamShape:
        """The stream's shape under its newest parameters (a queued update included: the next step applies it)."""
        return self._shape(state.config, state.latest_params)

    def shape_with(self, state: ImageStreamState, params: StreamParams) -> StreamShape:
        return self._shape(state.config, params)

    def step_work(self, state: ImageStreamState, new_frames: int) -> StepShape:
        """One pass of its rows; a stream-batch stream whose buffer is still empty fills it one slot per pass."""
        shape = self.stream_shape(state)
        unit = shape.unit()
        if shape.stream_batch and state.buffer is None:
            return StepShape(unit.bucket, shape.frames_per_call * shape.cfg_rows, shape.steps)
        return unit

    def frames_per_step(self, state: ImageStreamState) -> int:
        return state.frames_per_call

    def frame_size(self, state: ImageStreamState) -> tuple[int, int]:
        return state.config.width, state.config.height

    def takes_frames(self, state: ImageStreamState) -> bool:
        return state.config.mode != "txt2img"

    def prepare_input(self, state: ImageStreamState, frames: torch.Tensor) -> PreparedFrames:
        """One call's frames made ready for :meth:`step` on the caller's thread: scaled, on the device, control images made.

        The server's input thread calls this, so the preprocessors overlap
        the model step; ``step`` makes only what is missing (a setting
        changed in between, or the feedback image, which must be the newest
        output).
        """
        images = self._convert_frames(state, frames)
        controls = make_control_images(self.preprocessors, state.latest_params, images, None, skip_feedback=True)
        return PreparedFrames(images, controls, frames)

    def params_json(self, state: ImageStreamState) -> dict[str, Any]:
        return state.latest_params.to_dict()

    def prepare_update(self, params: StreamParams) -> None:
        """Encode the prompts and the reference image ``params`` name now (memoised), off the model thread, so the step that applies them finds them ready."""
        for text in [p.text for p in params.prompt] + [params.negative_prompt]:
            try:
                self.model.encode_prompt(text)
            except UnicodeError as error:
                raise ConfigError(f"the prompt {text[:40]!r} cannot be encoded as text ({error.reason})") from None
        if params.ip_adapter_image is not None and self.model.ip_adapter is not None:
            self.reference_embeddings(params.ip_adapter_image)

    @staticmethod
    def _shape(config: StreamConfig, params: StreamParams) -> StreamShape:
        return StreamShape(
            "image", config.width, config.height, config.frame_buffer_size, len(params.resolved_t_index_list()),
            config.use_denoising_batch, full_cfg_rows(params), frames_per_unit=config.frame_buffer_size,
            controlnets=sum(1 for entry in params.controlnets if entry.enabled and entry.conditioning_scale > 0),
        )

    # ------------------------------------------------------------------ states
    def create_state(
        self,
        config: StreamConfig | None = None,
        params: StreamParams | Mapping[str, Any] | None = None,
    ) -> ImageStreamState:
        """A fresh stream of this pipeline's model (encodes its prompts: call off the event loop)."""
        config = (config or StreamConfig()).resolved(self.model.default_size)
        factor = self.model.vae_scale_factor
        if config.width % factor or config.height % factor:
            raise ConfigError(f"width and height must be multiples of {factor} for {self.model.name}; got {config.width}x{config.height}")
        if params is None:
            params = StreamParams(cfg_type="none") if config.mode == "txt2img" else StreamParams()
        elif not isinstance(params, StreamParams):
            base = StreamParams(cfg_type="none") if config.mode == "txt2img" else None
            params = parse_params(params, base)
        self.check_control(params, load=True)
        limits = engine_limits_of(self.model)
        if limits is not None:
            unit = self._shape(config, params).unit()
            limits.check_stream(config.width, config.height, unit.rows)
        h, w = self.model.latent_size(config.width, config.height)
        latent_shape = (self.model.latent_channels, h, w)
        schedule = self._schedule(params, config)
        init_noise = self._noise(params, schedule, latent_shape)
        prompt = blend_prompts(params.prompt, params.prompt_interpolation, self.model.encode_prompt)
        seed = params.seed[0].seed
        state = ImageStreamState(
            config=config,
            params=params,
            latent_shape=latent_shape,
            schedule=schedule,
            init_noise=init_noise,
            stock_noise=init_noise.clone(),
            prompt=PromptTransition(current=prompt),
            negative=self.model.encode_prompt(params.negative_prompt),
            time_ids=self.model.sdxl_time_ids(config.width, config.height) if self.model.is_sdxl else None,
            noise_generator=torch.Generator(device="cpu").manual_seed(seed),
            similarity=SimilarityFilter(seed=seed),
        )
        return state

    def update(self, state: ImageStreamState, changes: Mapping[str, Any] | None = None, **kwargs: Any) -> StreamParams:
        """Validate a live update now; it takes effect at the stream's next step.

        Raises :class:`~streamgen.errors.ConfigError` for unknown fields,
        bad values or settings that cannot change on a running stream. Several
        updates before a step merge in order.
        """
        params = self.parse_update(state, {**(changes or {}), **kwargs})
        state.pending.set(params)
        return params

    def parse_update(self, state: ImageStreamState, changes: Mapping[str, Any]) -> StreamParams:
        """The parameters ``changes`` would put in force, validated but not queued."""
        params = parse_params(changes, state.latest_params)
        if state.config.mode == "txt2img" and "strength" in changes:
            raise ConfigError(TXT2IMG_STRENGTH)
        self.check_control(params, load=True)
        return params

    def apply_pending(self, state: ImageStreamState) -> None:
        """Apply a queued update now instead of at the next step (same thread as ``step``)."""
        pending = state.pending.take()
        if pending is not None:
            self._apply_params(state, pending)

    def checkpoint(self, state: ImageStreamState) -> ImageCheckpoint:
        """A cheap copy of what :meth:`step` may change (the server restores it when a batched step raises)."""
        return state.checkpoint()

    def restore(self, state: ImageStreamState, saved: ImageCheckpoint) -> None:
        """Undo everything a step did to ``state`` since ``saved`` was taken (queued updates are kept)."""
        state.restore(saved)

    def reset(self, state: ImageStreamState) -> None:
        """Forget the stream's history (buffer, filter, measured CFG), keep its parameters."""
        state.buffer = None
        state.buffer_tags.clear()
        state.buffer_controls.clear()
        state.uncond_measured = False
        state.last_output = None
        state.similarity.reset()
        state.force_process = True

    # -------------------------------------------------------------- parameters
    def _schedule(self, params: StreamParams, config: StreamConfig) -> SlotSchedule:
        return make_slot_schedule(
            params.resolved_t_index_list(), config.frame_buffer_size, self.model.numerics, self.device, self.dtype
        )

    def _noise(self, params: StreamParams, schedule: SlotSchedule, latent_shape: tuple[int, int, int]) -> torch.Tensor:
        shape = (schedule.num_slots * schedule.frames_per_slot, *latent_shape)
        return blended_noise(params.seed, params.seed_interpolation, shape, self.device, self.dtype)

    def _apply_params(self, state: ImageStreamState, new: StreamParams) -> None:
        old = state.params
        if (new.prompt, new.prompt_interpolation) != (old.prompt, old.prompt_interpolation):
            target = blend_prompts(new.prompt, new.prompt_interpolation, self.model.encode_prompt)
            state.prompt.retarget(target, new.transition_frames, new.prompt_interpolation)
        if new.negative_prompt != old.negative_prompt:
            state.negative = self.model.encode_prompt(new.negative_prompt)
            state.uncond_measured = False
        schedule = state.schedule
        if new.resolved_t_index_list() != old.resolved_t_index_list():
            schedule = self._schedule(new, state.config)
        noise = state.init_noise
        seed_changed = (new.seed, new.seed_interpolation) != (old.seed, old.seed_interpolation)
        if seed_changed or schedule.num_slots != state.schedule.num_slots:
            noise = self._noise(new, schedule, state.latent_shape)
        if seed_changed or new.cfg_type != old.cfg_type:
            state.uncond_measured = False
        if schedule.num_slots != state.schedule.num_slots:
            state.buffer = None  # a different number of slots: prefill again from the next frame
            state.buffer_tags.clear()
            state.buffer_controls.clear()
            state.stock_noise = noise.clone()
        elif schedule is not state.schedule or noise is not state.init_noise or new.renoise != old.renoise:
            self._rebase(state, schedule, noise, old.renoise, new.renoise)
        state.schedule, state.init_noise = schedule, noise
        if not state.uncond_measured:
            f = schedule.frames_per_slot
            state.stock_noise[:f] = noise[:f]
        if not new.similarity_filter:
            state.similarity.reset()
        state.params = new
        state.force_process = True

    def _rebase(self, state: ImageStreamState, schedule: SlotSchedule, noise: torch.Tensor, old_renoise: bool, new_renoise: bool) -> None:
        """Re-express buffered slots at new timesteps / noise without losing them.

        A buffered slot is x_i = α_i·x0 + r·β_i·ε_i with known ε_i, so x0 is
        recovered exactly and re-noised with the new α, β, ε. Stock noise
        keeps its residual part Δ the same way. Nothing is flushed.
        """
        old = state.schedule
        r_old, r_new = float(old_renoise), float(new_renoise)
        if state.buffer is not None and state.buffer.shape[0]:
            rows = slice(schedule.frames_per_slot, None)
            x0 = (state.buffer - r_old * old.beta[rows] * state.init_noise[rows]) / old.alpha[rows]
            state.buffer = schedule.alpha[rows] * x0 + r_new * schedule.beta[rows] * noise[rows]
        rows = slice(schedule.frames_per_slot, None)
        residual = (state.stock_noise[rows] - r_old * state.init_noise[rows]) * old.beta[rows] / old.alpha[rows]
        state.stock_noise[rows] = r_new * noise[rows] + schedule.alpha[rows] / schedule.beta[rows] * residual

    # -------------------------------------------------------------------- step
    @torch.inference_mode()
    def step(
        self,
        states: Sequence[ImageStreamState],
        frames: Sequence[torch.Tensor | None],
        tags: Sequence[Any] | None = None,
    ) -> list[StepOutput]:
        """Advance several streams by one call each, batching their model work.

        ``frames[i]`` is (f, H, W, 3) uint8 for img2img streams (any size;
        scaled to the stream's resolution) and None for txt2img streams.
        ``tags[i]`` is a tuple of f per-frame tags (or None); each output
        carries the tags of the input it depicts.
        """
        if len(frames) != len(states):
            raise InputError(f"got {len(frames)} frame batches for {len(states)} streams")
        if len(set(map(id, states))) != len(states):
            raise InputError("a stream may appear only once per step")
        tags = [self._call_tags(s, t) for s, t in zip(states, tags if tags is not None else [None] * len(states))]
        inputs = [self._prepare_input(s, f) for s, f in zip(states, frames)]
        images = [i.images if i is not None else None for i in inputs]
        for state in states:
            self.apply_pending(state)
            state.counters.frames_in += state.frames_per_call

        outputs: list[StepOutput | None] = [None] * len(states)
        active: list[int] = []
        for i, (state, image) in enumerate(zip(states, images)):
            if self._should_skip(state, image):
                state.counters.frames_skipped += state.frames_per_call
                outputs[i] = StepOutput(state.last_output, tags=tags[i], skipped=True)
            else:
                active.append(i)

        for i in active:
            states[i].prompt.advance()
        controls = [self._call_controls(states[i], images[i], inputs[i]) for i in active]
        start_latents = self._start_latents([states[i] for i in active], [images[i] for i in active])
        programs = [self._program(states[i], x, tags[i], c) for i, x, c in zip(active, start_latents, controls)]
        final_latents = self._drive(programs)
        decoded = self._decode_grouped([states[i] for i in active], [x for x, _ in final_latents])
        for i, call_controls in zip(active, controls):
            states[i].last_controls = call_controls
        for i, frames_out, (_, tag) in zip(active, decoded, final_latents):
            state = states[i]
            state.last_output = frames_out
            state.counters.frames_processed += state.frames_per_call
            state.force_process = state.prompt.in_progress
            outputs[i] = StepOutput(frames_out, tags=tag, skipped=False)
        for state, call in zip(states, frames):
            state.last_input = call.source if isinstance(call, PreparedFrames) else call
        return outputs  # type: ignore[return-value]

    def flush(self, state: ImageStreamState) -> StepOutput:
        """End of a finite stream: the frames still inside the stream batch come out.

        A stream-batch stream's output trails its input by ``num_slots − 1``
        calls. The last call's frames are repeated (tagged None: padding)
        until every buffered input is out; the similarity filter is bypassed
        for those calls (it would skip a repeated frame and the buffer would
        never move). Outputs that depict padding are left out, so the result
        holds exactly the frames not delivered yet, in order.
        """
        empty = StepOutput(torch.zeros(0, state.config.height, state.config.width, 3, dtype=torch.uint8, device=self.device))
        if state.buffer is None or not state.config.use_denoising_batch or state.num_slots < 2:
            return empty
        padding = state.last_input
        frames, tags = [], []
        for _ in range(state.num_slots - 1):
            state.force_process = True
            out = self.step([state], [padding], [(PADDING,) * state.frames_per_call])[0].real()
            if out.tags:
                frames.append(out.frames)
                tags += out.tags
        if not frames:
            return empty
        return StepOutput(torch.cat(frames), tags=tuple(tags))

    @staticmethod
    def _call_tags(state: ImageStreamState, tags: Any) -> tuple[Any, ...]:
        f = state.frames_per_call
        if tags is None:
            return (None,) * f
        tags = tuple(tags)
        if len(tags) != f:
            raise InputError(f"got {len(tags)} tags for a call of {f} frame(s)")
        return tags

    def _prepare_input(self, state: ImageStreamState, frames: torch.Tensor | PreparedFrames | None) -> PreparedFrames | None:
        config = state.config
        if config.mode == "txt2img":
            if frames is not None:
                raise InputError("this stream is txt2img; pass None instead of frames")
            return None
        if frames is None:
            raise InputError("this stream is img2img and needs input frames")
        if isinstance(frames, PreparedFrames):
            return frames
        return PreparedFrames(self._convert_frames(state, frames), {}, frames)

    def _convert_frames(self, state: ImageStreamState, frames: Any) -> torch.Tensor:
        config = state.config
        if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            shape = tuple(frames.shape) if hasattr(frames, "shape") else type(frames).__name__
            raise InputError(f"frames must be a uint8 tensor of shape (f, H, W, 3); got {shape}")
        if frames.shape[0] != config.frame_buffer_size:
            raise InputError(f"this stream takes {config.frame_buffer_size} frame(s) per call (frame_buffer_size); got {frames.shape[0]}")
        return uint8_to_model(frames, config.width, config.height, self.device, self.dtype)

    def _should_skip(self, state: ImageStreamState, image: torch.Tensor | None) -> bool:
        params = state.params
        if image is None or not params.similarity_filter:
            return False
        if state.force_process or state.last_output is None:
            state.similarity.mark_processed(image)
            return False
        return state.similarity.should_skip(image, params.similarity_threshold, params.max_skip_frames)

    def _start_latents(self, states: list[ImageStreamState], images: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """Noised slot-0 latents for each stream (img2img encodes in one VAE call per resolution)."""
        encoded = self._encode_grouped(states, images)
        out = []
        for state, latents in zip(states, encoded):
            f = state.frames_per_call
            sched = state.schedule
            if latents is None:  # txt2img: fresh noise every call
                noise = torch.randn((f, *state.latent_shape), generator=state.noise_generator).to(self.device, self.dtype)
                state.stock_noise[:f] = noise if not state.uncond_measured else state.stock_noise[:f]
                out.append(noise)
            else:
                out.append(sched.alpha[:f] * latents + sched.beta[:f] * state.init_noise[:f])
        return out

    def _encode_grouped(self, states: list[ImageStreamState], images: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            if image is not None:
                groups[tuple(image.shape[-2:])].append(i)
        out: list[torch.Tensor | None] = [None] * len(images)
        for members in groups.values():
            latents = self.model.encode_images(torch.cat([images[i] for i in members]))
            for i, part in zip(members, latents.split([images[i].shape[0] for i in members])):
                out[i] = part
        return out

    def _decode_grouped(self, states: list[ImageStreamState], latents: list[torch.Tensor]) -> list[torch.Tensor]:
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, x in enumerate(latents):
            groups[tuple(x.shape[1:])].append(i)
        out: list[torch.Tensor | None] = [None] * len(latents)
        for members in groups.values():
            images = model_to_uint8(self.model.decode_latents(torch.cat([latents[i] for i in members])))
            for i, part in zip(members, images.split([latents[i].shape[0] for i in members])):
                out[i] = part
        return out  # type: ignore[return-value]

    # ---------------------------------------------------------------- programs
    def _program(self, state: ImageStreamState, x_t0: torch.Tensor, tag: tuple[Any, ...], controls: ControlImages) -> Generator:
        if state.config.use_denoising_batch:
            return self._stream_batch_program(state, x_t0, tag, controls)
        return self._sequential_program(state, x_t0, tag, controls)

    def _stream_batch_program(self, state: ImageStreamState, x_t0: torch.Tensor, tag: tuple[Any, ...], controls: ControlImages) -> Generator:
        n, f = state.num_slots, state.frames_per_call
        if state.buffer is None:
            yield from self._prefill(state, x_t0, tag, controls)
        # slot k > 0 holds the frame of k calls ago: the buffered deques run oldest (left) to newest (right)
        slot_images = [controls, *(state.buffer_controls[-k] for k in range(1, n))]
        x0 = yield from self._denoise_slots(state, 0, n, torch.cat([x_t0, state.buffer]), slot_images)
        state.buffer = self._renoise(state, 1, x0[:-f])
        state.buffer_tags.append(tag)
        state.buffer_controls.append(controls)
        state.buffer_controls.popleft()
        return x0[-f:], state.buffer_tags.popleft()

    def _prefill(self, state: ImageStreamState, x_t0: torch.Tensor, tag: tuple[Any, ...], controls: ControlImages) -> Generator:
        """Fill slots 1..n-1 with the first frame denoised 1..n-1 times, one slot per round."""
        x, slots = x_t0, []
        for i in range(state.num_slots - 1):
            x0 = yield from self._denoise_slots(state, i, 1, x, [controls])
            x = self._renoise(state, i + 1, x0)
            slots.append(x)
        state.buffer = torch.cat(slots) if slots else x_t0.new_empty((0, *x_t0.shape[1:]))
        state.buffer_tags = deque([tag] * (state.num_slots - 1))
        state.buffer_controls = deque([controls] * (state.num_slots - 1))

    def _sequential_program(self, state: ImageStreamState, x_t0: torch.Tensor, tag: tuple[Any, ...], controls: ControlImages) -> Generator:
        x = x_t0
        for i in range(state.num_slots):
            x0 = yield from self._denoise_slots(state, i, 1, x, [controls])
            if i < state.num_slots - 1:
                x = self._renoise(state, i + 1, x0)
        return x0, tag

    def _renoise(self, state: ImageStreamState, first_slot: int, x0: torch.Tensor) -> torch.Tensor:
        """Latents of slots first_slot.. from the x0 estimates of the slots before them."""
        rows = state.schedule.rows(first_slot, x0.shape[0] // state.frames_per_call)
        out = state.schedule.alpha[rows] * x0
        if state.params.renoise:
            out = out + state.schedule.beta[rows] * state.init_noise[rows]
        return out

    def _denoise_slots(
        self, state: ImageStreamState, first_slot: int, num_slots: int, x: torch.Tensor, slot_images: list[ControlImages]
    ) -> Generator:
        """One UNet round for consecutive slots of one stream; returns their x0 estimates.

        ``slot_images[k]`` are the control images of slot first_slot + k's
        frame. ControlNets steer the unconditional rows too (full CFG doubles
        them, as diffusers does); the IP-Adapter gives those rows its
        negative embedding.
        """
        params, sched, f = state.params, state.schedule, state.frames_per_call
        rows = sched.rows(first_slot, num_slots)
        timesteps = sched.timesteps[rows]
        cfg = params.cfg_type if params.guidance_scale != 1.0 else "none"
        controls = slot_control_rows(params, slot_images, first_slot, num_slots, f, sched.num_slots) if params.controlnets else ()
        reference, negative_reference = self._reference_rows(state)
        segments = [RowSegment(x, timesteps, state.prompt.current, state.time_ids, controls, reference)]
        if cfg == "full":
            segments.append(RowSegment(x, timesteps, state.negative, state.time_ids, controls, negative_reference))
        measure = cfg == "initialize" and first_slot == 0 and not state.uncond_measured
        if measure:
            first = tuple(first_rows(c, f) for c in controls)
            segments.append(RowSegment(x[:f], timesteps[:f], state.negative, state.time_ids, tuple(c for c in first if c is not None), negative_reference))
        predictions = yield segments
        eps = predictions[0]
        if cfg == "full":
            eps_uncond = predictions[1]
            eps = eps_uncond + params.guidance_scale * (eps - eps_uncond)
        elif cfg in ("self", "initialize"):
            if measure:
                state.stock_noise[:f] = predictions[-1]
                state.uncond_measured = True
            eps_uncond = params.delta * state.stock_noise[rows]
            eps = eps_uncond + params.guidance_scale * (eps - eps_uncond)
        alpha, beta = sched.alpha[rows], sched.beta[rows]
        x0 = sched.c_out[rows] * (x - beta * eps) / alpha + sched.c_skip[rows] * x
        self._advance_stock(state, first_slot, num_slots, eps)
        return x0

    def _advance_stock(self, state: ImageStreamState, first_slot: int, num_slots: int, eps: torch.Tensor) -> None:
        sched, f = state.schedule, state.frames_per_call
        count = min(num_slots, sched.num_slots - 1 - first_slot)
        if count <= 0:
            return
        src, dst = sched.rows(first_slot, count), sched.rows(first_slot + 1, count)
        residual = sched.c_out[src] * sched.beta[src] * (state.stock_noise[src] - eps[: count * f]) / sched.alpha[src]
        new = sched.alpha[dst] / sched.beta[dst] * residual
        if state.params.renoise:
            new = new + state.init_noise[dst]
        state.stock_noise[dst] = new

    # ------------------------------------------------------------------ driver
    def _drive(self, programs: list[Generator]) -> list[Any]:
        """Run all programs in lockstep, one batched UNet call per round and shape."""
        results: list[Any] = [None] * len(programs)
        requests: dict[int, list[RowSegment]] = {}
        for i, program in enumerate(programs):
            self._advance(program, i, None, requests, results)
        while requests:
            predictions = self._predict(requests)
            for i in list(requests):
                self._advance(programs[i], i, predictions[i], requests, results)
        return results

    @staticmethod
    def _advance(program: Generator, index: int, value: Any, requests: dict, results: list) -> None:
        try:
            requests[index] = program.send(value) if value is not None else next(program)
        except StopIteration as done:
            requests.pop(index, None)
            results[index] = done.value

    def _predict(self, requests: dict[int, list[RowSegment]]) -> dict[int, list[torch.Tensor]]:
        groups: dict[tuple[int, ...], list[tuple[int, int, RowSegment]]] = defaultdict(list)
        for i, segments in requests.items():
            for j, segment in enumerate(segments):
                groups[tuple(segment.latents.shape[1:])].append((i, j, segment))
        out: dict[int, list[torch.Tensor | None]] = {i: [None] * len(s) for i, s in requests.items()}
        for members in groups.values():
            segments = [m[2] for m in members]
            sizes = [s.latents.shape[0] for s in segments]
            latents = torch.cat([s.latents for s in segments])
            timesteps = torch.cat([s.timesteps for s in segments])
            hidden = torch.cat([s.prompt.hidden.expand(n, -1, -1) for s, n in zip(segments, sizes)])
            added = None
            if self.model.is_sdxl:
                added = {
                    "text_embeds": torch.cat([s.prompt.pooled.expand(n, -1) for s, n in zip(segments, sizes)]),
                    "time_ids": torch.cat([s.time_ids.expand(n, -1) for s, n in zip(segments, sizes)]),
                }
            offsets = [sum(sizes[:k]) for k in range(len(sizes))]
            control_parts = [(offset + 0, part) for offset, s in zip(offsets, segments) for part in s.controls]
            residuals = control_residuals(self.model.run_controlnet, control_parts, latents, timesteps, hidden, added)
            reference = self._reference_inputs(segments, sizes)
            eps = self.model.predict_noise(latents, timesteps, hidden, added, residuals, reference)
            for (i, j, _), part in zip(members, eps.split(sizes)):
                out[i][j] = part
        return out  # type: ignore[return-value]
