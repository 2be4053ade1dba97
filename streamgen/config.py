"""Typed configuration: what a model is, how a stream is shaped, how it behaves.

Three kinds of settings, kept apart because they change at different times:

- :class:`ModelSpec` picks weights and the numerics that go with them; it is
  fixed when a pipeline is loaded and shared by every session.
- :class:`StreamConfig` fixes the shape of one stream (resolution, frames per
  call, txt2img or img2img). Changing it means new buffers, so it cannot change
  on a running stream.
- :class:`StreamParams` is everything a user may change live (prompt, seed,
  strength, guidance, filter). It is parsed from JSON by :mod:`streamgen.params`,
  the one schema shared by the Python API, the HTTP API and the data channel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

CfgType = Literal["none", "full", "self", "initialize"]
Interpolation = Literal["linear", "slerp"]
StreamMode = Literal["img2img", "txt2img"]
X0Formula = Literal["lcm", "direct"]
PredictionType = Literal["epsilon", "v_prediction"]

CFG_TYPES: tuple[str, ...] = ("none", "full", "self", "initialize")
INTERPOLATIONS: tuple[str, ...] = ("linear", "slerp")
STREAM_MODES: tuple[str, ...] = ("img2img", "txt2img")

# The stream's timestep grid: LCM-style, 50 points from 999 down to 19.
# ``t_index_list`` entries index into it; ``strength`` maps onto it.
TIMESTEP_GRID_SIZE = 50
# The last grid index used by default when spreading several steps (t = 99),
# the low-noise end that one-step-per-index students are distilled for.
DEFAULT_LAST_T_INDEX = 45


@dataclass(frozen=True)
class WeightedPrompt:
    """One text of a weighted multi-prompt blend."""

    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class WeightedSeed:
    """One seed of a weighted noise blend."""

    seed: int
    weight: float = 1.0


@dataclass(frozen=True)
class StreamParams:
    """Parameters of an image stream that may change while it runs.

    ``t_index_list``, when set, overrides ``strength`` and
    ``num_inference_steps``: it names the grid indices of the denoising steps
    directly (the StreamDiffusion convention). Otherwise ``strength`` in [0, 1]
    picks the first step (1 = start from pure noise, 0 = stay at the input)
    and the remaining steps are spread evenly towards the low-noise end.
    """

    prompt: tuple[WeightedPrompt, ...] = (WeightedPrompt(""),)
    negative_prompt: str = ""
    prompt_interpolation: Interpolation = "linear"
    transition_frames: int = 0
    guidance_scale: float = 1.2
    delta: float = 1.0
    cfg_type: CfgType = "self"
    seed: tuple[WeightedSeed, ...] = (WeightedSeed(2),)
    seed_interpolation: Interpolation = "linear"
    strength: float = 0.35
    num_inference_steps: int = 2
    t_index_list: tuple[int, ...] | None = None
    renoise: bool = True
    similarity_filter: bool = False
    similarity_threshold: float = 0.98
    max_skip_frames: int = 10
    # Steering beside the prompt (streamgen.control_params): ControlNet entries by position, the IP-Adapter's
    # reference image (a ReferenceImage, or None) and its strength.
    controlnets: tuple[Any, ...] = ()
    ip_adapter_image: Any = None
    ip_adapter_scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, the same shape :func:`streamgen.params.parse_params` accepts (the reference image as its digest)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["prompt"] = [[p.text, p.weight] for p in self.prompt]
        out["seed"] = [[s.seed, s.weight] for s in self.seed]
        out["t_index_list"] = list(self.t_index_list) if self.t_index_list is not None else None
        out["controlnets"] = [entry.to_dict() for entry in self.controlnets]
        out["ip_adapter_image"] = self.ip_adapter_image.to_dict() if self.ip_adapter_image is not None else None
        return out

    def resolved_t_index_list(self) -> tuple[int, ...]:
        """The grid indices of the denoising steps these parameters select."""
        if self.t_index_list is not None:
            return self.t_index_list
        return t_index_list_for_strength(self.strength, self.num_inference_steps)


def t_index_list_for_strength(strength: float, num_steps: int) -> tuple[int, ...]:
    """Map a user-facing strength in [0, 1] and a step count to grid indices.

    The first index is ``round((1 - strength) * 49)`` so strength 1 starts at
    t = 999 (pure noise) and strength 0 at the least-noisy grid point. Later
    steps are spread evenly down to index 45 (t = 99), or further when the
    first index is already past it; a strength too low to leave room for
    ``num_steps`` distinct steps is moved up just enough to fit them.
    """
    n = int(num_steps)
    last_possible = TIMESTEP_GRID_SIZE - 1
    first = int(round((1.0 - float(strength)) * last_possible))
    first = min(max(first, 0), last_possible - (n - 1))
    if n == 1:
        return (first,)
    last = max(DEFAULT_LAST_T_INDEX, first + n - 1)
    last = min(last, last_possible)
    indices = [int(round(first + k * (last - first) / (n - 1))) for k in range(n)]
    for k in range(1, n):  # rounding can collide when the span is tight
        indices[k] = max(indices[k], indices[k - 1] + 1)
    return tuple(indices)


@dataclass(frozen=True)
class StreamConfig:
    """The shape of one stream; fixed for the stream's lifetime.

    ``width``/``height`` of ``None`` take the model's native resolution.
    ``frame_buffer_size`` (f) frames go through each model call together.
    ``use_denoising_batch`` selects stream batch (all steps in one call, output
    lags the input by n-1 calls) or sequential steps (n calls, no lag).
    """

    width: int | None = None
    height: int | None = None
    frame_buffer_size: int = 1
    mode: StreamMode = "img2img"
    use_denoising_batch: bool = True

    def resolved(self, default_size: tuple[int, int]) -> "StreamConfig":
        """This config with a concrete resolution (the model's when unset)."""
        width = self.width if self.width is not None else default_size[0]
        height = self.height if self.height is not None else default_size[1]
        return StreamConfig(width, height, self.frame_buffer_size, self.mode, self.use_denoising_batch)


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how its numbers behave.

    ``source`` is a preset name, a hub id, a local diffusers directory or a
    single ``.safetensors`` checkpoint. ``weights="dummy"`` builds the real
    architecture from configs shipped with streamgen, with random weights.
    ``acceleration`` chooses how components run (:mod:`streamgen.runtime`):
    ``none`` (torch eager), ``compile``, ``onnxruntime``, ``tensorrt`` or
    ``auto`` (the fastest available here, measured).
    """

    source: str = "tiny"
    weights: Literal["pretrained", "dummy", "tiny"] = "pretrained"  # tiny: a video preset's recipe on the tiny DiT (tests, offline)
    device: str = "auto"
    dtype: str = "auto"
    vae: Literal["tiny", "full"] = "tiny"
    lora: dict[str, float] = field(default_factory=dict)
    fuse_lora: bool = True
    seed: int = 0
    acceleration: str = "none"


def check_no_model_options(spec: Mapping[str, Any], what: str) -> None:
    """Refuse model options (``dtype=``, ``device=``, ...) that ask for something when the model is already loaded.

    They could only be dropped silently: a loaded model or pipeline keeps its
    device, dtype and weights. Values equal to :class:`ModelSpec`'s defaults ask
    for nothing and pass. Raises ConfigError.
    """
    from .errors import ConfigError  # noqa: PLC0415

    defaults = ModelSpec()
    asked = [f"{name}={value!r}" for name, value in sorted(spec.items()) if value != getattr(defaults, name, None)]
    if asked:
        raise ConfigError(
            f"model option(s) {', '.join(asked)} cannot apply to {what}, which is already loaded; "
            "pass a preset name, path or ModelSpec to load a model with them"
        )


def is_finite_number(value: Any) -> bool:
    """True for int/float values (not bools) that are finite (a 400-digit integer is not: no float holds it)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def field_names(cls: type) -> tuple[str, ...]:
    """Names of a dataclass's fields, for schema checks and error messages."""
    return tuple(f.name for f in fields(cls))
