"""Which cameras this machine has, for the message shown when a camera cannot be opened.

- Linux: the ``/dev/video*`` nodes, named from sysfs
  (``/sys/class/video4linux/videoN/name``); v4l2loopback devices are marked,
  since they are virtual cameras (outputs of other programs, or of ours).
- macOS and Windows: FFmpeg's own list (``list_devices`` of the
  avfoundation and dshow inputs), which it prints to its log; the log lines
  are captured through PyAV and parsed.

FFmpeg's log is also where the reason for a failed open is (a display that
cannot be opened, a frame rate the camera does not offer):
:func:`ffmpeg_log` captures it around a call.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import av.logging

DEV = Path("/dev")
V4L2_SYSFS = Path("/sys/class/video4linux")
_AVFOUNDATION_ENTRY = re.compile(r"^\s*\[(\d+)\]\s+(.+?)\s*$")
_DSHOW_ENTRY = re.compile(r'^\s*"(.+)"\s+\((video|audio|none)\)\s*$')
_DSHOW_SECTION = re.compile(r"DirectShow (video|audio) devices", re.IGNORECASE)
_DSHOW_LEGACY_ENTRY = re.compile(r'^\s*"(.+)"\s*$')


@contextmanager
def ffmpeg_log(level: int = av.logging.ERROR) -> Iterator[list[tuple[int, str, str]]]:
    """FFmpeg's log lines at ``level`` or above, from this thread, while the block runs."""
    previous = av.logging.get_level()
    av.logging.set_level(level)
    try:
        with av.logging.Capture() as logs:
            yield logs
    finally:
        av.logging.set_level(previous)


def last_log_line(logs: list[tuple[int, str, str]]) -> str | None:
    lines = [message.strip() for _, _, message in logs if message.strip()]
    return lines[-1] if lines else None


def linux_cameras(dev: Path = DEV, sysfs: Path = V4L2_SYSFS) -> list[str]:
    """``/dev/videoN (name)`` for every V4L2 node, in number order; loopback devices marked."""
    nodes = sorted(dev.glob("video[0-9]*"), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else 0)
    entries = []
    for node in nodes:
        info = sysfs / node.name
        name = _read_text(info / "name")
        virtual = "/virtual/" in str(info.resolve()) if info.exists() else False
        label = f"{node} ({name})" if name else str(node)
        entries.append(label + (" [v4l2loopback: a virtual camera]" if virtual else ""))
    return entries


def pyav_devices(input_format: str) -> list[str]:
    """The video devices FFmpeg's ``input_format`` (avfoundation, dshow) lists, as it names them."""
    dummy = "" if input_format == "avfoundation" else "dummy"
    with ffmpeg_log(av.logging.INFO) as logs:
        try:
            av.open(dummy, format=input_format, options={"list_devices": "true"}).close()
        except (av.FFmpegError, OSError, ValueError):
            pass  # listing always "fails": the list is in the log
    lines = [line for _, _, message in logs for line in message.splitlines()]
    return parse_avfoundation_list(lines) if input_format == "avfoundation" else parse_dshow_list(lines)


def parse_avfoundation_list(lines: list[str]) -> list[str]:
    """``[0] Name`` entries of the video section of avfoundation's device list, as ``0: Name``."""
    entries, in_video = [], False
    for line in lines:
        lowered = line.lower()
        if "video devices" in lowered:
            in_video = True
            continue
        if "audio devices" in lowered:
            in_video = False
            continue
        match = _AVFOUNDATION_ENTRY.match(line)
        if in_video and match:
            entries.append(f"{match.group(1)}: {match.group(2)}")
    return entries


def parse_dshow_list(lines: list[str]) -> list[str]:
    """Video device names of dshow's device list (``"Name" (video)``, or the older per-section form)."""
    entries, section = [], None
    for line in lines:
        match = _DSHOW_ENTRY.match(line)
        if match:
            if match.group(2) == "video":
                entries.append(match.group(1))
            continue
        heading = _DSHOW_SECTION.search(line)
        if heading:
            section = heading.group(1).lower()
            continue
        legacy = _DSHOW_LEGACY_ENTRY.match(line)
        if legacy and section == "video" and not line.strip().startswith('"@'):
            entries.append(legacy.group(1))
    return entries


def list_cameras(system: str | None = None) -> list[str]:
    """The cameras of this machine, as the user would name them after ``camera:``."""
    system = system or platform.system()
    if system == "Darwin":
        return pyav_devices("avfoundation")
    if system == "Windows":
        return pyav_devices("dshow")
    return linux_cameras()


def describe_cameras(system: str | None = None) -> str:
    """The camera list for an error message, with what to do when it is empty."""
    system = system or platform.system()
    cameras = list_cameras(system)
    if cameras:
        listed = "\n".join(f"  {entry}" for entry in cameras)
        example = {"Darwin": "camera:1", "Windows": 'camera:"Integrated Camera"'}.get(system, "camera:/dev/video2")
        return f"cameras here:\n{listed}\npick one with --input {example}"
    if system in ("Darwin", "Windows"):
        return "FFmpeg lists no camera here (is one connected, and may this terminal use it? see the OS privacy settings)"
    return "no /dev/video* device here: is a camera connected? (in a VM or container, pass the device through)"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
