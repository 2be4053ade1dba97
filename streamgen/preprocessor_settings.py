"""Live settings of the ControlNet image preprocessors: JSON-ish mappings in, frozen dataclasses out.

A preprocessor turns input frames into the control image a ControlNet is
conditioned on (edges, depth, pose, ...). Its settings may change on a
running stream, so they are plain frozen dataclasses passed with every call
(:mod:`streamgen.models.preprocessors`), never baked into a built object.

This module is the one schema for them, pure Python (no torch), so the HTTP
API and the data channel can validate a change before anything runs. Errors
are :class:`~streamgen.errors.ConfigError` naming the field, what was
expected and what was received, in the style of :mod:`streamgen.params`.
The validators are local on purpose: this module stays independent of the
stream parameter schema.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from .config import is_finite_number
from .errors import ConfigError

PREPROCESSOR_NAMES: tuple[str, ...] = ("passthrough", "canny", "depth", "pose", "soft_edge", "lineart", "blur", "tile", "feedback")

DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
DEFAULT_POSE_MODEL = "usyd-community/vitpose-base-simple"
# ``model="tiny"``: a random-weight model built in code (tests, smoke runs; its output means nothing).
TINY_MODEL = "tiny"
MAX_MODEL_CHARS = 1000


@dataclass(frozen=True)
class PassthroughSettings:
    """The frame itself is the control image; nothing to set."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CannySettings:
    """Canny edges. Thresholds apply to the gradient magnitude of the [0, 1] grey image; ``sigma`` is the pre-blur."""

    low_threshold: float = 0.1
    high_threshold: float = 0.2
    sigma: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DepthSettings:
    """Monocular depth. ``resolution`` is the model input's shorter side, rounded to a multiple of 14 (the ViT patch)."""

    model: str = DEFAULT_DEPTH_MODEL
    resolution: int = 518

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PoseSettings:
    """Body pose skeleton. Keypoints below ``min_confidence`` are left out; limbs are ``line_width`` output pixels thick."""

    model: str = DEFAULT_POSE_MODEL
    min_confidence: float = 0.3
    line_width: int = 8

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SoftEdgeSettings:
    """Soft (HED/PiDiNet-like) edges: blur by ``sigma`` (0 = none), then gradient magnitudes below ``threshold`` go black."""

    sigma: float = 1.0
    threshold: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LineartSettings:
    """Line drawing: strokes of width about ``sigma`` pixels; responses below ``threshold`` go black."""

    sigma: float = 1.0
    threshold: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BlurSettings:
    """Gaussian blur with standard deviation ``sigma`` pixels (the ControlNet blur/tile-blur convention)."""

    sigma: float = 3.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TileSettings:
    """Downscale by ``factor`` then scale back up (ControlNet tile); 1 leaves the frame as it is."""

    factor: float = 4.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FeedbackSettings:
    """The stream's previous output (TemporalNet-style); ``mix`` < 1 blends in the current frame."""

    mix: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PreprocessorSettings = Union[
    PassthroughSettings,
    CannySettings,
    DepthSettings,
    PoseSettings,
    SoftEdgeSettings,
    LineartSettings,
    BlurSettings,
    TileSettings,
    FeedbackSettings,
]

SETTINGS_TYPES: dict[str, type] = {
    "passthrough": PassthroughSettings,
    "canny": CannySettings,
    "depth": DepthSettings,
    "pose": PoseSettings,
    "soft_edge": SoftEdgeSettings,
    "lineart": LineartSettings,
    "blur": BlurSettings,
    "tile": TileSettings,
    "feedback": FeedbackSettings,
}
assert tuple(SETTINGS_TYPES) == PREPROCESSOR_NAMES, "names and settings types disagree"


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(low: float, high: float):
    def parse(name: str, value: Any) -> float:
        if not is_finite_number(value):
            raise ConfigError(f"{name} must be a finite number, got {_describe(value)}")
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
        return float(value)

    return parse


def _integer(low: int, high: int):
    def parse(name: str, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {_describe(value)}")
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        return value

    return parse


def _model(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string (a hub id, a local directory or 'tiny'), got {_describe(value)}")
    if not value.strip():
        raise ConfigError(f"{name} must not be empty; use a hub id, a local directory or 'tiny'")
    if len(value) > MAX_MODEL_CHARS:
        raise ConfigError(f"{name} is {len(value)} characters long; the limit is {MAX_MODEL_CHARS}")
    return value


# Bounds of every setting, by preprocessor. Kept next to the dataclasses they check.
_PARSERS: dict[str, dict[str, Any]] = {
    "passthrough": {},
    "canny": {"low_threshold": _number(0.0, 1.0), "high_threshold": _number(0.0, 1.0), "sigma": _number(0.1, 10.0)},
    "depth": {"model": _model, "resolution": _integer(56, 1036)},
    "pose": {"model": _model, "min_confidence": _number(0.0, 1.0), "line_width": _integer(1, 64)},
    "soft_edge": {"sigma": _number(0.0, 10.0), "threshold": _number(0.0, 0.99)},
    "lineart": {"sigma": _number(0.3, 10.0), "threshold": _number(0.0, 0.99)},
    "blur": {"sigma": _number(0.1, 50.0)},
    "tile": {"factor": _number(1.0, 32.0)},
    "feedback": {"mix": _number(0.0, 1.0)},
}
assert all(set(_PARSERS[n]) == {f.name for f in dataclasses.fields(t)} for n, t in SETTINGS_TYPES.items()), "schema and dataclasses disagree"


def check_preprocessor_name(name: Any) -> str:
    """``name`` when it is a known preprocessor; else ConfigError listing them (and the closest, when one is close)."""
    if isinstance(name, str) and name in SETTINGS_TYPES:
        return name
    hint = ""
    if isinstance(name, str):
        close = difflib.get_close_matches(name.strip().lower(), PREPROCESSOR_NAMES, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown preprocessor {_describe(name)}{hint}; known preprocessors: {', '.join(PREPROCESSOR_NAMES)}")


def default_preprocessor_settings(name: str) -> PreprocessorSettings:
    """The default settings of preprocessor ``name`` (ConfigError when it is unknown)."""
    return SETTINGS_TYPES[check_preprocessor_name(name)]()


def parse_preprocessor_settings(name: str, values: Mapping[str, Any], base: PreprocessorSettings | None = None) -> PreprocessorSettings:
    """Validate ``values`` and apply them over ``base`` (the defaults when None) for preprocessor ``name``.

    Unknown settings are rejected by name; every value is checked against its
    bounds; canny's ``low_threshold`` must stay below ``high_threshold`` after
    the change. Raises ConfigError only.
    """
    name = check_preprocessor_name(name)
    cls = SETTINGS_TYPES[name]
    if base is None:
        base = cls()
    elif type(base) is not cls:
        raise ConfigError(f"base settings for {name} must be {cls.__name__}, got {type(base).__name__}")
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name} settings must be a JSON object, got {type(values).__name__}")
    parsers = _PARSERS[name]
    changes: dict[str, Any] = {}
    for key, value in values.items():
        parser = parsers.get(key) if isinstance(key, str) else None
        if parser is None:
            known = ", ".join(sorted(parsers)) or "none"
            raise ConfigError(f"unknown {name} setting {_describe(key)}; known {name} settings: {known}")
        changes[key] = parser(key, value)
    settings = dataclasses.replace(base, **changes)
    if isinstance(settings, CannySettings) and settings.low_threshold >= settings.high_threshold:
        raise ConfigError(
            f"low_threshold must be below high_threshold, got low_threshold={settings.low_threshold:g} "
            f"and high_threshold={settings.high_threshold:g}"
        )
    return settings
