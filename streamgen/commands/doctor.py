"""``streamgen doctor``: what this machine offers streamgen, in one screen.

    streamgen doctor          # sections: Python, Platform, torch, CUDA devices, acceleration, media, libraries
    streamgen doctor --json   # the same facts as JSON

The acceleration section ends with the engine cache: its directory and the
engines in it (newest first), as ``streamgen build-engines`` left them.

Each optional package is probed on its own and a failure reads as "not
installed" or "import failed: ..." rather than a crash, so the command always
exits 0 and is the first thing to run (and paste into a bug report) when
something does not work.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

Section = tuple[str, list[tuple[str, str]]]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("doctor", help="show Python, torch, CUDA devices and the acceleration backends found", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sections = collect_report()
    if args.json:
        print(json.dumps({title: {key.strip(): value for key, value in rows} for title, rows in sections}, indent=2))
    else:
        print(format_report(sections))
    return 0


def collect_report() -> list[Section]:
    """Every section, each probed separately so one failure cannot hide the rest."""
    collectors: list[tuple[str, Callable[[], list[tuple[str, str]]]]] = [
        ("Python", python_rows),
        ("Platform", platform_rows),
        ("torch", torch_rows),
        ("CUDA devices", cuda_device_rows),
        ("Acceleration backends", acceleration_rows),
        ("Media and outputs", media_rows),
        ("Libraries", library_rows),
    ]
    sections = []
    for title, collect in collectors:
        try:
            rows = collect()
        except Exception as error:  # noqa: BLE001 - a report must survive any probe failing
            rows = [("error", f"{type(error).__name__}: {error}")]
        sections.append((title, rows))
    return sections


def format_report(sections: list[Section]) -> str:
    lines = []
    for title, rows in sections:
        lines.append(title)
        width = max((len(key) for key, _ in rows), default=0)
        lines.extend(f"  {key.ljust(width)}  {value}" for key, value in rows)
        lines.append("")
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------- probes
def package_version(name: str) -> str | None:
    """The installed version of a distribution, without importing it."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def probe_import(module: str) -> tuple[Any | None, str]:
    """(module, "") when it imports; (None, why not) otherwise."""
    if importlib.util.find_spec(module) is None:
        return None, "not installed"
    try:
        return importlib.import_module(module), ""
    except Exception as error:  # noqa: BLE001 - broken installs raise anything (OSError, RuntimeError, ...)
        return None, f"import failed: {type(error).__name__}: {error}"


def python_rows() -> list[tuple[str, str]]:
    return [
        ("version", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("executable", sys.executable),
    ]


def platform_rows() -> list[tuple[str, str]]:
    return [
        ("system", platform.platform()),
        ("machine", platform.machine()),
        ("cpu cores", str(os.cpu_count() or "unknown")),
    ]


def torch_rows() -> list[tuple[str, str]]:
    torch, why = probe_import("torch")
    if torch is None:
        return [("torch", why)]
    cuda_build = torch.version.cuda
    rows = [
        ("version", torch.__version__),
        ("CUDA build", cuda_build or "none (CPU-only build; see the README's GPU install)"),
    ]
    if getattr(torch.version, "hip", None):
        rows.append(("ROCm build", torch.version.hip))
    if cuda_build:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        rows.append(("cuDNN", str(cudnn) if cudnn else "not available"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        rows.append(("Apple MPS", "available"))
    rows.append(("CPU threads", str(torch.get_num_threads())))
    return rows


def cuda_device_rows() -> list[tuple[str, str]]:
    torch, why = probe_import("torch")
    if torch is None:
        return [("devices", f"unknown (torch {why})")]
    if not torch.version.cuda and not getattr(torch.version, "hip", None):
        return [("devices", "none: this torch has no CUDA support")]
    if not torch.cuda.is_available():
        return [("devices", "none found (no GPU, or the driver is missing or too old for this torch build)")]
    rows = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        text = f"{props.name}, {props.total_memory / 2**30:.1f} GiB, capability {props.major}.{props.minor}"
        try:
            free, _ = torch.cuda.mem_get_info(index)
            text += f", {free / 2**30:.1f} GiB free"
        except RuntimeError:
            pass
        rows.append((f"cuda:{index}", text))
    return rows


def acceleration_rows() -> list[tuple[str, str]]:
    return [
        ("torch.compile", torch_compile_status()),
        ("triton", _version_or_absent("triton")),
        ("onnxruntime", onnxruntime_status()),
        ("tensorrt", tensorrt_status()),
        *engine_cache_rows(),
    ]


MAX_ENGINE_ROWS = 20


def engine_cache_rows() -> list[tuple[str, str]]:
    """The engine cache directory, then one row per engine (file name → what it is), newest first."""
    try:
        from ..runtime.engine_cache import EngineCache, default_cache_dir  # noqa: PLC0415

        root = default_cache_dir()
        entries = EngineCache(root).entries()
    except Exception as error:  # noqa: BLE001 - a report must survive an unreadable cache
        return [("engine cache", f"unreadable: {type(error).__name__}: {error}")]
    total = sum(e.size for e in entries)
    rows = [("engine cache", f"{root} ({len(entries)} engine{'s' if len(entries) != 1 else ''}, {total / 1e6:.1f} MB)")]
    for entry in entries[:MAX_ENGINE_ROWS]:
        rows.append((f"  {entry.path.name}", describe_engine(entry)))
    if len(entries) > MAX_ENGINE_ROWS:
        rows.append(("  ...", f"{len(entries) - MAX_ENGINE_ROWS} older engines not shown"))
    return rows


def describe_engine(entry: Any) -> str:
    key = entry.key
    ranges = "any shape" if key.batch_range == (0, 0) else f"rows {key.batch_range[0]}-{key.batch_range[1]}, {key.resolution_range[0]}-{key.resolution_range[1]} px"
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.created))
    text = f"{key.model_id} {key.component}, {key.backend} {key.backend_version}, {key.dtype}, {ranges}, {key.gpu_arch}, {entry.size / 1e6:.1f} MB, built {built} in {entry.build_seconds:.1f} s"
    return text if entry.complete else text + " (INCOMPLETE: will be rebuilt)"


def torch_compile_status() -> str:
    torch, why = probe_import("torch")
    if torch is None:
        return f"unavailable (torch {why})"
    if not hasattr(torch, "compile"):
        return "unavailable (torch too old)"
    try:
        import torch._dynamo  # noqa: PLC0415

        if not torch._dynamo.is_dynamo_supported():
            return f"unavailable on Python {platform.python_version()}"
    except Exception as error:  # noqa: BLE001
        return f"unavailable ({type(error).__name__}: {error})"
    compiler = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    notes = ["CPU inductor: " + (f"C compiler {compiler}" if compiler else "no C compiler found")]
    if torch.cuda.is_available():
        notes.append("GPU inductor: " + ("triton found" if importlib.util.find_spec("triton") else "needs triton"))
    return "available (" + "; ".join(notes) + ")"


def onnxruntime_status() -> str:
    module, why = probe_import("onnxruntime")
    if module is None:
        return f"{why} (pip install 'streamgen[onnx]')" if why == "not installed" else why
    providers = ", ".join(module.get_available_providers())
    return f"{module.__version__}, providers: {providers}"


def tensorrt_status() -> str:
    module, why = probe_import("tensorrt")
    if module is None:
        return why
    return str(getattr(module, "__version__", package_version("tensorrt") or "installed"))


def media_rows() -> list[tuple[str, str]]:
    return [
        ("av (PyAV)", av_status()),
        ("aiortc", _version_or_absent("aiortc")),
        ("aiohttp", _version_or_absent("aiohttp")),
        ("pyvirtualcam", pyvirtualcam_status()),
    ]


def av_status() -> str:
    av, why = probe_import("av")
    if av is None:
        return why
    libavcodec = av.library_versions.get("libavcodec")
    text = f"{av.__version__}"
    if libavcodec:
        text += f" (libavcodec {'.'.join(map(str, libavcodec))})"
    encoders = [name for name in ("libx264", "mpeg4", "libvpx") if _has_encoder(av, name)]
    return text + f"; encoders: {', '.join(encoders) or 'none of libx264, mpeg4, libvpx'}"


def _has_encoder(av: Any, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001 - PyAV raises different errors across versions
        return False
    return True


def pyvirtualcam_status() -> str:
    version = package_version("pyvirtualcam")
    if version is None:
        return "not installed (pip install 'streamgen[virtualcam]')"
    return f"{version} (a virtual-camera driver is also needed: v4l2loopback on Linux, OBS on Windows/macOS)"


def library_rows() -> list[tuple[str, str]]:
    return [(name, _version_or_absent(name)) for name in ("streamgen", "diffusers", "transformers", "huggingface_hub", "numpy")] + [
        ("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "unset")),
    ]


def _version_or_absent(name: str) -> str:
    return package_version(name) or "not installed"
