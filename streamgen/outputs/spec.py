"""``--output`` values: what each names, the checks made before a model loads, and the sinks they become.

    virtualcam[:DEVICE]   the OS's virtual camera (a v4l2loopback device such as /dev/video10 on Linux)
    file:PATH             a video file (.mp4, .mkv, ...)
    window                a local preview window
    whep                  WHEP viewers (OBS, a browser) on the control port; no local sink

:func:`check_outputs` fails with one message (ConfigError) when an output
cannot work here: a file that cannot be created or hold the codec, no
virtual camera device, no display. :func:`open_sinks` builds the sinks; they
open their file, device or window on the first frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

from ..errors import ConfigError
from .sink import FrameSink

OutputKind = Literal["virtualcam", "file", "window", "whep"]
OUTPUT_FORMS = "virtualcam[:DEVICE], file:PATH, window or whep"


@dataclass(frozen=True)
class OutputSpec:
    """One ``--output``: its kind and, for ``file`` and ``virtualcam``, its path or device."""

    kind: OutputKind
    target: str | None = None

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}:{self.target}"


@dataclass(frozen=True)
class SinkSettings:
    """What the sinks need besides their spec: the stream's nominal rate, the file encoder, the window title."""

    fps: float
    codec: str
    bitrate_kbps: int | None = None
    title: str = "streamgen"


def parse_output(text: str) -> OutputSpec:
    """An ``--output`` value → its spec (ConfigError naming the accepted forms otherwise)."""
    kind, sep, target = text.partition(":")
    if kind == "file":
        if not target:
            raise ConfigError(f"--output {text!r}: give the file after 'file:', e.g. file:out.mp4")
        return OutputSpec("file", target)
    if kind == "virtualcam":
        return OutputSpec("virtualcam", target or None)
    if kind in ("window", "whep") and not sep:
        return OutputSpec(kind)  # type: ignore[arg-type]
    hint = f"; for a video file write file:{text}" if Path(text).suffix else ""
    raise ConfigError(f"--output {text!r} is not an output: use {OUTPUT_FORMS}{hint}")


def parse_outputs(texts: list[str]) -> list[OutputSpec]:
    """Every ``--output``, each at most once (two windows, or one file twice, is a mistake)."""
    specs = [parse_output(text) for text in texts]
    seen: set[str] = set()
    for spec in specs:
        key = f"file:{Path(spec.target or '').resolve()}" if spec.kind == "file" else str(spec)
        if key in seen:
            raise ConfigError(f"--output {spec} is given twice")
        seen.add(key)
    return specs


def check_outputs(specs: list[OutputSpec], settings: SinkSettings) -> dict[OutputSpec, str]:
    """Fail now (ConfigError) if an output cannot work here; returns what each check found (the virtual camera's device)."""
    from .video_writer import check_output_path  # noqa: PLC0415

    found: dict[OutputSpec, str] = {}
    for spec in specs:
        if spec.kind == "file":
            check_output_path(Path(spec.target or ""), settings.codec)
        elif spec.kind == "virtualcam":
            from .virtualcam import check_virtual_camera  # noqa: PLC0415

            found[spec] = check_virtual_camera(settings.fps, spec.target)
        elif spec.kind == "window":
            from .window import check_window  # noqa: PLC0415

            check_window()
    return found


def open_sinks(specs: list[OutputSpec], settings: SinkSettings) -> list[FrameSink]:
    """The sinks for ``specs`` (``whep`` has none: viewers attach to the session itself)."""
    sinks: list[FrameSink] = []
    for spec in specs:
        if spec.kind == "file":
            from .file_sink import FileSink  # noqa: PLC0415

            sinks.append(FileSink(Path(spec.target or ""), settings.codec, Fraction(settings.fps).limit_denominator(1001), settings.bitrate_kbps))
        elif spec.kind == "virtualcam":
            from .virtualcam import VirtualCameraSink  # noqa: PLC0415

            sinks.append(VirtualCameraSink(settings.fps, spec.target))
        elif spec.kind == "window":
            from .window import WindowSink  # noqa: PLC0415

            sinks.append(WindowSink(settings.title))
    return sinks
