"""``virtualcam``: the stream as a webcam that OBS, Zoom, Meet or any other program can pick.

pyvirtualcam (the ``streamgen[virtualcam]`` extra) writes frames to the
operating system's virtual camera: a v4l2loopback device on Linux, the OBS
Virtual Camera on Windows and macOS. Neither exists until the user sets it
up once, so :func:`check_virtual_camera` opens the camera before the model
loads and turns each failure into a message that says what to do on this
operating system (:func:`setup_steps`): install the package, load the
kernel module, or install OBS and start its virtual camera once.

pyvirtualcam is imported only here, only when this output is asked for.
"""

from __future__ import annotations

import platform
from typing import Any

from ..errors import ConfigError
from .sink import OutputError, Picture

INSTALL_HINT = "pip install 'streamgen[virtualcam]'"
PROBE_SIZE = (640, 480)  # the check opens the camera at this size; the stream reopens it at its own

LINUX_STEPS = """\
set up a v4l2loopback device once (it lasts until the next reboot):
  sudo apt install v4l2loopback-dkms        # Fedora: sudo dnf install v4l2loopback; Arch: sudo pacman -S v4l2loopback-dkms
  sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label="streamgen"
then run this command again; the camera is called "streamgen" in OBS, Zoom and Meet (docs/camera.md: loading it at boot)"""

WINDOWS_STEPS = """\
install OBS Studio 28 or later (https://obsproject.com), which installs the OBS Virtual Camera;
start OBS once, press "Start Virtual Camera", then "Stop Virtual Camera" and close OBS;
then run this command again; the camera is called "OBS Virtual Camera" in Zoom and Meet"""

MACOS_STEPS = """\
install OBS Studio 30 or later (https://obsproject.com); start it once and press "Start Virtual Camera"
(macOS asks you to allow the system extension in System Settings > Privacy & Security), then stop it and quit OBS;
then run this command again; the camera is called "OBS Virtual Camera" in Zoom and Meet"""


def setup_steps(system: str | None = None) -> str:
    """How to get a virtual camera device on ``system`` (``platform.system()`` by default)."""
    system = system or platform.system()
    if system == "Windows":
        return WINDOWS_STEPS
    if system == "Darwin":
        return MACOS_STEPS
    return LINUX_STEPS


def load_pyvirtualcam() -> Any:
    """The pyvirtualcam module, or ConfigError saying how to install it."""
    try:
        import pyvirtualcam  # noqa: PLC0415 - optional: only for --output virtualcam
    except ImportError:
        raise ConfigError(f"--output virtualcam needs the pyvirtualcam package: {INSTALL_HINT}") from None
    return pyvirtualcam


def open_camera(width: int, height: int, fps: float, device: str | None) -> Any:
    """A pyvirtualcam camera taking RGB frames, or ConfigError with the setup steps for this OS."""
    pyvirtualcam = load_pyvirtualcam()
    try:
        return pyvirtualcam.Camera(width=width, height=height, fps=fps, fmt=pyvirtualcam.PixelFormat.RGB, device=device)
    except (RuntimeError, OSError, ValueError) as error:
        where = f" {device!r}" if device else ""
        raise ConfigError(f"no virtual camera device{where} to write to ({error})\n{setup_steps()}") from None


def check_virtual_camera(fps: float, device: str | None = None) -> str:
    """Open and close the virtual camera once (before the model loads); returns its device name."""
    camera = open_camera(*PROBE_SIZE, fps, device)
    try:
        return str(camera.device)
    finally:
        camera.close()


class VirtualCameraSink:
    """Send pictures to the virtual camera, opened at the stream's size on the first picture."""

    name = "virtualcam"
    realtime = True

    def __init__(self, fps: float, device: str | None = None) -> None:
        self.fps = fps
        self.device = device
        self.frames_written = 0
        self.opened: str | None = None  # the device pyvirtualcam picked
        self._camera: Any = None

    def write(self, picture: Picture) -> None:
        if self._camera is None:
            height, width = picture.image.shape[:2]
            try:
                self._camera = open_camera(width, height, self.fps, self.device)
            except ConfigError as error:
                raise OutputError(str(error)) from None
            self.opened = str(self._camera.device)
        try:
            self._camera.send(picture.image)
        except (RuntimeError, OSError, ValueError) as error:
            raise OutputError(f"the virtual camera {self.opened!r} stopped taking frames ({error})") from None
        self.frames_written += 1

    def close(self) -> None:
        if self._camera is not None:
            self._camera.close()
            self._camera = None

    def describe(self) -> str:
        device = self.opened or self.device or "(not opened)"
        return f"virtualcam {device} ({self.frames_written} frames)"
