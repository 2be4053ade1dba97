"""``python -m bench.engines``: every acceleration backend against torch eager, in the same run.

For the image model (``tiny`` by default, or ``--dummy MODEL`` for a real
architecture with random weights) at each ``--sizes`` resolution, and for
``tiny-video``, each backend available here is applied to a freshly loaded
model and timed:

- per component: UNet (``--rows`` rows), VAE encoder, VAE decoder (one frame);
  for video the DiT chunk forward (``VideoModel.timing_probe``);
- end to end: frames per second of a one-session img2img stream (stream
  batch, ``--steps`` steps) through the real pipeline;
- steering (``--no-steering`` leaves it out): a ControlNet and an IP-Adapter
  (the ``tiny`` ones, shaped by the model's UNet) are attached after the
  backend is installed, as a server does, and timed per call: the
  ControlNet, the UNet with residual inputs, the UNet with reference inputs
  (engines or graphs of their own under each backend);

and printed as milliseconds and as a ratio to eager measured in the same
run (>1: faster than eager). Backends that cannot run here are listed with
the reason. Build time (export/compile, first call) is reported separately:
it is paid once, then the engine cache serves restarts.

Time to first frame (``--ttff``, on by default): for each backend, two new
processes over one empty engine cache (:mod:`bench.first_frame`): cold (the
first, which builds or compiles everything) and warm (the second, which
finds the first one's engines, exports or torch.compile artefacts).

Prints a table and writes ``bench/out/engines.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .common import OUT_DIR, machine, measure, median, ms, table, write_json

BACKENDS = ("none", "compile", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class EngineBenchSettings:
    model: str = "tiny"
    dummy: bool = False
    sizes: tuple[int, ...] = (256, 512)
    rows: int = 4
    steps: int = 2
    frames: int = 20
    video: bool = True
    backends: tuple[str, ...] = BACKENDS
    device: str = "auto"
    engine_dir: Path = OUT_DIR / "engines-cache"
    out: Path = OUT_DIR / "engines.json"
    ttff: bool = True
    ttff_only: bool = False
    steering: bool = True


def image_rows(settings: EngineBenchSettings, size: int) -> list[dict[str, Any]]:
    from streamgen import load_pipeline  # noqa: PLC0415
    from streamgen.config import StreamConfig  # noqa: PLC0415
    from streamgen.runtime import accelerate, unavailable_reason  # noqa: PLC0415

    rows, eager = [], None
    for backend in settings.backends:
        weights = "dummy" if settings.dummy else "pretrained"
        pipeline = load_pipeline(settings.model, weights=weights, device=settings.device)
        model = pipeline.model
        reason = unavailable_reason(backend, model.device) if backend != "none" else None
        if reason is not None:
            rows.append({"what": f"{settings.model} {size}", "backend": backend, "note": reason})
            continue
        started = time.perf_counter()
        accelerate(model, backend, cache_dir=settings.engine_dir, resolution_range=(min(settings.sizes), max(settings.sizes)))
        probes = _image_probes(model, size, settings.rows)
        build = time.perf_counter() - started
        for call in probes.values():
            call()  # first call: compiles / captures
        build = time.perf_counter() - started
        result = {"what": f"{settings.model} {size}x{size}", "backend": backend, "build_s": round(build, 1)}
        for name, call in probes.items():
            result[f"{name}_ms"] = ms(median(measure(call, iterations=10, warmup=2, device=model.device)), 2)
        state = pipeline.create_state(StreamConfig(width=size, height=size), {"num_inference_steps": settings.steps, "prompt": "a benchmark"})
        frame = torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8)
        step = lambda: pipeline.step([state], [frame])  # noqa: E731
        samples = measure(step, iterations=settings.frames, warmup=3, device=model.device)
        result["fps"] = round(1 / median(samples), 2)
        if settings.steering:
            started = time.perf_counter()
            pipeline.attach_controlnet("tiny")  # builds its engines under onnxruntime / tensorrt
            pipeline.attach_ip_adapter("tiny")
            steering = _steering_probes(model, size, settings.rows)
            for call in steering.values():
                call()
            result["steering_build_s"] = round(time.perf_counter() - started, 1)
            for name, call in steering.items():
                result[f"{name}_ms"] = ms(median(measure(call, iterations=10, warmup=2, device=model.device)), 2)
        if backend == "none":
            eager = result
        if eager is not None:
            for key in ("unet_ms", "vae_encode_ms", "vae_decode_ms", *(f"{n}_ms" for n in STEERING_PROBES)):
                result[key.replace("_ms", "_x")] = _ratio(eager.get(key), result.get(key))
            result["fps_x"] = round(result["fps"] / eager["fps"], 2)
        rows.append(result)
    return rows


def _unet_inputs(model: Any, size: int, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
    h, w = model.latent_size(size, size)
    latents = torch.randn(rows, model.latent_channels, h, w, device=model.device, dtype=model.dtype)
    timesteps = torch.full((rows,), 500, device=model.device)
    prompt = model.encode_prompt("a benchmark")
    added = None
    if model.is_sdxl:
        added = {"text_embeds": prompt.pooled.expand(rows, -1), "time_ids": model.sdxl_time_ids(size, size).expand(rows, -1)}
    return latents, timesteps, prompt.hidden.expand(rows, -1, -1), added


STEERING_PROBES = ("controlnet", "unet_control", "unet_ip")


def _steering_probes(model: Any, size: int, rows: int) -> dict[str, Any]:
    """The steered calls: a ControlNet over every row, the UNet with its residuals, the UNet with a reference per row."""
    latents, timesteps, hidden, added = _unet_inputs(model, size, rows)
    control = torch.rand(rows, 3, size, size, device=model.device, dtype=model.dtype)
    with torch.inference_mode():
        residuals = model.eager_controlnet("tiny", latents, timesteps, hidden, added, control)
    adapter = model.ip_adapter
    embeds = adapter.embed(torch.randint(0, 256, (size, size, 3), dtype=torch.uint8)).expand(rows, *adapter.embedding_shape)
    reference = (embeds, torch.full((rows,), 0.8))
    return {
        "controlnet": lambda: model.run_controlnet("tiny", latents, timesteps, hidden, added, control),
        "unet_control": lambda: model.predict_noise(latents, timesteps, hidden, added, residuals),
        "unet_ip": lambda: model.predict_noise(latents, timesteps, hidden, added, None, reference),
    }


def _image_probes(model: Any, size: int, rows: int) -> dict[str, Any]:
    latents, timesteps, hidden, added = _unet_inputs(model, size, rows)
    h, w = model.latent_size(size, size)
    images = torch.rand(1, 3, size, size, device=model.device, dtype=model.dtype) * 2 - 1
    images = images.contiguous(memory_format=torch.channels_last)
    one = torch.randn(1, model.latent_channels, h, w, device=model.device, dtype=model.dtype)
    return {
        "unet": lambda: model.predict_noise(latents, timesteps, hidden, added),
        "vae_encode": lambda: model.encode_images(images),
        "vae_decode": lambda: model.decode_latents(one),
    }


def video_rows(settings: EngineBenchSettings) -> list[dict[str, Any]]:
    from streamgen.pipeline.video_loading import load_video_pipeline  # noqa: PLC0415
    from streamgen.runtime import accelerate, unavailable_reason  # noqa: PLC0415

    rows, eager = [], None
    for backend in ("none", "compile"):
        if backend not in settings.backends:
            continue
        model = load_video_pipeline("tiny-video", device=settings.device).model
        reason = unavailable_reason(backend, model.device) if backend != "none" else None
        if reason is not None:
            rows.append({"what": "tiny-video chunk", "backend": backend, "note": reason})
            continue
        started = time.perf_counter()
        accelerate(model, backend, cache_dir=settings.engine_dir)
        probe = model.timing_probe
        probe()
        result = {"what": "tiny-video chunk", "backend": backend, "build_s": round(time.perf_counter() - started, 1)}
        result["dit_chunk_ms"] = ms(median(measure(probe, iterations=10, warmup=2, device=model.device)), 2)
        if backend == "none":
            eager = result
        elif eager is not None:
            result["dit_chunk_x"] = _ratio(eager["dit_chunk_ms"], result["dit_chunk_ms"])
        rows.append(result)
    return rows


def first_frame_rows(settings: EngineBenchSettings) -> list[dict[str, Any]]:
    """Cold and warm time to first frame of each backend, each in a new process over one fresh engine cache."""
    from streamgen.runtime import unavailable_reason  # noqa: PLC0415

    device = torch.device("cuda" if settings.device == "auto" and torch.cuda.is_available() else ("cpu" if settings.device == "auto" else settings.device))
    size = min(settings.sizes)
    rows = []
    for backend in settings.backends:
        what = f"{settings.model} {size}x{size} first frame"
        reason = unavailable_reason(backend, device) if backend != "none" else None
        if reason is not None:
            rows.append({"what": what, "backend": backend, "note": reason})
            continue
        with tempfile.TemporaryDirectory(prefix="streamgen-ttff-") as engine_dir:
            cold, warm = (_first_frame(settings, backend, size, Path(engine_dir)) for _ in ("cold", "warm"))
            # compile: what the stored artefacts add over inductor's disk cache alone (the state before they were kept)
            disk_only = _first_frame(settings, backend, size, Path(engine_dir), "--no-artifacts") if backend == "compile" else {}
        row = {"what": what, "backend": backend, "cold_s": cold.get("first_frame_s"), "warm_s": warm.get("first_frame_s"),
               "warm_disk_s": disk_only.get("first_frame_s")}
        errors = [r["error"] for r in (cold, warm, disk_only) if r.get("error")]
        if errors:
            row["note"] = errors[0][-200:]
        rows.append(row)
    return rows


def _first_frame(settings: EngineBenchSettings, backend: str, size: int, engine_dir: Path, *extra: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.first_frame", "--model", settings.model, "--backend", backend, "--size", str(size),
               "--device", settings.device, "--engine-dir", str(engine_dir), *extra]
    if settings.dummy:
        command.append("--dummy")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(engine_dir / "inductor")}  # cold really is cold
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip() or f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ratio(eager: float | None, other: float | None) -> float | None:
    return None if not eager or not other else round(eager / other, 2)


COLUMNS = [
    ("what", "what"), ("backend", "backend"), ("build_s", "build s"), ("unet_ms", "UNet ms"), ("unet_x", "x eager"),
    ("vae_encode_ms", "VAE enc ms"), ("vae_encode_x", "x eager"), ("vae_decode_ms", "VAE dec ms"), ("vae_decode_x", "x eager"),
    ("dit_chunk_ms", "DiT chunk ms"), ("dit_chunk_x", "x eager"), ("fps", "fps"), ("fps_x", "x eager"),
    ("steering_build_s", "steering build s"), ("controlnet_ms", "ControlNet ms"), ("controlnet_x", "x eager"),
    ("unet_control_ms", "UNet+control ms"), ("unet_control_x", "x eager"), ("unet_ip_ms", "UNet+IP ms"), ("unet_ip_x", "x eager"),
    ("cold_s", "1st frame cold s"), ("warm_s", "1st frame warm s"), ("warm_disk_s", "warm, disk cache only s"), ("note", "note"),
]


def parse_args(argv: list[str] | None) -> EngineBenchSettings:
    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="image model (default tiny); with --dummy a preset's real architecture, random weights")
    parser.add_argument("--dummy", action="store_true", help="random weights of the real architecture (no download)")
    parser.add_argument("--sizes", default="256,512", help="square resolutions, comma-separated (default 256,512)")
    parser.add_argument("--rows", type=int, default=4, help="UNet rows per timed call (default 4)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps of the end-to-end stream (default 2)")
    parser.add_argument("--frames", type=int, default=20, help="timed end-to-end steps (default 20)")
    parser.add_argument("--no-video", action="store_true", help="skip tiny-video")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, eager first (default {','.join(BACKENDS)})")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--engine-dir", type=Path, default=OUT_DIR / "engines-cache", help="engine cache for this benchmark")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "engines.json")
    parser.add_argument("--no-ttff", action="store_true", help="skip the cold/warm time-to-first-frame runs (two new processes per backend)")
    parser.add_argument("--ttff-only", action="store_true", help="only the time-to-first-frame runs")
    parser.add_argument("--no-steering", action="store_true", help="skip the ControlNet / IP-Adapter call timings")
    args = parser.parse_args(argv)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if backends[0] != "none":
        backends = ("none", *backends)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    return EngineBenchSettings(
        args.model, args.dummy, sizes, args.rows, args.steps, args.frames, not args.no_video, backends, args.device, args.engine_dir, args.out,
        not args.no_ttff, args.ttff_only, not args.no_steering,
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    rows = []
    for size in settings.sizes if not settings.ttff_only else ():
        print(f"image {settings.model} {size}x{size} ...", flush=True)
        rows += image_rows(settings, size)
    if settings.video and not settings.ttff_only:
        print("tiny-video ...", flush=True)
        rows += video_rows(settings)
    if settings.ttff:
        print("time to first frame, cold and warm (new processes) ...", flush=True)
        rows += first_frame_rows(settings)
    print(table(rows, COLUMNS))
    info = machine()
    print(f"torch threads: {torch.get_num_threads()}")
    report = {"benchmark": "engines", "machine": info, "settings": {**asdict(settings), "engine_dir": str(settings.engine_dir), "out": str(settings.out)}, "results": rows}
    write_json("engines", report, settings.out)
    print(f"wrote {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
