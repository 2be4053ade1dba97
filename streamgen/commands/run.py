"""``streamgen run``: restyle a video file, a folder of images or a synthetic clip into a video file.

    streamgen run --model tiny --input synthetic:120 --output out.mp4 --prompt "a watercolor city"
    streamgen run --model sd-turbo --input in.mp4 --output out.mp4 --prompt "oil painting" --strength 0.5
    streamgen run --input frames/ --fps 24 --output out.mkv --params '{"prompt": [["a", 0.7], ["b", 0.3]]}'
    streamgen run --model tiny-video --mode txt2vid --frames 48 --output out.mp4 --prompt "a paper boat at sea"

With a video model, ``--mode txt2vid`` takes no input: it generates
``--frames`` frames from the prompt, as fast as the model goes, at ``--fps``.

The stream runs exactly as a live one does (same pipeline, same parameter
schema, same buffers), frame after frame; the output keeps each input
frame's timestamp. Bad options, paths and parameters are reported in one
line with exit status 2 before any model is loaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import StreamConfig
from ..errors import ConfigError, InputError
from ..params import parse_params, parse_stream_config, split_settings
from .early_checks import check_model_name, check_writable_file, is_video_preset
from .stream_options import VIDEO_MODES, add_param_options, add_stream_shape_options, collect_settings

DEFAULT_FPS = 30.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="restyle a video file, image folder or synthetic clip into a video file", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", "-i", default=None, metavar="PATH", help="video file, folder of images, or synthetic[:FRAMES] (a generated moving clip, default 90 frames); required except with --mode txt2vid")
    io.add_argument("--output", "-o", required=True, metavar="FILE", help="output video file (.mp4, .mkv, .mov, ...)")
    io.add_argument("--fps", type=float, default=DEFAULT_FPS, help=f"frame rate of image-folder and synthetic input and of a txt2vid video (default {DEFAULT_FPS:g}); video files keep their own timing")
    io.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N input frames")
    io.add_argument("--frames", type=int, default=None, metavar="N", help="--mode txt2vid (video models): generate a video of N frames, no input")
    io.add_argument("--codec", default="auto", help="video encoder: auto (H.264 via libx264 when available, else mpeg4), h264, mpeg4 or any PyAV encoder name")
    io.add_argument("--bitrate", type=int, default=None, metavar="KBPS", help="encoder bitrate in kbit/s (default: constant quality for H.264, 4000 otherwise)")
    io.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="tiny", help="preset (tiny, sd-turbo, sd15-lcm, sdxl-turbo, tiny-video, ...), hub id or local path (default tiny)")
    model.add_argument("--weights", choices=("pretrained", "dummy"), default="pretrained", help="dummy: the real architecture with random weights, no download (for benchmarks)")
    model.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default)")
    model.add_argument("--devices", default=None, metavar="LIST", help="a video model's DiT blocks as pipeline stages over several devices, e.g. cuda:0,cuda:1 (or cpu,cpu)")
    model.add_argument("--dtype", default="auto", help="float16, bfloat16, float32 or auto (default)")
    model.add_argument("--acceleration", default="none", choices=("auto", "none", "compile", "onnxruntime", "tensorrt"), help="how model components run: none (torch eager, default), compile, onnxruntime, tensorrt, or auto (the fastest available here)")
    model.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: $OMP_NUM_THREADS, else cores - 1, leaving a core for decoding and encoding)")
    add_stream_shape_options(parser, video_modes=True)
    add_param_options(parser)
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class RunPlan:
    """Everything ``run`` checked before loading a model."""

    config: Any  # StreamConfig (image models) or VideoConfig (video models)
    user_params: dict[str, Any]
    input_spec: str | None  # None: nothing to read (txt2vid)
    output: Path
    codec: str
    frames: int | None = None  # txt2vid: how many frames to generate


def plan_run(args: argparse.Namespace) -> RunPlan:
    """Validate options, parameters and paths up front (ConfigError / InputError on a mistake)."""
    from ..outputs.video_writer import check_output_path, pick_codec  # noqa: PLC0415

    check_model_name(args.model, allow_identity=False)
    settings = collect_settings(args)
    generate = None
    if is_video_preset(args.model):
        from ..pipeline.video_params import parse_video_settings, split_video_settings  # noqa: PLC0415

        config, _ = parse_video_settings(settings)  # the video schema: fail now, not after loading the model
        live_values = split_video_settings(settings)[1]
        if config.mode == "txt2vid":
            generate = _frames_to_generate(args)
    else:
        if settings.get("mode") in VIDEO_MODES:
            raise ConfigError(f"mode {settings['mode']} is for video models (such as tiny-video); {args.model!r} is an image model: mode img2img or txt2img")
        config_values, live_values = split_settings(settings)
        config = parse_stream_config(config_values)
        parse_params(live_values)  # fail now, not after loading the model; re-parsed on the model's defaults later
    if generate is None:
        _check_input_options(args)
    if args.fps <= 0:
        raise ConfigError(f"--fps must be positive, got {args.fps:g}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames must be at least 1, got {args.max_frames}")
    if args.bitrate is not None and args.bitrate < 1:
        raise ConfigError(f"--bitrate must be at least 1 kbit/s, got {args.bitrate}")
    output = Path(args.output)
    codec = pick_codec(args.codec)
    check_output_path(output, codec)
    if args.input is not None:
        _check_input_is_not_output(args.input, output)
    check_writable_file(output)
    return RunPlan(config, live_values, args.input, output, codec, generate)


def _frames_to_generate(args: argparse.Namespace) -> int:
    """``--frames`` of a txt2vid run, which reads no input."""
    if args.input is not None:
        raise ConfigError(f"--input does not apply to --mode txt2vid, which generates the video from the prompt; drop --input (or use --mode vid2vid to restyle {args.input!r})")
    if args.max_frames is not None:
        raise ConfigError("--max-frames cuts an input; --mode txt2vid takes the video's length as --frames N")
    if args.frames is None:
        raise ConfigError("--mode txt2vid needs --frames N: how many frames to generate")
    if args.frames < 1:
        raise ConfigError(f"--frames must be at least 1, got {args.frames}")
    return args.frames


def _check_input_options(args: argparse.Namespace) -> None:
    """A run that restyles an input: it needs one, and --frames is not its option."""
    if args.frames is not None:
        raise ConfigError("--frames is the length of a generated video (--mode txt2vid, video models); to cut an input use --max-frames")
    if args.input is None:
        raise ConfigError("--input is required: a video file, a folder of images or synthetic[:FRAMES] (only a video model's --mode txt2vid runs without input)")


def stream_params_for(pipeline: Any, config: Any, user_params: dict[str, Any]) -> Any:
    """The user's parameters on top of the model's own defaults (txt2img runs without CFG by default).

    Video pipelines validate their own schema (on their defaults) in ``create_state``.
    """
    if not isinstance(config, StreamConfig):
        return dict(user_params)
    model = getattr(pipeline, "model", None)
    defaults = dict(getattr(pipeline, "default_params", None) or getattr(model, "default_params", None) or {})
    if config.mode == "txt2img":
        defaults["cfg_type"] = "none"
    return parse_params(user_params, parse_params(defaults))


def run(args: argparse.Namespace) -> int:
    plan = plan_run(args)
    from tqdm import tqdm  # noqa: PLC0415

    from ..stream import load_stream_pipeline  # noqa: PLC0415
    from .frame_sources import open_source  # noqa: PLC0415
    from .stream_runner import StreamRunner  # noqa: PLC0415
    from ..outputs.video_writer import VideoWriter  # noqa: PLC0415

    from ..threads import apply_thread_budget  # noqa: PLC0415

    apply_thread_budget(args.threads)
    if plan.frames is not None:
        return _generate(args, plan)
    size = (plan.config.width, plan.config.height) if plan.config.width and plan.config.height else None
    source = open_source(plan.input_spec, fps=args.fps, size=size)
    try:
        started = time.perf_counter()
        placement = {"devices": args.devices} if args.devices else {"device": args.device}
        pipeline = load_stream_pipeline(args.model, weights=args.weights, dtype=args.dtype, acceleration=args.acceleration, **placement)
        state = pipeline.create_state(plan.config, stream_params_for(pipeline, plan.config, plan.user_params))
        load_seconds = time.perf_counter() - started
        config = getattr(state, "config", plan.config)
        writer = VideoWriter(plan.output, plan.codec, rate=source.rate, time_base=source.time_base, bitrate_kbps=args.bitrate)
        runner = StreamRunner(pipeline, state, writer.write, frames_per_call=getattr(config, "frame_buffer_size", 1), txt2img=getattr(config, "mode", None) == "txt2img")
        total = min(filter(None, (source.count, args.max_frames)), default=None)
        started = time.perf_counter()
        interrupted = False
        try:
            with tqdm(total=total, unit="frame", desc="streamgen run", disable=args.quiet, file=sys.stderr, dynamic_ncols=True) as progress:
                try:
                    for index, frame in enumerate(source):
                        if args.max_frames is not None and index >= args.max_frames:
                            break
                        runner.feed(frame)
                        progress.update(1)
                        progress.set_postfix(out=writer.frames_written, refresh=False)
                    runner.finish()  # the frames still inside the pipeline come out here
                except KeyboardInterrupt:  # Ctrl+C: the file written so far is valid; say what it holds
                    interrupted = True
                progress.set_postfix(out=writer.frames_written, refresh=False)  # drawn as the bar closes
        finally:
            writer.close()
        run_seconds = time.perf_counter() - started
    finally:
        source.close()
    if runner.counts.frames_in == 0 and not interrupted:
        raise InputError(f"input {plan.input_spec!r} has no frames")
    print(format_summary(source.description, writer, runner.counts, load_seconds, run_seconds, interrupted=interrupted))
    return 130 if interrupted else 0


def _generate(args: argparse.Namespace, plan: RunPlan) -> int:
    """``--mode txt2vid``: ``plan.frames`` frames from the prompt, flat out, into the output file at ``--fps``."""
    from tqdm import tqdm  # noqa: PLC0415

    from ..outputs.video_writer import VideoWriter  # noqa: PLC0415
    from ..stream import load_stream_pipeline  # noqa: PLC0415
    from .frame_sources import fraction_of  # noqa: PLC0415
    from .stream_runner import StreamRunner  # noqa: PLC0415

    started = time.perf_counter()
    placement = {"devices": args.devices} if args.devices else {"device": args.device}
    pipeline = load_stream_pipeline(args.model, weights=args.weights, dtype=args.dtype, acceleration=args.acceleration, **placement)
    state = pipeline.create_state(plan.config, stream_params_for(pipeline, plan.config, plan.user_params))
    load_seconds = time.perf_counter() - started
    rate = fraction_of(args.fps)
    writer = VideoWriter(plan.output, plan.codec, rate=rate, time_base=1 / rate, bitrate_kbps=args.bitrate)
    runner = StreamRunner(pipeline, state, writer.write)
    started = time.perf_counter()
    interrupted = False
    try:
        with tqdm(total=plan.frames, unit="frame", desc="streamgen run", disable=args.quiet, file=sys.stderr, dynamic_ncols=True) as progress:
            try:
                runner.generate(plan.frames, progress.update)
            except KeyboardInterrupt:  # Ctrl+C: the file written so far is valid; say what it holds
                interrupted = True
    finally:
        writer.close()
    run_seconds = time.perf_counter() - started
    print(format_generation_summary(writer, runner.counts, args.fps, load_seconds, run_seconds, interrupted=interrupted))
    return 130 if interrupted else 0


def format_generation_summary(writer: Any, counts: Any, fps: float, load_seconds: float, run_seconds: float, *, interrupted: bool = False) -> str:
    """The lines printed when a txt2vid run ends."""
    width, height = writer.size or (0, 0)
    speed = writer.frames_written / run_seconds if run_seconds > 0 else 0.0
    cut = f" ({counts.frames_cut} more of the last chunk left out)" if counts.frames_cut else ""
    lines = [
        f"input    none: txt2vid, frames generated from the prompt at {fps:g} fps",
        f"output   {writer.path} ({writer.codec}, {width}x{height}, {writer.frames_written} frames)",
        f"frames   {counts.frames_emitted} generated in {counts.calls} model steps{cut}, {writer.frames_written} out",
        f"time     {run_seconds:.2f} s for {writer.frames_written} frames ({speed:.2f} fps), model load {load_seconds:.2f} s",
    ]
    if interrupted:
        lines.append(f"ended    stopped (Ctrl+C); {writer.path} holds the {writer.frames_written} frames written until then")
    return "\n".join(lines)


def format_summary(input_description: str, writer: Any, counts: Any, load_seconds: float, run_seconds: float, *, interrupted: bool = False) -> str:
    """The lines printed when a run ends (also after Ctrl+C: the output file is valid up to there)."""
    width, height = writer.size or (0, 0)
    fps = writer.frames_written / run_seconds if run_seconds > 0 else 0.0
    lines = [
        f"input    {input_description}",
        f"output   {writer.path} ({writer.codec}, {width}x{height}, {writer.frames_written} frames)",
        f"frames   {counts.frames_in} in, {writer.frames_written} out, {counts.frames_skipped} skipped by the similarity filter"
        + (f", {counts.frames_lost} lost" if counts.frames_lost else ""),
        f"time     {run_seconds:.2f} s for {counts.frames_in} frames ({fps:.2f} fps), model load {load_seconds:.2f} s",
    ]
    if interrupted:
        lines.append(f"ended    stopped (Ctrl+C); {writer.path} holds the {writer.frames_written} frames written until then")
    return "\n".join(lines)


def _check_input_is_not_output(input_spec: str, output: Path) -> None:
    path = Path(input_spec)
    if path.exists() and output.exists() and path.resolve() == output.resolve():
        raise ConfigError(f"--output {str(output)!r} is the input file; choose another name")
