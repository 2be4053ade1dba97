"""``streamgen build-engines``: export / build a model's engines into the engine cache ahead of time.

    streamgen build-engines --model sd-turbo --acceleration tensorrt --resolution 256-768 --batch 1-4
    streamgen build-engines --model tiny --acceleration onnxruntime --engine-dir /srv/engines
    streamgen build-engines --model sd-turbo --acceleration tensorrt --controlnet canny-sd21 --ip-adapter FILE

It loads the model, applies the acceleration exactly as ``serve`` and ``run``
do and reports every engine it built or found already built (a second run
builds nothing). Serving reuses them when it runs with the same model,
weights, dtype, device and ranges: ``--batch`` and ``--resolution`` default
to the ranges ``serve`` uses (rows 1-8; half the model's native size up to twice
it). ONNX exports have dynamic shapes and serve every range; TensorRT
engines are built for the ranges given. ``--controlnet`` and ``--ip-adapter`` (as ``serve`` takes
them) attach those after accelerating, as ``serve`` does, which builds their
engines too: each ControlNet's, the UNet's with ControlNet residual inputs
and the UNet's with IP-Adapter inputs. Bad options or a backend that cannot
run here are reported in one line (exit status 2) before any weights load.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

RANGE_PATTERN = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("build-engines", help="export/build a model's compiled engines into the engine cache", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="preset, hub id or local path (default tiny)")
    parser.add_argument("--acceleration", default=None, metavar="BACKEND", help="onnxruntime, tensorrt, compile or auto (required)")
    parser.add_argument("--resolution", default=None, metavar="MIN-MAX", help="pixels per side the engines serve, e.g. 256-768 or 512 (default: half the model's native size up to twice it)")
    parser.add_argument("--batch", default=None, metavar="MIN-MAX", help="UNet rows per call, e.g. 1-4 (default 1-8)")
    parser.add_argument("--engine-dir", default=None, metavar="DIR", help="engine cache directory (default $STREAMGEN_ENGINE_DIR, else engines/ in a checkout, else ~/.cache/streamgen/engines)")
    parser.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default)")
    parser.add_argument("--dtype", default="auto", help="float16, bfloat16, float32 or auto (default)")
    parser.add_argument("--weights", choices=("pretrained", "dummy"), default="pretrained", help="dummy: the real architecture with random weights, no download")
    parser.add_argument("--controlnet", action="append", default=[], metavar="NAME", help="also build the engines of this ControlNet, as serve --controlnet loads it (repeatable)")
    parser.add_argument("--ip-adapter", default=None, metavar="SOURCE", help="also build the UNet engine with this IP-Adapter's inputs, as serve --ip-adapter loads it")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def parse_range(text: str | None, flag: str, *, minimum: int, multiple: int = 1) -> tuple[int, int] | None:
    """``"256-768"`` → (256, 768); ``"512"`` → (512, 512); None stays None. ConfigError on anything else."""
    if text is None:
        return None
    match = RANGE_PATTERN.match(text)
    if match is None:
        raise ConfigError(f"{flag} takes MIN-MAX or one number (e.g. {flag} {minimum}-{4 * max(minimum, multiple)}); got {text!r}")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if low < minimum or high < low:
        raise ConfigError(f"{flag} must satisfy {minimum} <= MIN <= MAX; got {text!r}")
    if low % multiple or high % multiple:
        raise ConfigError(f"{flag} values must be multiples of {multiple}; got {text!r}")
    return low, high


def run(args: argparse.Namespace) -> int:
    from ..runtime.backend import check_acceleration  # noqa: PLC0415

    from .early_checks import check_model_name  # noqa: PLC0415

    check_model_name(args.model, allow_identity=False)
    if args.acceleration is None:
        raise ConfigError("choose what to build with --acceleration (onnxruntime, tensorrt, compile or auto)")
    acceleration = check_acceleration(args.acceleration)
    batch_range = parse_range(args.batch, "--batch", minimum=1)
    resolution_range = parse_range(args.resolution, "--resolution", minimum=64, multiple=8)
    if acceleration == "none":
        print("acceleration 'none' runs torch eager: there is nothing to build")
        return 0
    engine_dir = _engine_dir(args.engine_dir)
    _preflight(acceleration, args.device)

    from ..runtime import accelerate  # noqa: PLC0415
    from ..runtime.accelerate import DEFAULT_BATCH_RANGE  # noqa: PLC0415
    from ..stream import load_stream_pipeline  # noqa: PLC0415

    started = time.perf_counter()
    pipeline = load_stream_pipeline(args.model, weights=args.weights, device=args.device, dtype=args.dtype)
    load_seconds = time.perf_counter() - started
    ranges = {"batch_range": batch_range or DEFAULT_BATCH_RANGE, "resolution_range": resolution_range}
    chosen, events, seconds = _observed(lambda: accelerate(pipeline.model, acceleration, cache_dir=engine_dir, **ranges), quiet=args.quiet)
    if args.controlnet or args.ip_adapter:
        _, more, steer_seconds = _observed(lambda: _attach_steering(pipeline, args.controlnet, args.ip_adapter), quiet=args.quiet)
        events += more
        seconds += steer_seconds
    if chosen == "compile":  # torch.compile compiles on first use: warm up now and keep its artefacts for serve
        warmed, more, warm_seconds = _observed(lambda: _warm_up_compiled(pipeline), quiet=args.quiet)
        events += more
        seconds += warm_seconds
    print(format_report(args.model, chosen, engine_dir, events, load_seconds, seconds))
    return 0


def _attach_steering(pipeline: Any, controlnets: list[str], ip_adapter: str | None) -> str:
    """Attach what ``serve --controlnet/--ip-adapter`` would: under an engine backend that builds their engines."""
    from ..server.worker.pipelines import attach_server_controls  # noqa: PLC0415

    attach_server_controls(pipeline, tuple(controlnets), ip_adapter, ())
    return "steering"


def _warm_up_compiled(pipeline: Any) -> str:
    """Run the steps a server runs while warming up (one stream, then two batched), then save torch.compile's artefacts."""
    from ..runtime.compile_artifacts import save_all_compile_artifacts  # noqa: PLC0415
    from ..server.app import warm_up_pipeline  # noqa: PLC0415

    for streams in (1, 2):
        warm_up_pipeline(pipeline, {}, streams)
    save_all_compile_artifacts()
    return "compile"


def _engine_dir(flag: str | None) -> Path:
    from ..runtime.engine_cache import default_cache_dir  # noqa: PLC0415

    path = Path(flag).expanduser() if flag else default_cache_dir()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--engine-dir {path} exists and is not a directory")
    return path


def _preflight(acceleration: str, device: str) -> None:
    """Refuse a backend that cannot run here before loading any weights (EngineError names the reason)."""
    from ..errors import EngineError  # noqa: PLC0415
    from ..models.loading.device import resolve_device  # noqa: PLC0415
    from ..runtime.backend import backend_named  # noqa: PLC0415

    if acceleration == "auto":
        return
    resolved = resolve_device(device)
    reason = backend_named(acceleration).unavailable_reason(resolved)
    if reason is not None:
        raise EngineError(f"acceleration {acceleration!r} cannot run here: {reason}")


def _observed(apply: Any, *, quiet: bool) -> tuple[str, list[Any], float]:
    """Run ``apply`` while showing one progress tick per engine; returns (backend chosen, finished cache events, seconds)."""
    from tqdm import tqdm  # noqa: PLC0415

    from ..runtime.engine_cache import observe  # noqa: PLC0415

    finished: list[Any] = []

    with tqdm(unit="engine", desc="build-engines", disable=quiet, file=sys.stderr, dynamic_ncols=True) as progress:

        def on_event(event: Any) -> None:
            if event.stage == "start":
                progress.set_postfix_str(f"{event.key.component} ({event.key.backend})")
            else:
                finished.append(event)
                progress.update(1)

        started = time.perf_counter()
        with observe(on_event):
            chosen = apply()
        seconds = time.perf_counter() - started
    return chosen, finished, seconds


def format_report(model: str, chosen: str, engine_dir: Path, events: list[Any], load_seconds: float, seconds: float) -> str:
    built = sum(1 for e in events if e.stage == "built")
    lines = [f"{model}: acceleration {chosen}, engine cache {engine_dir}"]
    if not events:
        lines.append(f"  {chosen} keeps no engines in the cache; nothing to build")
    for event in events:
        entry = event.entry
        what = f"{event.key.component} ({event.key.backend})"
        build = f"built in {entry.build_seconds:.1f} s" if event.stage == "built" else f"reused (built in {entry.build_seconds:.1f} s)"
        lines.append(f"  {event.stage:<6}  {what:<28}  {_megabytes(entry.size):>9}  {build}  {entry.path.name}")
    lines.append(f"built {built}, reused {len(events) - built} (model loaded in {load_seconds:.1f} s, engines ready in {seconds:.1f} s)")
    return "\n".join(lines)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
