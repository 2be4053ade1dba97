"""``python -m bench.video``: speed of the causal video pipeline (``VideoPipeline.step``).

For each model, resolution, denoising-step count (1–4) and mode (stream batch
vs sequential) it streams a synthetic moving clip, one chunk of input frames
per ``step`` call (1 frame, then 4 per call: exactly what the pipeline
consumes), and reports:

- ``fps``: output frames per second over the timed calls (after warm-up);
- ``chunk_ms_p50/p95``: wall time of a ``step`` call that emits a chunk
  (CUDA synchronised): the per-chunk latency the pipeline adds. With stream
  batch the chunk also lags its input by ``lag`` chunks (steps − 1);
- ``first_frame_ms``: time to first frame of a fresh stream, from its first
  input frame to its first output frame on the device (includes the calls
  that only fill the stream batch);
- ``dit_pct`` / ``vae_pct``: share of the timed calls spent in the DiT and in
  the VAE (each call timed with CUDA synchronised around it).

Models: ``tiny-video`` on the CPU (64x64 and 128x128 by default); on CUDA
also ``wan-causal-1.3b`` with dummy bf16 weights at 480x832 and 512x512
(``--no-wan`` skips it; ``--wan-sizes`` changes the sizes).

Prints a table and writes ``bench/out/video.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from streamgen.pipeline.video_loading import load_video_pipeline
from streamgen.pipeline.video import VideoPipeline

from .common import CallTimer, describe_machine, machine, ms, percentile, sync, table, write_json

COLUMNS = [
    ("model", "model"),
    ("size", "size"),
    ("steps", "steps"),
    ("mode", "mode"),
    ("fps", "fps"),
    ("chunk_ms_p50", "chunk p50 ms"),
    ("chunk_ms_p95", "chunk p95 ms"),
    ("first_frame_ms", "first frame ms"),
    ("lag", "lag chunks"),
    ("dit_pct", "DiT %"),
    ("vae_pct", "VAE %"),
]


@dataclass(frozen=True)
class Case:
    model: str
    width: int
    height: int
    steps: int
    batch: bool

    @property
    def size(self) -> str:
        return f"{self.height}x{self.width}"


def synthetic_clip(count: int, width: int, height: int, device: torch.device) -> torch.Tensor:
    """A moving gradient with noise, (count, H, W, 3) uint8 on ``device`` (no host copies while timing)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
    frames = torch.stack([base.roll(shifts=4 * i, dims=1) for i in range(count)])
    return frames.to(device)


def run_case(pipeline: VideoPipeline, case: Case, chunks: int, warmup_chunks: int) -> dict[str, Any]:
    device = pipeline.device
    settings = {"width": case.width, "height": case.height, "use_denoising_batch": case.batch,
                "num_inference_steps": case.steps, "prompt": "a watercolor city"}
    state = pipeline.create_state(None, settings)
    total_chunks = warmup_chunks + chunks
    clip = synthetic_clip(1 + 4 * total_chunks, case.width, case.height, device)
    timer = CallTimer(device)
    model = pipeline.model
    forward, encode, decode = model.forward_chunks, model.vae.encode, model.vae.decode
    model.forward_chunks = timer.wrap(forward, "dit")
    model.vae.encode = timer.wrap(encode, "vae")
    model.vae.decode = timer.wrap(decode, "vae")
    try:
        return _stream(pipeline, state, case, clip, warmup_chunks, timer)
    finally:
        model.forward_chunks = forward
        del model.vae.encode, model.vae.decode  # back to the class methods


def _stream(pipeline: VideoPipeline, state: Any, case: Case, clip: torch.Tensor, warmup_chunks: int, timer: CallTimer) -> dict[str, Any]:
    device = pipeline.device
    calls = [clip[:1]] + list(clip[1:].split(4))
    first_frame_s = None
    elapsed = 0.0
    chunk_times: list[float] = []
    timed_seconds, timed_frames = 0.0, 0
    for index, frames in enumerate(calls):
        if index == warmup_chunks:
            timer.reset()
        sync(device)
        start = time.perf_counter()
        out = pipeline.step([state], [frames])[0]
        sync(device)
        seconds = time.perf_counter() - start
        elapsed += seconds
        emitted = out.frames.shape[0]
        if first_frame_s is None and emitted:
            first_frame_s = elapsed
        if index >= warmup_chunks:
            timed_seconds += seconds
            timed_frames += emitted
            if emitted:
                chunk_times.append(seconds)
    dit = timer.by_label.get("dit", [0.0])[0]
    vae = timer.by_label.get("vae", [0.0])[0]
    return {
        **asdict(case),
        "size": case.size,
        "mode": "batch" if case.batch else "sequential",
        "fps": round(timed_frames / timed_seconds, 2) if timed_seconds else None,
        "chunk_ms_p50": ms(percentile(chunk_times, 50)),
        "chunk_ms_p95": ms(percentile(chunk_times, 95)),
        "first_frame_ms": ms(first_frame_s),
        "lag": case.steps - 1 if case.batch else 0,
        "dit_pct": round(100 * dit / timed_seconds, 1) if timed_seconds else None,
        "vae_pct": round(100 * vae / timed_seconds, 1) if timed_seconds else None,
        "frames_timed": timed_frames,
    }


def cases_for(model: str, sizes: list[tuple[int, int]], steps: list[int]) -> list[Case]:
    return [Case(model, w, h, n, batch) for (w, h) in sizes for n in steps for batch in (True, False)]


def parse_size(text: str) -> tuple[int, int]:
    """``512`` → (512, 512); ``480x832`` → width 832, height 480 (H x W, as the paper writes it)."""
    if "x" in text:
        h, w = text.lower().split("x")
        return int(w), int(h)
    return int(text), int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.video", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-sizes", default="64,128", help="tiny-video sizes (comma separated; HxW or N)")
    parser.add_argument("--wan-sizes", default="480x832,512", help="Wan-1.3B sizes on CUDA")
    parser.add_argument("--steps", default="1,2,3,4", help="denoising step counts")
    parser.add_argument("--chunks", type=int, default=8, help="timed chunks per configuration")
    parser.add_argument("--warmup", type=int, default=None, help="untimed chunks first (default: steps + 1)")
    parser.add_argument("--no-tiny", action="store_true", help="skip tiny-video")
    parser.add_argument("--no-wan", action="store_true", help="skip Wan-1.3B even on CUDA")
    parser.add_argument("--device", default="auto", help="device for tiny-video (default: cpu unless only tiny runs on cuda)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/out/video.json)")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    results: list[dict[str, Any]] = []
    plans: list[tuple[str, dict[str, Any], list[Case]]] = []
    if not args.no_tiny:
        device = "cpu" if args.device == "auto" else args.device
        sizes = [parse_size(s) for s in args.tiny_sizes.split(",") if s]
        plans.append(("tiny-video", {"device": device, "dtype": "float32"}, cases_for("tiny-video", sizes, steps)))
    if torch.cuda.is_available() and not args.no_wan:
        sizes = [parse_size(s) for s in args.wan_sizes.split(",") if s]
        plans.append(("wan-causal-1.3b", {"weights": "dummy", "device": "cuda", "dtype": "bfloat16"}, cases_for("wan-causal-1.3b", sizes, steps)))
    elif not args.no_wan:
        print("CUDA is not available: skipping wan-causal-1.3b (dummy bf16)", file=sys.stderr)
    for model, spec, cases in plans:
        started = time.perf_counter()
        pipeline = load_video_pipeline(model, **spec)
        load_s = time.perf_counter() - started
        print(f"{model}: loaded in {load_s:.1f} s on {pipeline.device} ({pipeline.dtype})", file=sys.stderr)
        for case in cases:
            warmup = args.warmup if args.warmup is not None else case.steps + 1
            row = run_case(pipeline, case, args.chunks, warmup)
            row["load_s"] = round(load_s, 1)
            results.append(row)
            print(table([row], COLUMNS).splitlines()[-1], file=sys.stderr, flush=True)
        del pipeline
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    info = machine("cuda" if torch.cuda.is_available() else None)
    print(describe_machine(info))
    print(table(results, COLUMNS))
    report = {"benchmark": "video", "created": dt.datetime.now(dt.timezone.utc).isoformat(), "machine": info,
              "chunks": args.chunks, "results": results}
    print(f"wrote {write_json('video', report, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
