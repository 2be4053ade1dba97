"""The parameter schema of causal video streams: fixed shape (:class:`VideoConfig`) and live knobs (:class:`VideoParams`).

Video streams take their own schema because their knobs differ from the
image stream's (no CFG, no t_index_list; motion-aware noise, chunks, cache
window), but the rules are the same as :mod:`streamgen.params`, whose
validators this module reuses: unknown fields are rejected by name, values
are type- and range-checked, and a fixed field sent as a live update is
refused with "cannot be changed on a running stream". Errors are
:class:`~streamgen.errors.ConfigError`.

Live changes and what they cost:

- ``prompt`` / ``transition_chunks``: a new cross-attention context; the KV
  cache is kept, so the stream morphs instead of restarting;
- ``prompt_switch``: how a prompt change takes hold. ``"blend"`` (default):
  as above, the KV cache keeps the self-attention history computed under
  the old prompt. ``"recache"`` (the LongLive method): before the next chunk
  is denoised, each cache row's history is rebuilt from the clean latents
  of the frames still in the window (sinks + ring), by running the DiT over
  them under the new prompt, so the new prompt takes hold at once while the
  motion continues from the same frames; ``transition_chunks`` does not
  apply (the switch is immediate). Costs one forward per chunk of the
  window per group of rows at a switch. Refused on pipeline-staged models;
- ``seed``: the noise of the next chunks comes from the new seed;
- ``motion_aware``, ``noise_scale``, ``motion_scale``, ``motion_weight``,
  ``noise_smoothing``: the motion-aware noise controller, from the next chunk;
- ``num_inference_steps``: the KV cache has one row per step, so a change
  **resets the stream** (cache, VAE caches and chunks in flight are dropped;
  the next frame starts a new clip).

Two modes (:attr:`VideoConfig.mode`, fixed for the stream's life):
``vid2vid`` restyles input frames; ``txt2vid`` takes no input and generates
every chunk from pure noise. The motion-aware noise knobs set how much noise
goes onto the *input*, so a txt2vid stream refuses them
(:data:`TXT2VID_INPUT_PARAMS`, :func:`check_mode_params`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..config import WeightedPrompt, field_names
from ..errors import ConfigError
from ..params import MAX_SEED, boolean_field, describe_value, integer_field, number_field, parse_fields, prompts_field, size_field
from .noise import MAX_STEPS, MotionNoiseSettings

MAX_TRANSITION_CHUNKS = 1000
# A model's chunk and attention window when its preset says nothing (StreamDiffusionV2's: 1 latent frame per chunk, 3 sinks + 3 recent).
MODEL_WINDOW_DEFAULTS: dict[str, int] = {"chunk_frames": 1, "sink_frames": 3, "ring_frames": 3}
MAX_CHUNK_FRAMES = 4
MAX_SINK_FRAMES = 8
MAX_RING_FRAMES = 32
# t0 = 1000·s − 100 must stay clearly above 0 for the lowest level the controller can reach.
MIN_NOISE_LEVEL = 0.15

VideoMode = Literal["vid2vid", "txt2vid"]
PROMPT_SWITCHES: tuple[str, ...] = ("blend", "recache")
VIDEO_MODES: tuple[str, ...] = ("vid2vid", "txt2vid")
# Live parameters that only steer how an input chunk is noised (the motion-aware noise controller).
TXT2VID_INPUT_PARAMS: tuple[str, ...] = ("motion_aware", "noise_scale", "motion_scale", "motion_weight", "noise_smoothing")
TXT2VID_NOISE = "{name} applies to vid2vid streams (how much noise goes onto the input); txt2vid streams start every chunk from pure noise"


@dataclass(frozen=True)
class VideoConfig:
    """The shape of one video stream, fixed for its lifetime.

    ``width``/``height`` (multiples of 16; None = the model's default size);
    ``chunk_frames`` latent frames per chunk (4 video frames each; the
    stream's first chunk is 1 + 4·(chunk_frames − 1) frames);
    ``sink_frames`` + ``ring_frames`` latent frames of KV-cache history
    (these three, left None, are the model's: a preset records what its
    authors trained with, :data:`MODEL_WINDOW_DEFAULTS` otherwise);
    ``use_denoising_batch``: stream batch (all steps in one forward, output
    lags by steps − 1 chunks) or sequential steps (lower latency);
    ``mode``: ``vid2vid`` (input frames are restyled) or ``txt2vid`` (no
    input: each step generates the next chunk from noise).
    """

    width: int | None = None
    height: int | None = None
    use_denoising_batch: bool = True
    chunk_frames: int | None = None
    sink_frames: int | None = None
    ring_frames: int | None = None
    mode: VideoMode = "vid2vid"

    def resolved(self, default_size: tuple[int, int], window: Mapping[str, int] | None = None) -> VideoConfig:
        """Every field given: the size and the chunk/window fields left None take the model's (``window``)."""
        defaults = {**MODEL_WINDOW_DEFAULTS, **(window or {})}
        return dataclasses.replace(
            self,
            width=self.width if self.width is not None else default_size[0],
            height=self.height if self.height is not None else default_size[1],
            **{name: getattr(self, name) if getattr(self, name) is not None else defaults[name] for name in MODEL_WINDOW_DEFAULTS},
        )


@dataclass(frozen=True)
class VideoParams:
    """Live parameters of a video stream (see the module docstring for what each change does)."""

    prompt: tuple[WeightedPrompt, ...] = (WeightedPrompt(""),)
    transition_chunks: int = 0
    seed: int = 2
    num_inference_steps: int = 2
    motion_aware: bool = True
    noise_scale: float = 0.8
    motion_scale: float = 0.2
    motion_weight: float = 0.1
    noise_smoothing: float = 0.1
    prompt_switch: Literal["blend", "recache"] = "blend"

    @property
    def noise_settings(self) -> MotionNoiseSettings:
        return MotionNoiseSettings(
            motion_aware=self.motion_aware,
            noise_scale=self.noise_scale,
            motion_scale=self.motion_scale,
            motion_weight=self.motion_weight,
            smoothing=self.noise_smoothing,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, the shape :func:`parse_video_params` accepts."""
        out = dataclasses.asdict(self)
        out["prompt"] = [[p.text, p.weight] for p in self.prompt]
        return out


def _size16(name: str, value: Any) -> int | None:
    if value is None:
        return None
    size = size_field(name, value)
    if size % 16:
        raise ConfigError(f"{name} must be a multiple of 16 for video models (8x VAE, 2x2 patches), got {size}")
    return size


def _prompt_switch(name: str, value: Any) -> str:
    if value not in PROMPT_SWITCHES:
        raise ConfigError(f"{name} must be one of {', '.join(PROMPT_SWITCHES)}; got {describe_value(value)}")
    return value


_PARAM_PARSERS = {
    "prompt": prompts_field,
    "transition_chunks": lambda n, v: integer_field(n, v, 0, MAX_TRANSITION_CHUNKS),
    "seed": lambda n, v: integer_field(n, v, 0, MAX_SEED),
    "num_inference_steps": lambda n, v: integer_field(n, v, 1, MAX_STEPS),
    "motion_aware": boolean_field,
    "noise_scale": lambda n, v: number_field(n, v, 0.2, 1.0),
    "motion_scale": lambda n, v: number_field(n, v, 0.01, 2.0),
    "motion_weight": lambda n, v: number_field(n, v, 0.0, 0.5),
    "noise_smoothing": lambda n, v: number_field(n, v, 0.0, 0.99),
    "prompt_switch": _prompt_switch,
}
assert set(_PARAM_PARSERS) == set(field_names(VideoParams)), "video schema and VideoParams disagree"

def _mode(name: str, value: Any) -> str:
    if value not in VIDEO_MODES:
        hint = " (img2img and txt2img are image stream modes)" if value in ("img2img", "txt2img") else ""
        raise ConfigError(f"{name} must be one of {', '.join(VIDEO_MODES)} for video streams; got {describe_value(value)}{hint}")
    return value


_CONFIG_PARSERS = {
    "width": _size16,
    "height": _size16,
    "use_denoising_batch": boolean_field,
    "chunk_frames": lambda n, v: integer_field(n, v, 1, MAX_CHUNK_FRAMES),
    "sink_frames": lambda n, v: integer_field(n, v, 0, MAX_SINK_FRAMES),
    "ring_frames": lambda n, v: integer_field(n, v, 1, MAX_RING_FRAMES),
    "mode": _mode,
}
assert set(_CONFIG_PARSERS) == set(field_names(VideoConfig)), "video schema and VideoConfig disagree"

VIDEO_PARAM_NAMES: tuple[str, ...] = tuple(sorted(_PARAM_PARSERS))
VIDEO_CONFIG_NAMES: tuple[str, ...] = tuple(sorted(_CONFIG_PARSERS))


def _check_mapping(values: Any) -> Mapping[str, Any]:
    if not isinstance(values, Mapping):
        raise ConfigError(f"parameters must be a JSON object, got {type(values).__name__}")
    return values


def parse_video_params(updates: Mapping[str, Any], base: VideoParams | None = None) -> VideoParams:
    """Validate ``updates`` and apply them on top of ``base`` (defaults if None)."""
    updates = _check_mapping(updates)
    changes: dict[str, Any] = {}
    for name, value in updates.items():
        if name in _CONFIG_PARSERS:
            raise ConfigError(f"{name} cannot be changed on a running stream; start a new stream with the new {name}")
        parser = _PARAM_PARSERS.get(name)
        if parser is None:
            raise ConfigError(
                f"unknown video parameter {describe_value(name)}; known parameters: {', '.join(VIDEO_PARAM_NAMES)}"
                f" (stream settings: {', '.join(VIDEO_CONFIG_NAMES)})"
            )
        changes[name] = parser(name, value)
    params = dataclasses.replace(base or VideoParams(), **changes)
    lowest = params.noise_scale - (params.motion_weight if params.motion_aware else 0.0)
    if lowest < MIN_NOISE_LEVEL:
        raise ConfigError(
            f"noise_scale − motion_weight must be at least {MIN_NOISE_LEVEL} (the first timestep 1000·s − 100 "
            f"must stay positive); got {params.noise_scale:g} − {params.motion_weight:g}"
        )
    return params


def parse_video_config(values: Mapping[str, Any], base: VideoConfig | None = None) -> VideoConfig:
    """Validate the fixed shape of a new video stream."""
    return parse_fields(values, _CONFIG_PARSERS, base or VideoConfig(), "video stream setting")


def split_video_settings(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split creation settings into (stream config fields, live fields); unknown names go live (and are rejected there)."""
    values = _check_mapping(values)
    config = {k: v for k, v in values.items() if k in _CONFIG_PARSERS}
    live = {k: v for k, v in values.items() if k not in _CONFIG_PARSERS}
    return config, live


def check_mode_params(mode: str, changes: Mapping[str, Any]) -> None:
    """ConfigError when ``changes`` set a parameter the stream's mode has no use for (the noise of the input, in txt2vid)."""
    if mode == "txt2vid":
        for name in TXT2VID_INPUT_PARAMS:
            if name in changes:
                raise ConfigError(TXT2VID_NOISE.format(name=name))


def parse_video_settings(values: Mapping[str, Any], base: VideoParams | None = None) -> tuple[VideoConfig, VideoParams]:
    """Creation settings (shape and live fields in one mapping) → validated config and params."""
    config_values, live_values = split_video_settings(values)
    config = parse_video_config(config_values)
    check_mode_params(config.mode, live_values)
    return config, parse_video_params(live_values, base)
