"""``streamgen camera`` end to end: real capture threads, the real server on loopback, real files and devices.

In-process runs (through ``streamgen.cli.main``) cover inputs that end by
themselves; runs that must be steered while they stream (PATCH, typed
prompts, WHEP viewers, Ctrl+C) are real subprocesses, read through their
printed banner like a user would.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from streamgen.commands.camera_console import Console, format_status, parse_typed_line
from streamgen.commands.camera_devices import linux_cameras, parse_avfoundation_list, parse_dshow_list
from streamgen.commands.camera_sources import CaptureSettings, InputSpec, device_input, parse_input
from streamgen.errors import ConfigError, InputError
from streamgen.server.webrtc.capture_track import CaptureTrack
from streamgen.client.webrtc import whep_view

from .media import decode, write_clip

SMALL = ["--width", "64", "--height", "64", "--quiet", "--control-port", "0"]
BANNER = re.compile(r"control\s+(http://127\.0\.0\.1:\d+)\s+session\s+(\w+)\s+secret\s+(\S+)")
ROOT = Path(__file__).resolve().parents[2]


def _mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


# ------------------------------------------------------------------ in-process runs
@pytest.mark.parametrize("extra", [[], ["--frame-buffer-size", "2"]], ids=["one-frame-steps", "two-frame-steps"])
def test_video_file_in_file_out_keeps_times_and_drains(cli, tmp_path, extra):
    """A file input plays in real time and ends the run; the last frames are pushed out of the pipeline."""
    clip, out = tmp_path / "clip.mp4", tmp_path / "out.mp4"
    write_clip(clip, 19, fps=25)  # an odd count: with two-frame steps the last step is completed with padding
    code, stdout, err = cli("camera", "--input", str(clip), "--output", f"file:{out}", "--prompt", "a watercolor", *SMALL, *extra)
    assert code == 0, err
    frames, times = decode(out)
    assert frames and frames[0].shape == (64, 64, 3)
    assert times == sorted(times) and len(set(times)) == len(times)
    assert set(round(t, 3) for t in times) <= {round(i / 25, 3) for i in range(19)}, "outputs keep their input's time"
    assert times[-1] == pytest.approx(18 / 25, abs=1e-3), "the last input frame comes out (stream batch lags a step)"
    assert "ended    the input ended" in stdout
    assert re.search(rf"output   file {re.escape(str(out))} \(\w+, 64x64, {len(frames)} frames\)", stdout)


def test_identity_output_is_each_input_frame_at_its_time(cli, tmp_path):
    """Pictures and timestamps travel together from capture to the file (lossless output to compare)."""
    clip, out = tmp_path / "clip.mp4", tmp_path / "out.mkv"
    write_clip(clip, 12, width=96, height=80, fps=10)
    code, _, err = cli("camera", "--model", "identity", "-i", str(clip), "-o", f"file:{out}", "--codec", "ffv1", "--width", "96", "--height", "80", "--quiet", "--control-port", "0")
    assert code == 0, err
    inputs, input_times = decode(clip)
    outputs, output_times = decode(out)
    assert len(outputs) >= 2 and output_times[-1] == pytest.approx(input_times[-1], abs=1e-3)
    for image, at in zip(outputs, output_times):
        diffs = [_mean_diff(image, source) for source in inputs]
        assert int(np.argmin(diffs)) == input_times.index(min(input_times, key=lambda t: abs(t - at)))
        assert min(diffs) < 4.0


def test_synthetic_input_with_a_video_model(cli, tmp_path):
    out = tmp_path / "out.mp4"
    code, stdout, err = cli("camera", "--model", "tiny-video", "--input", "synthetic:16", "--fps", "20", "--output", f"file:{out}", "--quiet", "--control-port", "0")
    assert code == 0, err
    frames, times = decode(out)
    assert frames and times == sorted(times)
    assert times[-1] == pytest.approx(15 / 20, abs=1e-3), "a video model's buffered chunk is flushed at the end"
    assert "16 read" in stdout


def test_a_txt2vid_stream_needs_no_input(cli, tmp_path):
    """--input none with a video model's --mode txt2vid: the generation clock paces it; --max-frames ends it."""
    out = tmp_path / "out.mp4"
    code, stdout, err = cli(
        "camera", "--model", "tiny-video", "--mode", "txt2vid", "--input", "none", "--max-frames", "20", "--max-fps", "20",
        "--prompt", "a paper boat", "--output", f"file:{out}", "--quiet", "--control-port", "0",
    )
    assert code == 0, err
    frames, times = decode(out)
    assert len(frames) >= 20 and frames[0].shape == (128, 128, 3)
    assert times == sorted(times) and len(set(times)) == len(times), "every generated frame has its own time"
    assert "input    none: txt2vid" in stdout and "ended    generated 20 frames (--max-frames)" in stdout


def test_max_frames_ends_a_looping_input(cli, tmp_path):
    clip, out = tmp_path / "clip.mp4", tmp_path / "out.mp4"
    write_clip(clip, 5, fps=25)
    code, stdout, err = cli("camera", "-i", str(clip), "--loop", "--max-frames", "12", "-o", f"file:{out}", "--model", "identity", *SMALL)
    assert code == 0, err
    _, times = decode(out)
    assert "12 read" in stdout
    assert times[-1] == pytest.approx(11 / 25, abs=1e-3), "a loop continues the clock: the 12th frame is at 0.44 s"


def test_a_recording_behind_a_url_plays_in_real_time(cli, tmp_path):
    """An http:// input (a clip served on loopback): opened again to start, paced by its own times."""
    clip, out = tmp_path / "clip.mp4", tmp_path / "out.mp4"
    write_clip(clip, 10, fps=20)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.mp4"
        code, stdout, err = cli("camera", "--model", "identity", "--input", url, "--output", f"file:{out}", *SMALL)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, err
    assert f"input    stream {url}" in stdout and "10 read" in stdout
    _, times = decode(out)
    assert len(times) >= 5 and times[-1] == pytest.approx(9 / 20, abs=1e-3)


# ------------------------------------------------------------------ mistakes: exit 2, one message, before the model
@pytest.fixture()
def no_model_load(monkeypatch):
    import streamgen.server.worker.pipelines as pipelines

    monkeypatch.setattr(pipelines, "load_server_pipeline", lambda *a, **k: pytest.fail("the model must not load"))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--output", "out.mp4"], "for a video file write file:out.mp4"),
        (["--output", "file:"], "give the file after 'file:'"),
        (["--output", "file:{tmp}/missing/out.mp4"], "does not exist"),
        (["--output", "file:{tmp}/out.txt"], "cannot write"),
        (["--output", "whep", "--output", "whep"], "given twice"),
        (["--output", "whep", "--input", "{tmp}/nothing.mp4"], "does not exist"),
        (["--output", "whep", "--input", "synthetic:0"], "positive number of frames"),
        (["--output", "whep", "--input", "camera", "--loop"], "is a device"),
        (["--output", "whep", "--capture-size", "big"], "--capture-size must look like"),
        (["--output", "whep", "--capture-option", "mjpeg"], "KEY=VALUE"),
        (["--output", "whep", "--strength", "7"], "strength"),
        (["--output", "whep", "--fps", "0"], "--fps must be positive"),
        (["--output", "whep", "--input", "none"], "only a video model's --mode txt2vid"),
        (["--output", "whep", "--model", "tiny-video", "--mode", "txt2vid"], "use --input none"),
    ],
)
def test_mistakes_are_one_message_before_the_model_loads(cli, tmp_path, no_model_load, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = cli("camera", "--input", "synthetic:3", *args, "--control-port", "0")
    assert code == 2 and "Traceback" not in err
    assert err.startswith("streamgen: error:") and needle in err, err


def test_control_port_in_use_is_one_line(cli, no_model_load):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = cli("camera", "--input", "synthetic:3", "--output", "whep", "--control-port", str(port))
    assert code == 2 and err.count("\n") == 1 and "already in use" in err
    assert "--control-port" in err and "--port " not in err  # camera has no --port


@pytest.mark.skipif(sys.platform != "linux", reason="the device list checked here is Linux's /dev/video*")
def test_a_camera_that_cannot_be_opened_lists_the_cameras(cli, tmp_path, no_model_load):
    code, _, err = cli("camera", "--input", "camera:/dev/video97", "--output", f"file:{tmp_path / 'out.mp4'}", "--control-port", "0")
    assert code == 2 and "Traceback" not in err
    assert "cannot open camera '/dev/video97' (v4l2)" in err
    cameras = linux_cameras()
    if cameras:
        assert "cameras here:" in err and all(entry in err for entry in cameras)
    else:
        assert "no /dev/video* device here" in err


def test_virtualcam_without_pyvirtualcam_says_how_to_install_it(cli, monkeypatch, no_model_load):
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)  # "import pyvirtualcam" raises ImportError
    code, _, err = cli("camera", "--input", "synthetic:3", "--output", "virtualcam", "--control-port", "0")
    assert code == 2 and "Traceback" not in err
    assert "pip install 'streamgen[virtualcam]'" in err


def _loopback_devices() -> list[str]:
    if sys.platform != "linux":
        return []
    return [entry.split(" ", 1)[0] for entry in linux_cameras() if "v4l2loopback" in entry]


def test_virtualcam_without_a_device_exits_2_with_the_setup_steps(cli, no_model_load):
    pytest.importorskip("pyvirtualcam", reason="pyvirtualcam is not installed (pip install 'streamgen[virtualcam]')")
    if sys.platform != "linux":
        pytest.skip("the setup steps checked here are Linux's; on Windows and macOS a virtual camera may already exist")
    if _loopback_devices():
        pytest.skip("this machine has a v4l2loopback device, so the virtual camera opens")
    code, _, err = cli("camera", "--input", "synthetic:3", "--output", "virtualcam", "--control-port", "0")
    assert code == 2 and "Traceback" not in err
    assert err.startswith("streamgen: error: no virtual camera device")
    assert 'sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label="streamgen"' in err


def test_frames_reach_a_v4l2loopback_device(tmp_path):
    pytest.importorskip("pyvirtualcam", reason="pyvirtualcam is not installed (pip install 'streamgen[virtualcam]')")
    devices = _loopback_devices()
    if not devices:
        pytest.skip('no v4l2loopback device here (sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label="streamgen")')
    device = devices[0]
    with camera_process("--model", "identity", "--input", "synthetic", "--fps", "15", "--output", f"virtualcam:{device}", *SMALL) as run:
        run.wait_for_banner()
        deadline, frames = time.monotonic() + 30, []
        while not frames and time.monotonic() < deadline:
            try:
                with av.open(device, format="v4l2") as container:
                    for frame in container.decode(video=0):
                        frames.append(frame.to_ndarray(format="rgb24"))
                        if len(frames) >= 5:
                            break
            except av.FFmpegError:
                time.sleep(0.2)  # the writer has not set the format yet
        run.interrupt()
    assert len(frames) >= 5 and frames[0].shape == (64, 64, 3)
    assert any(_mean_diff(a, b) > 0.5 for a, b in zip(frames, frames[1:])), "the moving pattern moves"


# ------------------------------------------------------------------ live runs, steered from outside
@dataclass
class CameraProcess:
    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    base_url: str = ""
    session_id: str = ""
    secret: str = ""

    def start_reading(self) -> None:
        def read() -> None:
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))

        threading.Thread(target=read, daemon=True).start()

    def wait_for_line(self, pattern: str, timeout: float = 90.0) -> re.Match:
        deadline = time.monotonic() + timeout
        compiled = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = compiled.search(line)
                if match:
                    return match
            if self.process.poll() is not None and not any(compiled.search(line) for line in list(self.lines)):
                raise AssertionError(f"the process ended ({self.process.returncode}) before printing {pattern!r}:\n" + "\n".join(self.lines) + self.process.stderr.read())
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} within {timeout:g} s:\n" + "\n".join(self.lines))

    def wait_for_banner(self) -> None:
        match = self.wait_for_line(BANNER.pattern)
        self.base_url, self.session_id, self.secret = match.groups()

    def type_line(self, text: str) -> None:
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(60)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


@contextmanager
def camera_process(*args: str) -> Iterator[CameraProcess]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamgen", "camera", *args], cwd=ROOT, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    run = CameraProcess(process)
    run.start_reading()
    try:
        yield run
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


async def _session(http: aiohttp.ClientSession, run: CameraProcess) -> dict:
    async with http.get(f"{run.base_url}/api/sessions/{run.session_id}", headers=run.headers) as response:
        assert response.status == 200
        return await response.json()


async def _wait_for_outputs(http: aiohttp.ClientSession, run: CameraProcess, more: int, timeout: float = 60.0) -> dict:
    start = (await _session(http, run))["stats"]["frames_out"]
    deadline = time.monotonic() + timeout
    while True:
        described = await _session(http, run)
        if described["stats"]["frames_out"] >= start + more:
            return described
        assert time.monotonic() < deadline, f"fewer than {more} new output frames in {timeout:g} s"
        await asyncio.sleep(0.1)


def _changes(frames: list[np.ndarray]) -> list[int]:
    """Indices where the picture changes (the input is static: only a parameter change can change it)."""
    return [i for i in range(1, len(frames)) if _mean_diff(frames[i - 1], frames[i]) > 0.5]


async def test_live_parameter_changes_take_effect(tmp_path):
    """PATCH on the control port and a prompt typed on stdin both change the stream's pictures while it runs."""
    clip, out = tmp_path / "static.mp4", tmp_path / "out.mkv"
    write_clip(clip, 10, fps=25, static=True)
    args = ["-i", str(clip), "--loop", "-o", f"file:{out}", "--codec", "ffv1", "--prompt", "a city", "--stdin-prompts", "--status-interval", "0.5", "--width", "64", "--height", "64", "--control-port", "0"]
    with camera_process(*args) as run:
        run.wait_for_banner()
        async with aiohttp.ClientSession() as http:
            await _wait_for_outputs(http, run, 5)
            async with http.patch(f"{run.base_url}/api/sessions/{run.session_id}/params", json={"strength": 7}, headers=run.headers) as response:
                assert response.status == 400 and "strength" in (await response.json())["error"], "the server's own validation"
            async with http.patch(f"{run.base_url}/api/sessions/{run.session_id}/params", json={"prompt": "a zebra in the snow"}, headers=run.headers) as response:
                assert response.status == 200 and (await response.json())["params"]["prompt"][0][0] == "a zebra in the snow"
            await _wait_for_outputs(http, run, 10)
            run.type_line("an oil painting of a harbour")
            run.wait_for_line(r"^applied: \{\"prompt\": \"an oil painting of a harbour\"\}$", 30)  # JSON, as typed lines may be
            described = await _wait_for_outputs(http, run, 10)
            assert described["params"]["prompt"][0][0] == "an oil painting of a harbour"
            run.type_line('{"seed": "not a number"}')
            run.wait_for_line(r"^not applied: .*seed", 30)
        run.wait_for_line(r"^in [\d.]+ fps \| out [\d.]+ fps \| latency ", 30)  # the status line, plain lines into a pipe
        assert run.interrupt() == 0
        run.wait_for_line(r"^ended    stopped \(Ctrl\+C\)$", 10)
    frames, times = decode(out)
    assert times == sorted(times) and len(frames) >= 25
    changes = _changes(frames)
    assert len(changes) >= 2, f"two parameter changes should show in the output, saw changes at {changes}"
    assert _mean_diff(frames[0], frames[-1]) > 0.5


async def test_whep_output_and_delete_end_the_run():
    """``--output whep``: a WHEP client watches with the printed secret; DELETE on the API ends the run."""
    with camera_process("--model", "identity", "--input", "synthetic", "--fps", "15", "--output", "whep", *SMALL) as run:
        run.wait_for_banner()
        assert any(f"WHEP {run.base_url}/whep/{run.session_id}" in line for line in run.lines)
        viewer = await whep_view(run.base_url, run.session_id, secret=run.secret)
        try:
            frames = await viewer.wait_for_frames(5, timeout=60)
            assert frames[0].width == 64 and frames[0].height == 64
        finally:
            await viewer.close()
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{run.base_url}/api/sessions/{run.session_id}", headers=run.headers) as response:
                assert response.status == 200
        assert run.process.wait(60) == 0
        run.wait_for_line(r"^ended    ended through the API \(DELETE\)$", 10)


# ------------------------------------------------------------------ screen capture and the preview window (an X server)
@pytest.fixture()
def x_display() -> Iterator[str]:
    """A virtual X display (Xvfb, on a display number it picks itself) for screen capture and the window."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt install xvfb): no X display to capture or show a window on")
    process = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "320x240x24", "-nolisten", "tcp"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    number = process.stdout.readline().strip()  # written once the display accepts clients
    if not number.isdigit():
        process.kill()
        process.wait(10)
        pytest.skip("Xvfb did not start")
    try:
        yield f":{number}"
    finally:
        process.terminate()
        process.wait(10)


def test_screen_capture(cli, tmp_path, x_display):
    out = tmp_path / "out.mp4"
    code, stdout, err = cli("camera", "--model", "identity", "--input", f"screen:{x_display}", "--fps", "10", "--max-frames", "8", "--output", f"file:{out}", *SMALL)
    assert code == 0, err
    assert f"screen {x_display}, x11grab (" in stdout and "320x240" in stdout
    frames, _ = decode(out)
    assert frames and frames[0].shape == (64, 64, 3)


def test_preview_window(cli, monkeypatch, x_display):
    monkeypatch.setenv("DISPLAY", x_display)
    code, stdout, err = cli("camera", "--model", "identity", "--input", "synthetic:20", "--fps", "20", "--output", "window", *SMALL)
    assert code == 0, err
    shown = int(re.search(r"output   window \((\d+) frames shown\)", stdout).group(1))
    assert shown >= 1


def test_window_without_a_display_is_one_message(cli, monkeypatch, no_model_load):
    if sys.platform != "linux":
        pytest.skip("only Linux needs $DISPLAY for a window")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    code, _, err = cli("camera", "--input", "synthetic:3", "--output", "window", "--control-port", "0")
    assert code == 2 and "needs a display" in err and "Traceback" not in err


def test_help_needs_no_torch_and_lists_every_input_and_output():
    code = "import sys\nfrom streamgen.cli import main\ntry:\n    main(['camera', '--help'])\nexcept SystemExit:\n    pass\nprint('HEAVY', [m for m in ('torch', 'av', 'aiortc', 'numpy') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.stdout.rstrip().endswith("HEAVY []"), result.stdout + result.stderr
    for form in ("camera[:DEVICE]", "screen[:TARGET]", "synthetic[:FRAMES]", "virtualcam[:DEVICE]", "file:PATH", "--control-port", "--stdin-prompts"):
        assert form in result.stdout


# ------------------------------------------------------------------ the parts, one by one

@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("camera", InputSpec("camera")),
        ("camera:2", InputSpec("camera", "2")),
        ('camera:"FaceTime HD Camera"', InputSpec("camera", "FaceTime HD Camera")),
        ("screen", InputSpec("screen")),
        ("screen::1.0+10,20", InputSpec("screen", ":1.0+10,20")),
        ("rtsp://192.168.1.20:8554/cam", InputSpec("url", "rtsp://192.168.1.20:8554/cam")),
        ("https://example.org/live.m3u8", InputSpec("url", "https://example.org/live.m3u8")),
        ("synthetic", InputSpec("synthetic")),
        ("synthetic:40", InputSpec("synthetic", frames=40)),
        ("none", InputSpec("none")),
    ],
)
def test_input_forms(text, spec):
    assert parse_input(text) == spec


def test_input_files_and_folders(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    assert parse_input(str(clip)) == InputSpec("file", str(clip))
    with pytest.raises(InputError, match="is a folder"):
        parse_input(str(tmp_path))
    with pytest.raises(InputError, match="does not exist"):
        parse_input(str(tmp_path / "none.mp4"))


@pytest.mark.parametrize(
    ("system", "text", "expected"),
    [
        ("Linux", "camera", ("v4l2", "/dev/video0")),
        ("Linux", "camera:3", ("v4l2", "/dev/video3")),
        ("Linux", "camera:/dev/video7", ("v4l2", "/dev/video7")),
        ("Darwin", "camera", ("avfoundation", "0:none")),
        ("Darwin", 'camera:"FaceTime HD Camera"', ("avfoundation", "FaceTime HD Camera:none")),
        ("Windows", 'camera:"Integrated Camera"', ("dshow", "video=Integrated Camera")),
        ("Linux", "screen::1", ("x11grab", ":1")),
        ("Darwin", "screen", ("avfoundation", "Capture screen 0:none")),
        ("Darwin", "screen:1", ("avfoundation", "Capture screen 1:none")),
        ("Windows", "screen", ("gdigrab", "desktop")),
        ("Windows", "screen:title=Untitled - Notepad", ("gdigrab", "title=Untitled - Notepad")),
    ],
)
def test_devices_by_operating_system(system, text, expected):
    settings = CaptureSettings(fps=24, size=(1280, 720), options={"input_format": "mjpeg"})
    device = device_input(parse_input(text), settings, system)
    assert (device.format, device.target) == expected
    assert device.options["framerate"] == "24" and device.options["video_size"] == "1280x720" and device.options["input_format"] == "mjpeg"


def test_linux_cameras_are_named_from_sysfs_and_loopbacks_marked(tmp_path):
    dev, sysfs, virtual = tmp_path / "dev", tmp_path / "class", tmp_path / "devices" / "virtual" / "video4linux"
    for folder in (dev, sysfs, virtual):
        folder.mkdir(parents=True)
    for name in ("video10", "video2", "video0"):
        (dev / name).touch()
    (sysfs / "video0").mkdir()
    (sysfs / "video0" / "name").write_text("Integrated Camera: Integrated C\n")
    (virtual / "video10").mkdir()
    (virtual / "video10" / "name").write_text("streamgen\n")
    (sysfs / "video10").symlink_to(virtual / "video10")
    assert linux_cameras(dev, sysfs) == [
        f"{dev}/video0 (Integrated Camera: Integrated C)",
        f"{dev}/video2",
        f"{dev}/video10 (streamgen) [v4l2loopback: a virtual camera]",
    ]


def test_ffmpeg_device_lists_are_parsed():
    avfoundation = [
        "AVFoundation video devices:",
        "[0] FaceTime HD Camera",
        "[1] Capture screen 0",
        "AVFoundation audio devices:",
        "[0] MacBook Pro Microphone",
    ]
    assert parse_avfoundation_list(avfoundation) == ["0: FaceTime HD Camera", "1: Capture screen 0"]
    dshow = ['"Integrated Camera" (video)', '  Alternative name "@device_pnp_\\\\?\\usb#vid"', '"Microphone Array" (audio)', '"OBS Virtual Camera" (none)']
    assert parse_dshow_list(dshow) == ["Integrated Camera"]
    legacy = ["DirectShow video devices (some may be both video and audio devices)", ' "USB Camera"', '    Alternative name "@device_pnp_x"', "DirectShow audio devices", ' "Mic"']
    assert parse_dshow_list(legacy) == ["USB Camera"]


def test_status_line():
    stats = {"fps_in": 29.96, "fps_out": 14.5, "latency_ms_p50": 82.4, "latency_ms_p95": 140.0, "frames_in": 300, "frames_out": 150}
    line = format_status(stats, 152, {"file": 150, "virtualcam": 150})
    assert line == "in 30.0 fps | out 14.5 fps | latency 82 ms (p95 140) | dropped 152 | frames 300 in, 150 out | file 150, virtualcam 150"
    assert "latency -" in format_status({}, 0, {})


def test_console_rewrites_the_status_line_in_place_on_a_terminal():
    stream = io.StringIO()
    console = Console(stream, in_place=True)
    console.status("one")  # drawn, the cursor below it
    console.status("two")  # rewritten one line up, the cursor (and what is typed there) kept
    console.line_typed()  # Enter: the cursor is now two lines below
    console.message("applied: a fox")  # replaces the status and the typed line, status drawn again
    console.status("three")
    console.end()
    assert stream.getvalue() == (
        "one\n"
        "\x1b7\x1b[1A\r\x1b[Ktwo\x1b8"
        "\x1b[2A\r\x1b[Japplied: a fox\ntwo\n"
        "\x1b7\x1b[1A\r\x1b[Kthree\x1b8"
        "\r\x1b[K"
    )
    plain = io.StringIO()
    Console(plain, in_place=False).status("one")
    assert plain.getvalue() == "one\n"


def test_typed_lines():
    assert parse_typed_line("  an oil painting \n") == {"prompt": "an oil painting"}
    assert parse_typed_line('{"strength": 0.4, "seed": 3}') == {"strength": 0.4, "seed": 3}
    assert parse_typed_line("   \n") is None
    with pytest.raises(ConfigError, match="JSON object"):
        parse_typed_line("{not json")
    with pytest.raises(ConfigError, match="JSON object"):
        parse_typed_line("{[1]}")
    assert parse_typed_line("{}") == {}
    assert parse_typed_line("[1]") == {"prompt": "[1]"}, "only a line starting with { is JSON"


async def test_capture_track_hands_over_the_newest_frame_and_then_ends():
    track = CaptureTrack(asyncio.get_running_loop())
    frames = [VideoFrame(16, 16, "rgb24") for _ in range(3)]
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    threading.Thread(target=track.offer, args=(frames[0],)).start()
    assert await asyncio.wait_for(waiting, 10) is frames[0], "a recv() waiting is woken from another thread"
    track.offer(frames[1])
    track.offer(frames[2])
    track.end()
    assert await track.recv() is frames[2] and track.frames_replaced == 1, "the newer frame replaced the waiting one"
    assert track.last_frame is frames[2]
    with pytest.raises(MediaStreamError):
        await track.recv()
    track.offer(frames[0])
    assert track.frames_offered == 3, "nothing is taken after the end"


def test_a_missing_virtual_camera_and_a_missing_camera_are_told_together_setup_first():
    from types import SimpleNamespace

    from streamgen.commands.camera import open_input_after_outputs
    from streamgen.errors import ConfigError, InputError

    plan = SimpleNamespace(outputs=("virtualcam",), sink_settings=None, input="camera", capture=None)

    def no_virtualcam(outputs, settings):
        raise ConfigError("no virtual camera device: load v4l2loopback (sudo modprobe v4l2loopback)")

    def no_camera(spec, capture):
        raise InputError("no camera found at /dev/video0")

    with pytest.raises(ConfigError) as both:
        open_input_after_outputs(plan, no_virtualcam, no_camera)
    message = str(both.value)
    assert message.index("v4l2loopback") < message.index("no camera found")

    class Source:
        closed = False

        def close(self):
            Source.closed = True

    with pytest.raises(ConfigError, match="v4l2loopback"):
        open_input_after_outputs(plan, no_virtualcam, lambda spec, capture: Source())
    assert Source.closed  # the camera that did open is released
    with pytest.raises(InputError, match="no camera"):
        open_input_after_outputs(plan, lambda outputs, settings: None, no_camera)
