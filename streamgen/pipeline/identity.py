"""``identity``: a real :class:`~streamgen.pipeline.contract.StreamPipeline` that returns its input.

Selected with ``streamgen serve --model identity``. It runs through the same
worker, slots, tracks and encoders as a diffusion model but spends no time on
inference, so glass-to-glass latency measured against it is the cost of the
transport alone (decode, scale, encode, network, jitter buffers). It also
keeps a marker stamped into an input frame readable in the output, which the
benchmark and tests rely on.

It accepts the schema's stream settings (``width``/``height`` pick the output
size, default 256x256) and validates live parameters with the shared schema,
so PATCH and the data channel behave exactly as with a diffusion model; the
parameters simply have no effect on the pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import StreamConfig, StreamParams
from ..errors import InputError
from ..frames import cover_resize
from ..params import parse_params
from ..params import PARAM_NAMES
from .contract import StepShape, StreamShape
from .image_settings import full_cfg_rows, parse_image_settings
from .output import StepOutput, StreamCounters
from .pending import PendingUpdate

IDENTITY_SIZE = (256, 256)


@dataclass(eq=False)
class IdentityState:
    """Per-stream state: its shape, parameters and counters."""

    config: StreamConfig
    params: StreamParams
    counters: StreamCounters = field(default_factory=StreamCounters)
    pending: PendingUpdate[StreamParams] = field(default_factory=PendingUpdate)

    @property
    def frames_per_call(self) -> int:
        return self.config.frame_buffer_size

    @property
    def latest_params(self) -> StreamParams:
        return self.pending.latest(self.params)


class IdentityPipeline:
    """Returns each input frame, scaled to the stream's resolution (see module docstring)."""

    name = "identity"
    kind = "identity"
    device = torch.device("cpu")
    model_name = "identity"
    native_size = IDENTITY_SIZE
    live_params = PARAM_NAMES
    engine_limits = None

    # ---------------------------------------------------------------- contract
    def settings_shape(self, settings: Mapping[str, Any]) -> StreamShape:
        config, params = parse_image_settings(settings)
        return self._shape(config.resolved(IDENTITY_SIZE), params)

    def state_from_settings(self, settings: Mapping[str, Any]) -> IdentityState:
        return self.create_state(*parse_image_settings(settings))

    def stream_shape(self, state: IdentityState) -> StreamShape:
        return self._shape(state.config, state.latest_params)

    def shape_with(self, state: IdentityState, params: StreamParams) -> StreamShape:
        return self._shape(state.config, params)

    def step_work(self, state: IdentityState, new_frames: int) -> StepShape:
        return self.stream_shape(state).unit()

    def frames_per_step(self, state: IdentityState) -> int:
        return state.frames_per_call

    def frame_size(self, state: IdentityState) -> tuple[int, int]:
        return state.config.width, state.config.height

    def takes_frames(self, state: IdentityState) -> bool:
        return state.config.mode != "txt2img"

    def params_json(self, state: IdentityState) -> dict[str, Any]:
        return state.latest_params.to_dict()

    def prepare_update(self, params: StreamParams) -> None:
        """Nothing to prepare: the parameters change no pixel."""

    def flush(self, state: IdentityState) -> StepOutput:
        """Nothing is ever inside: every call returns its own frames."""
        return StepOutput(torch.zeros(0, state.config.height, state.config.width, 3, dtype=torch.uint8))

    @staticmethod
    def _shape(config: StreamConfig, params: StreamParams) -> StreamShape:
        return StreamShape(
            "identity", config.width, config.height, config.frame_buffer_size, len(params.resolved_t_index_list()),
            config.use_denoising_batch, full_cfg_rows(params), frames_per_unit=config.frame_buffer_size,
        )

    def create_state(self, config: StreamConfig | None = None, params: StreamParams | Mapping[str, Any] | None = None) -> IdentityState:
        config = (config or StreamConfig()).resolved(IDENTITY_SIZE)
        if not isinstance(params, StreamParams):
            params = parse_params(params or {})
        return IdentityState(config=config, params=params)

    def update(self, state: IdentityState, changes: Mapping[str, Any] | None = None, **kwargs: Any) -> StreamParams:
        params = self.parse_update(state, {**(changes or {}), **kwargs})
        state.pending.set(params)
        return params

    def parse_update(self, state: IdentityState, changes: Mapping[str, Any]) -> StreamParams:
        return parse_params(changes, state.latest_params)

    def checkpoint(self, state: IdentityState) -> tuple:
        """What a step changes: the parameters, the queued update and the counters."""
        return state.params, state.pending.peek(), dataclasses.replace(state.counters)

    def restore(self, state: IdentityState, saved: tuple) -> None:
        params, pending, counters = saved
        applied = state.params if state.params is not params else None
        state.params, state.counters = params, counters
        state.pending.restore(at_checkpoint=pending, applied=applied)

    def reset(self, state: IdentityState) -> None:
        state.counters = StreamCounters()

    def step(self, states: Sequence[IdentityState], frames: Sequence[torch.Tensor | None], tags: Sequence[Any] | None = None) -> list[StepOutput]:
        if len(frames) != len(states):
            raise InputError(f"got {len(frames)} frame batches for {len(states)} streams")
        tags = list(tags) if tags is not None else [None] * len(states)
        outputs = []
        for state, batch, tag in zip(states, frames, tags):
            queued = state.pending.take()
            if queued is not None:
                state.params = queued
            if batch is None or batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
                raise InputError("the identity model needs (k, H, W, 3) uint8 frames")
            out = self._resize(batch, state.config.width, state.config.height)
            state.counters.frames_in += batch.shape[0]
            state.counters.frames_processed += batch.shape[0]
            outputs.append(StepOutput(out, tags=tuple(tag) if tag is not None else (None,) * batch.shape[0]))
        return outputs

    @staticmethod
    def _resize(batch: torch.Tensor, width: int, height: int) -> torch.Tensor:
        if tuple(batch.shape[1:3]) == (height, width):
            return batch
        images = batch.permute(0, 3, 1, 2).float()
        resized = cover_resize(images, width, height)
        return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
