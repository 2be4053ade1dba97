"""What ``streamgen camera`` reads: a camera, the screen, a video file, a stream URL or a synthetic clip.

    camera[:DEVICE]     a camera, through FFmpeg's input for this OS:
                        v4l2 on Linux (camera = /dev/video0, camera:2 = /dev/video2, camera:/dev/video4),
                        avfoundation on macOS (camera = device 0, camera:1, camera:"FaceTime HD Camera"),
                        dshow on Windows (camera = the first camera FFmpeg lists, camera:"Integrated Camera")
    screen[:TARGET]     the screen: x11grab on Linux (screen = $DISPLAY, screen::1.0+100,200),
                        avfoundation on macOS (screen = "Capture screen 0", screen:1),
                        gdigrab on Windows (screen = desktop, screen:title=Untitled - Notepad)
    PATH                a video file, played in real time (--loop starts it again at the end)
    URL                 anything FFmpeg opens with a scheme: rtsp://, rtmp://, srt://, http(s)://, udp://
                        (a live stream is read as it comes; a recording, which has a length, in real time)
    synthetic[:FRAMES]  a generated moving pattern, endless unless FRAMES is given
    none                no input: a video model's --mode txt2vid generates the stream from the prompt

Every source is opened here, before the model loads, so a camera that
cannot be opened is reported at once, with the cameras this machine has
(:mod:`streamgen.commands.camera_devices`). A source yields PyAV frames as
decoded, with their time in seconds from the first one; scaling to the
stream's size happens later, in the server's worker, as for WebRTC input.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
from av import VideoFrame

from ..errors import InputError
from .camera_devices import describe_cameras, ffmpeg_log, last_log_line, pyav_devices
from .frame_sources import SYNTHETIC_DEFAULT_SIZE, fraction_of, synthetic_frame

InputKind = Literal["camera", "screen", "file", "url", "synthetic", "none"]
INPUT_FORMS = "camera[:DEVICE], screen[:TARGET], a video file, a stream URL (rtsp://, http://, ...), synthetic[:FRAMES] or none (txt2vid)"
URL_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class InputSpec:
    """One ``--input``: what kind of source, and which (empty: the default one)."""

    kind: InputKind
    target: str = ""
    frames: int | None = None  # synthetic:N

    def __str__(self) -> str:
        return self.kind if not self.target else f"{self.kind}:{self.target}"


@dataclass(frozen=True)
class CaptureSettings:
    """What is asked of a device (rate, size, FFmpeg options) and of a synthetic clip (rate, size)."""

    fps: float = 30.0
    size: tuple[int, int] | None = None
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceInput:
    """How PyAV opens a camera or screen: the FFmpeg input format, what it is given, its options."""

    format: str
    target: str
    options: dict[str, str]


def parse_input(text: str) -> InputSpec:
    """An ``--input`` value → its spec; a file must exist (InputError otherwise)."""
    if text == "none":
        return InputSpec("none")
    kind, sep, rest = text.partition(":")
    if kind in ("camera", "screen"):
        return InputSpec(kind, rest.strip('"'))  # type: ignore[arg-type]
    if kind == "synthetic":
        if not sep:
            return InputSpec("synthetic")
        if not rest.isdigit() or int(rest) < 1:
            raise InputError(f"--input {text!r}: the synthetic clip length must be a positive number of frames, e.g. synthetic:120 (or synthetic for an endless one)")
        return InputSpec("synthetic", frames=int(rest))
    if "://" in text:
        return InputSpec("url", text)
    if not Path(text).exists():
        raise InputError(f"--input {text!r} does not exist; give {INPUT_FORMS}")
    if Path(text).is_dir():
        raise InputError(f"--input {text!r} is a folder; give a video file (streamgen run reads folders of images)")
    return InputSpec("file", text)


def device_input(spec: InputSpec, settings: CaptureSettings, system: str | None = None) -> DeviceInput:
    """The FFmpeg input for a camera or the screen on ``system`` (``platform.system()`` by default)."""
    system = system or platform.system()
    options = {"framerate": f"{settings.fps:g}"}
    if settings.size is not None:
        options["video_size"] = f"{settings.size[0]}x{settings.size[1]}"
    if spec.kind == "camera":
        device = _camera_device(spec.target, system)
    else:
        device = _screen_device(spec.target, system)
    options.update(device.options)
    options.update(settings.options)
    return DeviceInput(device.format, device.target, options)


def _camera_device(target: str, system: str) -> DeviceInput:
    if system == "Darwin":
        name = target or "0"
        return DeviceInput("avfoundation", name if ":" in name else f"{name}:none", {})
    if system == "Windows":
        if not target:
            cameras = pyav_devices("dshow")
            if not cameras:
                raise InputError(f"no camera to open: {describe_cameras(system)}")
            target = cameras[0]
        return DeviceInput("dshow", target if target.startswith("video=") else f"video={target}", {})
    if not target:
        return DeviceInput("v4l2", "/dev/video0", {})
    return DeviceInput("v4l2", f"/dev/video{target}" if target.isdigit() else target, {})


def _screen_device(target: str, system: str) -> DeviceInput:
    if system == "Darwin":
        name = f"Capture screen {target or 0}" if not target or target.isdigit() else target
        return DeviceInput("avfoundation", f"{name}:none", {"capture_cursor": "1"})
    if system == "Windows":
        return DeviceInput("gdigrab", target or "desktop", {})
    return DeviceInput("x11grab", target or os.environ.get("DISPLAY") or ":0", {})


class CaptureSource:
    """Frames from one source, and whether they come at their own pace (see module docstring).

    ``live`` sources (devices, URLs) deliver frames as they happen: read as
    fast as they come. Others (files, synthetic) are read ahead: the reader
    paces them by their times. ``restart`` starts from the first frame again.
    ``reopen_to_start``: the source was opened (to check it) before the model
    loaded, which may take minutes; a network stream may have timed out or
    buffered that far behind by then, so it is opened again to start.
    """

    description: str
    live: bool
    rate: Fraction
    reopen_to_start: bool = False

    def frames(self) -> Iterator[tuple[VideoFrame, float | None]]:  # pragma: no cover - interface
        raise NotImplementedError

    def restart(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file (idempotent)."""


class PyAVSource(CaptureSource):
    """The first video stream of anything FFmpeg opens: a device, a file or a URL."""

    def __init__(self, spec: InputSpec, target: str, *, input_format: str | None = None, options: Mapping[str, str] | None = None, live: bool) -> None:
        self.spec = spec
        self.target = target
        self.input_format = input_format
        self.options = dict(options or {})
        self.live = live
        self.reopen_to_start = spec.kind == "url"
        self._container = None
        self._open()

    def _open(self) -> None:
        timeout = URL_TIMEOUT_SECONDS if self.spec.kind == "url" else None
        with ffmpeg_log() as logs:
            try:
                container = av.open(self.target, format=self.input_format, options=self.options, timeout=timeout)
            except (av.FFmpegError, OSError, ValueError) as error:
                raise self._open_error(error, last_log_line(logs)) from None
        if not container.streams.video:
            container.close()
            raise InputError(f"input {self.target!r} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        self._container, self._stream = container, stream
        if self.spec.kind == "url":  # a recording behind a URL has a length: it is played in real time, like a file
            self.live = container.duration is None
        self.rate = Fraction(stream.average_rate or stream.guessed_rate or 30)
        codec = stream.codec_context
        what = {"camera": "camera", "screen": "screen", "url": "stream", "file": "file"}[self.spec.kind]
        via = f", {self.input_format}" if self.input_format else ""
        self.description = f"{what} {self.target}{via} ({codec.name}, {codec.width}x{codec.height}, {float(self.rate):.3g} fps)"

    def _open_error(self, error: Exception, log_line: str | None) -> InputError:
        reason = getattr(error, "strerror", None) or str(error)
        if log_line and log_line not in reason:
            reason = f"{reason}: {log_line}"
        if self.spec.kind == "camera":
            return InputError(f"cannot open camera {self.target!r} ({self.input_format}): {reason}\n{describe_cameras()}")
        if self.spec.kind == "screen":
            return InputError(f"cannot capture the screen {self.target!r} ({self.input_format}): {reason}{_screen_hint(self.input_format)}")
        if self.spec.kind == "url":
            return InputError(f"cannot open stream {self.target!r}: {reason}")
        return InputError(f"cannot read input {self.target!r}: {reason}")

    def frames(self) -> Iterator[tuple[VideoFrame, float | None]]:
        first: float | None = None
        try:
            for frame in self._container.decode(self._stream):
                seconds = frame.time
                if seconds is not None:
                    first = seconds if first is None else first
                    seconds -= first
                yield frame, seconds
        except (av.FFmpegError, OSError) as error:
            raise InputError(f"reading {self.description} failed: {getattr(error, 'strerror', None) or error}") from None

    def restart(self) -> None:
        self.close()
        self._open()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class SyntheticCapture(CaptureSource):
    """The moving test pattern of ``streamgen run``'s synthetic input, endless unless ``count`` is given."""

    live = False

    def __init__(self, count: int | None, width: int, height: int, fps: float) -> None:
        self.count = count
        self.width, self.height = width, height
        self.rate = fraction_of(fps)
        length = f"{count} frames" if count else "endless"
        self.description = f"synthetic pattern ({length}, {width}x{height}, {fps:g} fps)"

    def frames(self) -> Iterator[tuple[VideoFrame, float | None]]:
        index = 0
        while self.count is None or index < self.count:
            yield VideoFrame.from_ndarray(synthetic_frame(index, self.width, self.height), format="rgb24"), float(index / self.rate)
            index += 1

    def restart(self) -> None:
        """Nothing to reopen: :meth:`frames` starts from the first frame."""


class NoInput(CaptureSource):
    """``--input none``: nothing is captured; the model generates the stream (a video model's txt2vid)."""

    def __init__(self) -> None:
        self.description = "none: txt2vid, generated from the prompt"
        self.live = True
        self.rate = Fraction(30)

    def frames(self) -> Iterator[tuple[VideoFrame, float | None]]:
        return iter(())

    def restart(self) -> None:
        pass


def open_capture(spec: InputSpec, settings: CaptureSettings) -> CaptureSource:
    """Open the source ``spec`` names (InputError, with what this machine offers, when it cannot be)."""
    if spec.kind == "none":
        return NoInput()
    if spec.kind == "synthetic":
        width, height = settings.size or SYNTHETIC_DEFAULT_SIZE
        return SyntheticCapture(spec.frames, width, height, settings.fps)
    if spec.kind == "file":
        return PyAVSource(spec, spec.target, live=False)
    if spec.kind == "url":
        options = {"rtsp_transport": "tcp"} if spec.target.lower().startswith("rtsp") else {}
        return PyAVSource(spec, spec.target, options={**options, **settings.options}, live=True)
    device = device_input(spec, settings)
    return PyAVSource(spec, device.target, input_format=device.format, options=device.options, live=True)


def _screen_hint(input_format: str | None) -> str:
    if input_format == "x11grab":
        if os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("DISPLAY"):
            return "\nthis is a Wayland session without X11: x11grab cannot see it; share the screen through OBS (virtual camera) instead"
        return "\ngive the X display after screen:, e.g. screen::0.0 (and check $DISPLAY)"
    if input_format == "avfoundation":
        return "\nallow screen recording for this terminal in System Settings > Privacy & Security > Screen Recording"
    return ""
