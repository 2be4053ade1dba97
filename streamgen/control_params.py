"""The schema of what steers an image beside the prompt: ControlNet entries and the IP-Adapter's reference image.

Pure validation (no torch): the server runs it on its event loop for every
offer and every live update, the Python API on the caller's thread. What it
accepts and how it reads errors follows :mod:`streamgen.params`.

ControlNets are a list, addressed by position. On a live update an entry at
an existing position changes only the fields it names
(``[{"conditioning_scale": 0.3}]`` touches the first ControlNet and nothing
else; ``{}`` leaves an entry as it is); an entry past the end attaches a new
ControlNet and must name its ``model``. A ControlNet's model cannot change on
a running stream (another ControlNet is another set of weights): that is a
new stream. ``enabled: false`` detaches one without renumbering the others.

The reference image travels as bytes (PNG, JPEG or WebP, base64 in JSON,
optionally as a ``data:`` URL) and is decoded off the event loop, where its
embedding is computed once per distinct image (keyed by its SHA-256).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import is_finite_number
from .errors import ConfigError
from .preprocessor_settings import default_preprocessor_settings, parse_preprocessor_settings

MAX_CONTROLNETS = 4
MAX_CONDITIONING_SCALE = 5.0
MAX_IP_ADAPTER_SCALE = 2.0
MAX_REFERENCE_IMAGE_BYTES = 8 * 1024 * 1024
MAX_MODEL_NAME_CHARS = 512
_CONTROLNET_FIELDS = ("model", "preprocessor", "preprocessor_settings", "conditioning_scale", "start", "end", "enabled")


@dataclass(frozen=True)
class ControlNetParams:
    """One attached ControlNet: which weights, how its control image is made, how strongly and when it steers.

    ``start``/``end`` are fractions of the stream's denoising steps: step i
    of n is steered when ``start <= i/n`` and ``(i+1)/n <= end`` (diffusers'
    ``control_guidance_start``/``_end`` rule).
    """

    model: str
    preprocessor: str = "passthrough"
    preprocessor_settings: Any = None  # the preprocessor's settings dataclass (streamgen.preprocessor_settings)
    conditioning_scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.preprocessor_settings is None:
            object.__setattr__(self, "preprocessor_settings", default_preprocessor_settings(self.preprocessor))

    def steers_step(self, index: int, count: int) -> bool:
        """Whether step ``index`` of ``count`` gets this ControlNet's residuals."""
        return self.enabled and not (index / count < self.start or (index + 1) / count > self.end)

    @property
    def control_key(self) -> tuple[str, Any]:
        """What the control image depends on: two entries with equal keys make the same image of a frame."""
        return self.preprocessor, self.preprocessor_settings

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "preprocessor": self.preprocessor,
            "preprocessor_settings": self.preprocessor_settings.to_dict(),
            "conditioning_scale": self.conditioning_scale,
            "start": self.start,
            "end": self.end,
            "enabled": self.enabled,
        }


@dataclass(frozen=True, eq=False)
class ReferenceImage:
    """An encoded image (PNG/JPEG/WebP bytes) or a decoded one (an (H, W, 3) uint8 array), named by its content.

    Equal digests are equal images: the IP-Adapter embeds each digest once.
    """

    sha256: str
    data: bytes | None = field(default=None, repr=False)
    pixels: Any = field(default=None, repr=False)  # an (H, W, 3) uint8 numpy array or torch tensor, when given decoded (the Python API)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReferenceImage) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: a digest (not the bytes, which can be megabytes); sending it back keeps the image."""
        size = len(self.data) if self.data is not None else int(getattr(self.pixels, "nbytes", 0))
        return {"sha256": self.sha256, "bytes": size}

    @classmethod
    def from_bytes(cls, data: bytes) -> "ReferenceImage":
        return cls(hashlib.sha256(data).hexdigest(), data=bytes(data))

    @classmethod
    def from_pixels(cls, pixels: Any) -> "ReferenceImage":
        """``pixels``: (H, W, 3) uint8 (numpy or torch on the CPU); the digest covers its shape and bytes."""
        raw = pixels.tobytes() if hasattr(pixels, "tobytes") else pixels.numpy().tobytes()
        digest = hashlib.sha256(repr(tuple(pixels.shape)).encode() + raw).hexdigest()
        return cls(digest, pixels=pixels)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(name: str, value: Any, low: float, high: float) -> float:
    if not is_finite_number(value):
        raise ConfigError(f"{name} must be a finite number, got {_describe(value)}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return float(value)


def _model_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must name a ControlNet (a preset name, hub id or path), got {_describe(value)}")
    if len(value) > MAX_MODEL_NAME_CHARS or "\x00" in value:
        raise ConfigError(f"{name} is not a usable model name ({len(value)} characters)")
    return value


def _entry(name: str, values: Any, base: ControlNetParams | None) -> ControlNetParams:
    if isinstance(values, ControlNetParams):
        values = values.to_dict()
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name} must be an object with the keys {', '.join(_CONTROLNET_FIELDS)}, got {_describe(values)}")
    unknown = [key for key in values if key not in _CONTROLNET_FIELDS]
    if unknown:
        raise ConfigError(f"unknown ControlNet setting {_describe(unknown[0])} in {name}; known: {', '.join(_CONTROLNET_FIELDS)}")
    if base is None:
        if "model" not in values:
            raise ConfigError(f"{name} attaches a new ControlNet and must name its model")
        model = _model_name(f"{name}.model", values["model"])
    else:
        model = base.model
        if "model" in values and values["model"] != base.model:
            raise ConfigError(
                f"{name}.model cannot change on a running stream ({base.model!r} -> {_describe(values['model'])}): "
                "another ControlNet is another set of weights; start a new stream with it"
            )
    preprocessor = values.get("preprocessor", base.preprocessor if base else "passthrough")
    if not isinstance(preprocessor, str):
        raise ConfigError(f"{name}.preprocessor must be a preprocessor name, got {_describe(preprocessor)}")
    same_preprocessor = base is not None and preprocessor == base.preprocessor
    settings_values = values.get("preprocessor_settings", {})
    if settings_values is None:
        settings_values = {}
    if not isinstance(settings_values, Mapping):
        raise ConfigError(f"{name}.preprocessor_settings must be an object, got {_describe(settings_values)}")
    try:
        settings = parse_preprocessor_settings(preprocessor, settings_values, base.preprocessor_settings if same_preprocessor else None)
    except ConfigError as error:
        raise ConfigError(f"{name}: {error}") from None
    start = _number(f"{name}.start", values["start"], 0.0, 1.0) if "start" in values else (base.start if base else 0.0)
    end = _number(f"{name}.end", values["end"], 0.0, 1.0) if "end" in values else (base.end if base else 1.0)
    if start >= end:
        raise ConfigError(f"{name}.start must be below its end (fractions of the denoising steps), got start {start:g} and end {end:g}")
    scale = values.get("conditioning_scale", base.conditioning_scale if base else 1.0)
    scale = _number(f"{name}.conditioning_scale", scale, 0.0, MAX_CONDITIONING_SCALE)
    enabled = values.get("enabled", base.enabled if base else True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{name}.enabled must be true or false, got {_describe(enabled)}")
    return ControlNetParams(model, preprocessor, settings, scale, start, end, enabled)


def parse_controlnets(name: str, value: Any, base: Sequence[ControlNetParams] = ()) -> tuple[ControlNetParams, ...]:
    """``base`` with the entries of ``value`` applied by position (see the module docstring)."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list of ControlNet entries (objects), got {_describe(value)}")
    if len(value) > MAX_CONTROLNETS:
        raise ConfigError(f"{name} may hold at most {MAX_CONTROLNETS} ControlNets, got {len(value)}")
    out = list(base)
    for i, values in enumerate(value):
        entry = _entry(f"{name}[{i}]", values, out[i] if i < len(out) else None)
        if i < len(out):
            out[i] = entry
        else:
            out.append(entry)
    return tuple(out)


def parse_reference_image(name: str, value: Any, base: ReferenceImage | None = None) -> ReferenceImage | None:
    """``None`` (no reference image), a :class:`ReferenceImage`, base64 (or a ``data:image/...;base64,`` URL), or the digest form of the current one."""
    if value is None or isinstance(value, ReferenceImage):
        return value
    if isinstance(value, Mapping):
        if base is not None and value.get("sha256") == base.sha256:
            return base
        raise ConfigError(f"{name} as an object names the current image by its sha256; send the image itself (base64) to change it")
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be an image as base64 text (or a data: URL), got {_describe(value)}")
    text = value
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64") or not header[5:].startswith("image/"):
            raise ConfigError(f"{name} must be a base64 data: URL of an image (data:image/png;base64,...), got {_describe(header)}")
    if len(text) > (MAX_REFERENCE_IMAGE_BYTES * 4) // 3 + 4:
        raise ConfigError(f"{name} is larger than the limit of {MAX_REFERENCE_IMAGE_BYTES // (1024 * 1024)} MiB")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{name} is not valid base64") from None
    if not data:
        raise ConfigError(f"{name} is empty")
    if not data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")) and not (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        raise ConfigError(f"{name} is not a PNG, JPEG or WebP image")
    return ReferenceImage.from_bytes(data)

