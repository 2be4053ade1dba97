"""``streamgen camera``: one live stream on this machine, no browser: a camera in, a virtual camera out.

    streamgen camera --model sd-turbo --input camera --output virtualcam --prompt "a watercolor portrait"
    streamgen camera --model tiny --input screen --output window --output whep
    streamgen camera --model tiny --input clip.mp4 --loop --output file:out.mp4 --prompt "an oil painting"
    streamgen camera --model tiny-video --input rtsp://192.168.1.20/stream --output virtualcam
    streamgen camera --model longlive-1.3b --mode txt2vid --input none --output virtualcam --prompt "a koi pond"

Inputs: camera[:DEVICE], screen[:TARGET], a video file (real time; --loop),
an RTSP/HTTP/... URL, synthetic[:FRAMES], or none (a video model's --mode
txt2vid generates the stream from the prompt, at --max-fps). Outputs (repeat --output for
several): virtualcam[:DEVICE] (OBS, Zoom and Meet pick it as a webcam;
needs streamgen[virtualcam]), file:PATH, window (a preview), whep (WHEP
viewers on the control port). docs/camera.md has the steps for each OS.

It is the server of ``streamgen serve`` (same pipeline, scheduler, thread
budget and parameter API) running one local session. Parameters change
while it runs through ``PATCH /api/sessions/{id}/params`` on
127.0.0.1:--control-port (the id and secret are printed at start), or by
typing a prompt and Enter (or a JSON object of parameters) when stdin is a
terminal. A file input without --loop ends the run when it ends; the output
file then holds every frame the stream produced. Bad options, a missing
virtual camera device (with the setup steps for this OS), a camera that
cannot be opened (with the cameras this machine has) and a control port in
use are reported in one message with exit status 2 before the model loads.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, StreamgenError
from .stream_options import add_param_options, add_stream_shape_options, collect_settings

if TYPE_CHECKING:  # PyAV and numpy stay unloaded until the command runs
    from ..outputs.spec import OutputSpec, SinkSettings
    from .camera_sources import CaptureSettings, InputSpec

DEFAULT_CONTROL_PORT = 8765
DEFAULT_FPS = 30.0
LOCAL_MAX_INPUT = 16384  # a local capture may be any size the server can scale: a 5K screen included
LOCAL_MIN_FPS = 0.01  # admission control never refuses the one local stream: a slow model runs slowly
LOCAL_IDLE_SECONDS = 60.0  # a source that sends nothing for this long has stalled: the run ends
STEP_GRACE_SECONDS = 2.0
QUIET_LOGGERS = ("aioice", "aiortc", "streamgen.server")  # per-candidate ICE chatter, session open/close lines


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "camera", help="one live stream on this machine: camera, screen, file or URL in; virtual camera, file, window or WHEP out",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", "-i", default="camera", metavar="SOURCE", help="camera[:DEVICE], screen[:TARGET], a video file, a URL (rtsp://, http://, ...), synthetic[:FRAMES] or none (a video model's --mode txt2vid generates from the prompt) (default camera)")
    io.add_argument("--output", "-o", action="append", required=True, metavar="SINK", help="virtualcam[:DEVICE], file:PATH, window or whep; repeat for several")
    io.add_argument("--loop", action="store_true", help="start a video file or synthetic:FRAMES clip again when it ends; open a URL again when its stream ends")
    io.add_argument("--fps", type=float, default=DEFAULT_FPS, help=f"frame rate asked of a camera or screen, and of synthetic input (default {DEFAULT_FPS:g})")
    io.add_argument("--capture-size", default=None, metavar="WxH", help="size asked of a camera or screen, or of synthetic input (default: the device's own)")
    io.add_argument("--capture-option", action="append", default=[], metavar="KEY=VALUE", help="an FFmpeg option for the input, e.g. input_format=mjpeg (repeatable)")
    io.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N input frames")
    io.add_argument("--codec", default="auto", help="encoder of file outputs: auto (H.264 when available, else mpeg4), h264, mpeg4 or any PyAV encoder")
    io.add_argument("--bitrate", type=int, default=None, metavar="KBPS", help="bitrate of file outputs in kbit/s (default: constant quality for H.264)")
    control = parser.add_argument_group("control")
    control.add_argument("--control-port", type=int, default=DEFAULT_CONTROL_PORT, metavar="PORT", help=f"port of the parameter API and WHEP (default {DEFAULT_CONTROL_PORT}; 0 picks a free one)")
    control.add_argument("--host", default="127.0.0.1", help="address of the control port (default 127.0.0.1; 0.0.0.0 lets WHEP viewers on other machines watch)")
    control.add_argument("--stdin-prompts", action=argparse.BooleanOptionalAction, default=None, help="read prompts typed on stdin (default: when stdin is a terminal)")
    control.add_argument("--status-interval", type=float, default=None, metavar="S", help="seconds between status updates (default 1 on a terminal, 10 otherwise; 0: none)")
    control.add_argument("--quiet", "-q", action="store_true", help="no status line")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="tiny", help="preset (tiny, sd-turbo, sdxl-turbo, tiny-video, ...), hub id or local path; identity returns the input (default tiny)")
    model.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default)")
    model.add_argument("--dtype", default="auto", help="float16, bfloat16, float32 or auto (default)")
    model.add_argument("--acceleration", default="none", choices=("auto", "none", "compile", "onnxruntime", "tensorrt"), help="how model components run (default none: torch eager)")
    model.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: $OMP_NUM_THREADS, else cores - 1)")
    model.add_argument("--max-fps", type=float, default=30.0, help="input frames per second fed to the model; faster input is dropped (default 30)")
    model.add_argument("--slo-ms", type=float, default=500.0, metavar="MS", help="per-frame latency deadline; later frames are dropped (default 500)")
    add_stream_shape_options(parser, video_modes=True)
    add_param_options(parser)
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class CameraPlan:
    """Everything checked before the model loads."""

    settings: dict[str, Any]
    input: InputSpec
    capture: CaptureSettings
    outputs: tuple[OutputSpec, ...]
    sink_settings: SinkSettings


def plan_camera(args: argparse.Namespace) -> CameraPlan:
    """Options, parameters, input and outputs checked without opening anything (ConfigError / InputError)."""
    from ..outputs.spec import SinkSettings, parse_outputs  # noqa: PLC0415
    from .camera_sources import CaptureSettings, parse_input  # noqa: PLC0415
    from .serve import size_flag  # noqa: PLC0415 - the one WxH flag parser
    from ..outputs.video_writer import pick_codec  # noqa: PLC0415

    settings = collect_settings(args)
    check_settings(args.model, settings)
    for flag, value, low in (("--fps", args.fps, 0.0), ("--max-fps", args.max_fps, 0.0), ("--slo-ms", args.slo_ms, 0.0)):
        if not value > low:
            raise ConfigError(f"{flag} must be positive, got {value:g}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames must be at least 1, got {args.max_frames}")
    if args.bitrate is not None and args.bitrate < 1:
        raise ConfigError(f"--bitrate must be at least 1 kbit/s, got {args.bitrate}")
    if args.status_interval is not None and args.status_interval < 0:
        raise ConfigError(f"--status-interval must be 0 or more seconds, got {args.status_interval:g}")
    outputs = parse_outputs(args.output)
    codec = pick_codec(args.codec) if any(spec.kind == "file" for spec in outputs) else args.codec
    source = parse_input(args.input)
    if source.kind == "file" and any(spec.kind == "file" and Path(spec.target).resolve() == Path(source.target).resolve() for spec in outputs):
        raise ConfigError(f"--output file:{source.target} is the input file; choose another name")
    generates = settings.get("mode") == "txt2vid"
    if generates and source.kind != "none":
        raise ConfigError(f"--mode txt2vid generates the stream from the prompt and reads no input: use --input none, not {args.input!r}")
    if source.kind == "none" and not generates:
        raise ConfigError("--input none reads nothing: only a video model's --mode txt2vid generates without input (e.g. --model tiny-video --mode txt2vid)")
    if args.loop and source.kind in ("camera", "screen", "none"):
        raise ConfigError(f"--loop repeats a video file, a URL or a synthetic clip; --input {args.input!r} is a device")
    size = size_flag("--capture-size", args.capture_size, "1280x720") if args.capture_size else None
    capture = CaptureSettings(fps=args.fps, size=size, options=parse_capture_options(args.capture_option))
    sink_settings = SinkSettings(fps=args.fps, codec=codec, bitrate_kbps=args.bitrate, title=f"streamgen camera: {args.model}")
    return CameraPlan(settings, source, capture, tuple(outputs), sink_settings)


def check_settings(model: str, settings: dict[str, Any]) -> None:
    """The model's name, then the stream's settings against its family's schema, as ``streamgen run`` checks them."""
    from .early_checks import check_model_name, is_video_preset  # noqa: PLC0415

    check_model_name(model)
    if is_video_preset(model):
        from ..pipeline.video_params import parse_video_settings  # noqa: PLC0415

        parse_video_settings(settings)
        return
    from ..params import parse_params, parse_stream_config, split_settings  # noqa: PLC0415

    config_values, live_values = split_settings(settings)
    parse_stream_config(config_values)
    parse_params(live_values)


def parse_capture_options(texts: list[str]) -> dict[str, str]:
    options = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--capture-option {text!r} must look like KEY=VALUE, e.g. input_format=mjpeg")
        options[key.strip()] = value
    return options


def build_config(args: argparse.Namespace, plan: CameraPlan, port: int):
    """The server of the run: one session (the local one), WHEP viewers only when ``whep`` is an output."""
    from ..server.config import ServerConfig  # noqa: PLC0415

    whep = any(spec.kind == "whep" for spec in plan.outputs)
    return ServerConfig(
        host=args.host,
        port=port,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        max_sessions=1,
        max_viewers_per_session=8 if whep else 0,
        max_fps=args.max_fps,
        idle_timeout=LOCAL_IDLE_SECONDS,
        max_input_width=LOCAL_MAX_INPUT,
        max_input_height=LOCAL_MAX_INPUT,
        token=secrets.token_urlsafe(24),  # nobody holds it: this server opens no session but its own
        default_params=dict(plan.settings),
        slo_ms=args.slo_ms,
        min_fps=LOCAL_MIN_FPS,
        min_slo_ms=min(30.0, args.slo_ms),
        max_slo_ms=max(5000.0, args.slo_ms),
        threads=args.threads,
        acceleration=args.acceleration,
        **steering_of(plan.settings),
    )


def steering_of(settings: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """The ControlNets and estimators the local session's own settings name: loaded at start (the user asked for them)."""
    from ..preprocessor_settings import default_preprocessor_settings  # noqa: PLC0415

    entries = settings.get("controlnets") or []
    entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    controlnets = tuple(dict.fromkeys(e["model"] for e in entries if isinstance(e.get("model"), str)))
    estimators = []
    for entry in entries:
        kind = entry.get("preprocessor")
        if kind not in ("depth", "pose"):
            continue
        given = entry.get("preprocessor_settings")
        model = given.get("model") if isinstance(given, dict) else None
        model = model if isinstance(model, str) else default_preprocessor_settings(kind).model
        estimators.append(f"{kind}={model}")
    return {"controlnets": controlnets, "preprocessor_models": tuple(dict.fromkeys(estimators))}


def run(args: argparse.Namespace) -> int:
    from .serve import open_listening_sockets  # noqa: PLC0415

    plan = plan_camera(args)
    sockets = open_listening_sockets(args.host, args.control_port, flag="--control-port")
    try:
        return _run_with(args, plan, sockets)
    finally:
        for sock in sockets:
            sock.close()


def _run_with(args: argparse.Namespace, plan: CameraPlan, sockets: list) -> int:
    from ..outputs.spec import check_outputs  # noqa: PLC0415
    from ..server.worker.pipelines import load_server_pipeline  # noqa: PLC0415
    from ..threads import apply_thread_budget  # noqa: PLC0415
    from .camera_sources import open_capture  # noqa: PLC0415

    source = open_input_after_outputs(plan, check_outputs, open_capture)
    try:
        config = build_config(args, plan, sockets[0].getsockname()[1])
        apply_thread_budget(args.threads)
        print(f"loading {args.model}...", flush=True)
        started = time.perf_counter()
        pipeline = load_server_pipeline(args.model, args.device, args.dtype, args.acceleration)
        load_seconds = time.perf_counter() - started
    except BaseException:
        source.close()
        raise
    with quieter_logs(() if args.verbose else QUIET_LOGGERS):
        result = _stream(args, plan, config, pipeline, sockets, source)
    print(format_summary(source.description, result, load_seconds))
    code = 2 if result.error is not None else 1 if result.model_failed else 0
    leave_when_steps_end(result.workers, code, str(result.error) if result.error is not None else None)
    if result.error is not None:
        raise result.error
    return code


def open_input_after_outputs(plan: CameraPlan, check_outputs: Any, open_capture: Any) -> Any:
    """Check the outputs, then open the input; when both fail, say both, the outputs' setup first.

    A virtual camera needs setting up once (a kernel module, an OBS
    plug-in); a missing camera is often only a wrong ``--input``. Told
    about the camera alone, a new user fixes it and only then learns the
    longer story, so both come at once, the setup first.
    """
    output_error: StreamgenError | None = None
    try:
        check_outputs(list(plan.outputs), plan.sink_settings)
    except StreamgenError as error:
        output_error = error
    try:
        source = open_capture(plan.input, plan.capture)
    except StreamgenError as error:
        if output_error is None:
            raise
        raise type(output_error)(f"{output_error}\nAlso, the input: {error}") from None
    if output_error is not None:
        source.close()
        raise output_error
    return source


def _stream(args: argparse.Namespace, plan: CameraPlan, config: Any, pipeline: Any, sockets: list, source: Any) -> Any:
    """Run the live session until it ends (the console decides how the status line is drawn)."""
    from .camera_console import Console  # noqa: PLC0415
    from .camera_live import LiveOptions, LiveResult, run_live  # noqa: PLC0415

    stdin_prompts = sys.stdin is not None and sys.stdin.isatty() if args.stdin_prompts is None else args.stdin_prompts
    console = Console(quiet=args.quiet)
    interval = args.status_interval if args.status_interval is not None else (1.0 if console.in_place else 10.0)
    options = LiveOptions(
        plan.outputs, plan.sink_settings, loop=args.loop, max_frames=args.max_frames, stdin_prompts=stdin_prompts,
        status_interval=0.0 if args.quiet else interval,
    )
    result = LiveResult()
    try:
        asyncio.run(run_live(config, pipeline, sockets, source, options, console, result))
    except KeyboardInterrupt:  # no signal handlers here (Windows): the run was cancelled, and has closed everything
        result.reason = result.reason or "stopped (Ctrl+C)"
    return result


@contextmanager
def quieter_logs(names: tuple[str, ...]) -> Iterator[None]:
    """Loggers ``names`` at WARNING while the block runs (their INFO lines would break the status line), then as they were."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def format_summary(input_description: str, result: Any, load_seconds: float) -> str:
    stats = result.stats
    lines = [f"input    {input_description}"]
    lines += [f"output   {line}" for line in result.sinks]
    drained = "" if result.drained is not False else " (the last frames did not come out of the model in time)"
    lines += [
        f"frames   {result.capture.frames_read} read, {stats.get('frames_out', 0)} out, {result.dropped} dropped{drained}",
        f"time     {result.seconds:.2f} s streaming, model load {load_seconds:.2f} s",
        f"ended    {result.reason}",
    ]
    return "\n".join(lines)


def leave_when_steps_end(workers: list, code: int, error: str | None = None, grace: float = STEP_GRACE_SECONDS) -> None:
    """Give a model step still running ``grace`` seconds, then exit without it (a daemon thread inside torch can abort teardown)."""
    if all(worker.join(grace / max(1, len(workers))) for worker in workers):
        return
    if error is not None:
        print(f"streamgen: error: {error}", file=sys.stderr)
    print("streamgen: a model step was still running at the end; exiting without waiting for it", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
