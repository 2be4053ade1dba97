"""The one parameter schema: JSON-ish mappings in, validated dataclasses out.

The Python API (``stream.update(**params)``), ``PATCH /api/sessions/{id}/params``
and the ``control`` data channel all go through :func:`parse_params`, so a
value accepted in one place is accepted everywhere and an error reads the same.
Errors are :class:`~streamgen.errors.ConfigError` with a message naming the
field, what was expected and what was received.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .config import (
    CFG_TYPES,
    INTERPOLATIONS,
    STREAM_MODES,
    TIMESTEP_GRID_SIZE,
    StreamConfig,
    StreamParams,
    WeightedPrompt,
    WeightedSeed,
    field_names,
    is_finite_number,
)
from .control_params import MAX_IP_ADAPTER_SCALE, parse_controlnets, parse_reference_image
from .errors import ConfigError

MAX_PROMPT_CHARS = 2000
MAX_BLEND_ENTRIES = 8
MAX_STEPS = 16
MAX_SEED = 2**63 - 1
MAX_TRANSITION_FRAMES = 1000
MAX_SKIP_FRAMES = 1000
MAX_GUIDANCE = 30.0
MAX_DELTA = 10.0
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_FRAME_BUFFER = 8


def describe_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def number_field(name: str, value: Any, low: float, high: float) -> float:
    if not is_finite_number(value):
        raise ConfigError(f"{name} must be a finite number, got {describe_value(value)}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return float(value)


def integer_field(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {describe_value(value)}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def boolean_field(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {describe_value(value)}")
    return value


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}; got {describe_value(value)}")
    return value


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {describe_value(value)}")
    if len(value) > MAX_PROMPT_CHARS:
        raise ConfigError(f"{name} is {len(value)} characters long; the limit is {MAX_PROMPT_CHARS}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ConfigError(f"{name} holds a character that is not valid text (a lone UTF-16 surrogate at position {error.start})") from None
    return value


def _pairs(name: str, value: Any, key: str) -> list[tuple[Any, Any]]:
    """Accept [[a, w], ...], [{key: a, "weight": w}, ...] or [(a, w)] dataclass-likes."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a single value or a list of [{key}, weight] pairs")
    if not value:
        raise ConfigError(f"{name} must not be an empty list")
    if len(value) > MAX_BLEND_ENTRIES:
        raise ConfigError(f"{name} may blend at most {MAX_BLEND_ENTRIES} entries, got {len(value)}")
    out = []
    for i, entry in enumerate(value):
        if isinstance(entry, (WeightedPrompt, WeightedSeed)):
            out.append(tuple(dataclasses.astuple(entry)))
        elif isinstance(entry, Mapping):
            extra = set(entry) - {key, "weight"}
            if key not in entry or extra:
                raise ConfigError(f"{name}[{i}] must have the keys '{key}' and optionally 'weight'")
            out.append((entry[key], entry.get("weight", 1.0)))
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            out.append((entry[0], entry[1]))
        else:
            raise ConfigError(f"{name}[{i}] must be a [{key}, weight] pair, got {describe_value(entry)}")
    weights = [number_field(f"{name}[{i}] weight", w, 0.0, 1e6) for i, (_, w) in enumerate(out)]
    if sum(weights) <= 0:
        raise ConfigError(f"{name} weights must not all be zero")
    return [(v, w) for (v, _), w in zip(out, weights)]


def prompts_field(name: str, value: Any) -> tuple[WeightedPrompt, ...]:
    if isinstance(value, str):
        return (WeightedPrompt(_text(name, value), 1.0),)
    return tuple(WeightedPrompt(_text(f"{name}[{i}] text", t), w) for i, (t, w) in enumerate(_pairs(name, value, "text")))


def _seeds(name: str, value: Any) -> tuple[WeightedSeed, ...]:
    if not isinstance(value, (list, tuple)):
        return (WeightedSeed(integer_field(name, value, 0, MAX_SEED), 1.0),)
    return tuple(WeightedSeed(integer_field(f"{name}[{i}] seed", s, 0, MAX_SEED), w) for i, (s, w) in enumerate(_pairs(name, value, "seed")))


def _t_index_list(name: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{name} must be a non-empty list of integers or null")
    if len(value) > MAX_STEPS:
        raise ConfigError(f"{name} may have at most {MAX_STEPS} steps, got {len(value)}")
    indices = tuple(integer_field(f"{name}[{i}]", v, 0, TIMESTEP_GRID_SIZE - 1) for i, v in enumerate(value))
    if any(b <= a for a, b in zip(indices, indices[1:])):
        raise ConfigError(f"{name} must be strictly increasing (from most to least noisy), got {list(indices)}")
    return indices


_PARAM_PARSERS = {
    "prompt": prompts_field,
    "negative_prompt": _text,
    "prompt_interpolation": lambda n, v: _choice(n, v, INTERPOLATIONS),
    "transition_frames": lambda n, v: integer_field(n, v, 0, MAX_TRANSITION_FRAMES),
    "guidance_scale": lambda n, v: number_field(n, v, 0.0, MAX_GUIDANCE),
    "delta": lambda n, v: number_field(n, v, 0.0, MAX_DELTA),
    "cfg_type": lambda n, v: _choice(n, v, CFG_TYPES),
    "seed": _seeds,
    "seed_interpolation": lambda n, v: _choice(n, v, INTERPOLATIONS),
    "strength": lambda n, v: number_field(n, v, 0.0, 1.0),
    "num_inference_steps": lambda n, v: integer_field(n, v, 1, MAX_STEPS),
    "t_index_list": _t_index_list,
    "renoise": boolean_field,
    "similarity_filter": boolean_field,
    "similarity_threshold": lambda n, v: number_field(n, v, 0.0, 0.9999),
    "max_skip_frames": lambda n, v: integer_field(n, v, 0, MAX_SKIP_FRAMES),
    "controlnets": None,  # parsed over the current entries (positional updates): see _parse_with_base
    "ip_adapter_image": None,
    "ip_adapter_scale": lambda n, v: number_field(n, v, 0.0, MAX_IP_ADAPTER_SCALE),
}
# Fields whose new value depends on the current one: a ControlNet update names fields of existing entries,
# a reference image may be named by the digest of the one in force.
_PARSERS_WITH_BASE = {
    "controlnets": lambda n, v, base: parse_controlnets(n, v, base.controlnets),
    "ip_adapter_image": lambda n, v, base: parse_reference_image(n, v, base.ip_adapter_image),
}
assert set(_PARAM_PARSERS) == set(field_names(StreamParams)), "schema and StreamParams disagree"

_CONFIG_PARSERS = {
    "width": lambda n, v: None if v is None else size_field(n, v),
    "height": lambda n, v: None if v is None else size_field(n, v),
    "frame_buffer_size": lambda n, v: integer_field(n, v, 1, MAX_FRAME_BUFFER),
    "mode": lambda n, v: _choice(n, v, STREAM_MODES),
    "use_denoising_batch": boolean_field,
}
assert set(_CONFIG_PARSERS) == set(field_names(StreamConfig)), "schema and StreamConfig disagree"


def size_field(name: str, value: Any) -> int:
    size = integer_field(name, value, MIN_SIZE, MAX_SIZE)
    if size % 8:
        raise ConfigError(f"{name} must be a multiple of 8, got {size}")
    return size


def _check_mapping(updates: Any) -> Mapping[str, Any]:
    if not isinstance(updates, Mapping):
        raise ConfigError(f"parameters must be a JSON object, got {type(updates).__name__}")
    return updates


def parse_params(updates: Mapping[str, Any], base: StreamParams | None = None) -> StreamParams:
    """Validate ``updates`` and apply them on top of ``base`` (defaults if None).

    Unknown fields are rejected by name; fields that shape the stream
    (width, height, frame_buffer_size, mode, use_denoising_batch) are rejected
    with a message saying they cannot change on a running stream.
    """
    updates = _check_mapping(updates)
    base = base or StreamParams()
    changes: dict[str, Any] = {}
    for name, value in updates.items():
        if name in _CONFIG_PARSERS:
            raise ConfigError(f"{name} cannot be changed on a running stream; start a new stream with the new {name}")
        if name not in _PARAM_PARSERS:
            raise ConfigError(f"unknown parameter {describe_value(name)}; known parameters: {', '.join(sorted(_PARAM_PARSERS))}")
        if name in _PARSERS_WITH_BASE:
            changes[name] = _PARSERS_WITH_BASE[name](name, value, base)
        else:
            changes[name] = _PARAM_PARSERS[name](name, value)
    params = dataclasses.replace(base, **changes)
    if params.t_index_list is None and params.num_inference_steps > TIMESTEP_GRID_SIZE:
        raise ConfigError(f"num_inference_steps must be at most {TIMESTEP_GRID_SIZE}")
    return params


def parse_stream_config(values: Mapping[str, Any], base: StreamConfig | None = None) -> StreamConfig:
    """Validate the fixed shape of a new stream (resolution, frames per call, mode)."""
    return parse_fields(values, _CONFIG_PARSERS, base or StreamConfig(), "stream setting")


def parse_fields(values: Mapping[str, Any], parsers: Mapping[str, Any], base: Any, what: str) -> Any:
    """``base`` (a frozen dataclass) with each of ``values`` checked by its parser; unknown names are refused by name."""
    values = _check_mapping(values)
    changes: dict[str, Any] = {}
    for name, value in values.items():
        parser = parsers.get(name)
        if parser is None:
            raise ConfigError(f"unknown {what} {describe_value(name)}; known settings: {', '.join(sorted(parsers))}")
        changes[name] = parser(name, value)
    return dataclasses.replace(base, **changes)


def split_settings(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a creation request into (stream config fields, live parameter fields).

    Unknown names go with the live parameters, where :func:`parse_params`
    rejects them by name.
    """
    values = _check_mapping(values)
    config = {k: v for k, v in values.items() if k in _CONFIG_PARSERS}
    live = {k: v for k, v in values.items() if k not in _CONFIG_PARSERS}
    return config, live


PARAM_NAMES: tuple[str, ...] = tuple(sorted(_PARAM_PARSERS))
CONFIG_NAMES: tuple[str, ...] = tuple(sorted(_CONFIG_PARSERS))
