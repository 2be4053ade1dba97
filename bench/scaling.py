"""``python -m bench.scaling``: pipeline stages, measured on CPU ranks here and projected for Wan on GPUs.

1. **Measured** (this machine): one causal video stream (tiny-video with
   ``--layers`` blocks at ``--size``, stream batch, ``--steps`` steps) fed
   ``--frames`` frames, once in one process and once over ``--ranks`` CPU
   ranks with ONE thread each, in the same run: throughput (frames per
   second, until every frame is out) fed flat out, per-frame latency
   fed flat out (queueing included) and fed live at ``--pace`` × one
   process's rate (the latency a camera's frames see),
   the frames' equality, the most micro-batches that were on the ring at
   once, and every rank's weights and KV cache (from the ranks themselves).
2. **Projected** (bench.scaling_projection): Wan-1.3B and 14B at 512×512 on
   1/2/4/8 GPUs from published single-H100 figures, in two placements of
   the VAE: ``decode-last``, where streamgen runs it (rank 0 encodes, the
   last rank decodes), and ``rank0-vae``, rank 0 doing both (what
   StreamDiffusionV2's layout and streamgen's first staged version did).

Prints tables and writes ``bench/out/scaling.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any

import torch

from .common import machine, table, write_json


WARMUP = [9]  # frames fed before timing (--warmup)


def measure_stream(model: Any, frames: list[torch.Tensor], size: int, steps: int) -> tuple[float, list[float], torch.Tensor]:
    """(frames per second, per-frame latencies in seconds, every output frame) of one stream fed ``frames`` as fast as it takes them.

    The clock runs from the first timed frame until the flush has returned
    every frame, so a pipeline that hands chunks over and returns (stages)
    is timed on what it finished, not on how fast it accepted input. A
    frame's latency runs from the call that fed it to the call that
    returned it; feeding as fast as possible, that includes the wait behind
    the frames ahead of it.
    """
    from streamgen.pipeline.video_loading import video_pipeline_for

    pipeline = video_pipeline_for(model)
    state = pipeline.create_state({"width": size, "height": size, "use_denoising_batch": True}, {"prompt": "a fox", "num_inference_steps": steps})
    outputs, latencies = [], []

    def keep(output: Any) -> None:
        now = time.perf_counter()
        outputs.append(output.frames)
        latencies.extend(now - tag for tag in output.tags if tag is not None)

    for frame in frames[:WARMUP[0]]:  # warm-up: fill the window (untagged: not timed)
        keep(pipeline.step([state], [frame])[0])
    began = time.perf_counter()
    for frame in frames[WARMUP[0]:]:
        keep(pipeline.step([state], [frame], [(time.perf_counter(),)])[0])
    keep(pipeline.flush(state))
    elapsed = time.perf_counter() - began
    return len(latencies) / elapsed, latencies, torch.cat(outputs)


def paced_latency(model: Any, frames: list[torch.Tensor], size: int, steps: int, fps: float) -> dict[str, float]:
    """Per-frame latency of one stream fed at ``fps`` (a live source): from feeding a frame to its output being available.

    A pipeline that finishes frames between steps (stages) is polled every
    2 ms, as the server's worker collects them when told; one process
    returns frames from the step that completes them.
    """
    from streamgen.pipeline.video_loading import video_pipeline_for

    pipeline = video_pipeline_for(model)
    state = pipeline.create_state({"width": size, "height": size, "use_denoising_batch": True}, {"prompt": "a fox", "num_inference_steps": steps})
    latencies: list[float] = []

    def keep(output: Any) -> None:
        now = time.perf_counter()
        latencies.extend(now - tag for tag in output.tags if tag is not None)

    for frame in frames[:WARMUP[0]]:
        pipeline.step([state], [frame])
    collect = getattr(pipeline, "collect", None)
    due = time.perf_counter()
    for frame in frames[WARMUP[0]:]:
        while (now := time.perf_counter()) < due:
            if collect is not None:
                keep(collect([state])[0])
                time.sleep(0.002)
            else:
                time.sleep(due - now)
        keep(pipeline.step([state], [frame], [(time.perf_counter(),)])[0])
        due += 1.0 / fps
    keep(pipeline.flush(state))
    ordered = sorted(latencies)
    return {"paced_fps": round(fps, 2), "paced_ms_p50": round(ordered[len(ordered) // 2] * 1e3, 1), "paced_ms_p99": round(ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1e3, 1)}


def measured(settings: argparse.Namespace) -> list[dict[str, Any]]:
    from streamgen.models.loading.video_presets import build_tiny_video_model, load_video_model
    from streamgen.parallel.staged_model import load_staged_video_model

    tiny = settings.model == "tiny-video"
    if not settings.cuda:
        torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    frames = [torch.randint(0, 256, (1, settings.size, settings.size, 3), generator=generator, dtype=torch.uint8) for _ in range(settings.frames)]
    rows = []
    dit = _dit_sizes(settings.width) if tiny else None
    device = "cuda:0" if settings.cuda else "cpu"
    if tiny:
        one = build_tiny_video_model(seed=0, layers=settings.layers, dit=dit, device=device)
    else:  # the real architecture with random weights (a stage seeds its blocks itself: frames are not comparable)
        one = load_video_model(settings.model, weights="dummy", device=device, dtype="auto")
    if settings.acceleration != "none":
        from streamgen.runtime import accelerate

        accelerate(one, settings.acceleration)
    fps, latencies, reference = measure_stream(one, frames, settings.size, settings.steps)
    params = sum(p.numel() for p in one.transformer.parameters())
    pace = settings.pace * fps  # a live source the one process keeps up with
    rows.append({"ranks": 1, "fps": round(fps, 2), **_latency(latencies), **paced_latency(one, frames, settings.size, settings.steps, pace),
                 "equal": True, "rank_params": [params]})
    del one
    for ranks in settings.ranks:
        devices = [f"cuda:{i}" for i in range(ranks)] if settings.cuda else ["cpu"] * ranks
        options = {"layers": settings.layers, "tiny_dit": dit} if tiny else {"weights": "dummy"}
        staged = load_staged_video_model(
            settings.model, devices, threads=None if settings.cuda else 1, rebalance=not settings.no_rebalance,
            acceleration=settings.acceleration, **options,
        )
        try:
            fps, latencies, out = measure_stream(staged, frames, settings.size, settings.steps)
            paced = paced_latency(staged, frames, settings.size, settings.steps, pace)
            inventory = staged.stages.driver.inventory()
            split = list(staged.stages.driver.split.bounds)
            peak = staged.stages.driver.peak_on_ring
        finally:
            staged.stages.close()
        rows.append({
            "ranks": ranks, "fps": round(fps, 2), **_latency(latencies), **paced, "equal": bool(torch.equal(out.cpu(), reference.cpu())) if tiny else None,
            "max_diff": int((out.cpu().int() - reference.cpu().int()).abs().max()) if tiny and out.shape == reference.shape else None, "peak_on_ring": peak,
            "split": split, "rank_params": [r["parameters"] for r in inventory], "rank_vae_params": [r["vae_parameters"] for r in inventory],
            "rank_kv_bytes": [r["kv_cache_bytes"] for r in inventory],
        })
    base = rows[0]["fps"]
    for row in rows:
        row["speedup"] = round(row["fps"] / base, 2)
    return rows


def _dit_sizes(width: int | None) -> dict[str, int] | None:
    """tiny-video's DiT at ``width`` channels (64 per head, a 4x MLP), or its own 48 (None)."""
    if not width:
        return None
    if width % 64:
        raise SystemExit("--width must be a multiple of 64")
    return {"num_attention_heads": width // 64, "attention_head_dim": 64, "ffn_dim": 4 * width}


def _latency(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"latency_ms_p50": round(ordered[len(ordered) // 2] * 1e3, 1), "latency_ms_p99": round(ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1e3, 1)}


def projected(stages: list[int], steps: list[int]) -> list[dict[str, Any]]:
    from .scaling_projection import ProjectionSettings, project_inputs, published_inputs

    rows = []
    for model in ("wan-1.3b", "wan-14b"):
        for step in steps:
            inputs, _ = published_inputs(model, step)
            placements = {
                "decode-last": inputs,
                # the decoder's time (and the head's few FLOPs, a pessimistic rounding) on rank 0 with the encoder
                "rank0-vae": dataclasses.replace(inputs, encode_seconds=inputs.encode_seconds + inputs.decode_seconds, decode_seconds=0.0),
            }
            for placement, variant in placements.items():
                one = project_inputs(variant, 1, ProjectionSettings())
                for count in stages:
                    row = one if count == 1 else project_inputs(variant, count, ProjectionSettings())
                    rows.append({"model": model, "steps": step, "vae": placement, "stages": count, "fps": row["fps"],
                                 "speedup": round(row["fps"] / one["fps"], 2), "split": row["split"],
                                 "p50_ms": row["latency_ms_p50"], "misses": row["misses"], "max_rank_gib": row.get("max_rank_weights_gib")})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12, help="tiny-video DiT blocks (default 12)")
    parser.add_argument("--size", type=int, default=128, help="frame size in pixels (default 128)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps = stream batch rows (default 2)")
    parser.add_argument("--frames", type=int, default=289, help="input frames (default 289: enough micro-batches for the balancer to settle)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[2], help="CPU rank counts to measure (default 2)")
    parser.add_argument("--cuda", action="store_true", help="ranks on cuda:0, cuda:1, ... (one process on cuda:0) instead of CPU ranks")
    parser.add_argument("--model", default="tiny-video", help="tiny-video (default), or a Wan preset run with dummy weights (GPU)")
    parser.add_argument("--warmup", type=int, default=9, help="frames fed before timing (default 9; with compile, feed past the cache window, e.g. 97, so no graph compiles while timed)")
    parser.add_argument("--acceleration", default="none", choices=("none", "compile"), help="eager (default) or torch.compile, in one process and on every rank")
    parser.add_argument("--pace", type=float, default=0.8, help="live-source rate for the latency run, as a share of one process's fps (default 0.8)")
    parser.add_argument("--width", type=int, default=768, help="DiT width, a multiple of 64 (default 768: the DiT takes ~60 %% of the time, as in Wan; 0 = tiny-video's own 48, where the VAE takes 95 %%)")
    parser.add_argument("--no-rebalance", action="store_true", help="keep the even split (the block balancer moves blocks by default)")
    parser.add_argument("--skip-measure", action="store_true", help="projection only")
    parser.add_argument("--out", default=None, help="JSON path (default bench/out/scaling.json)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    WARMUP[0] = args.warmup
    report: dict[str, Any] = {"machine": machine(), "settings": vars(args)}
    if not args.skip_measure:
        report["measured"] = measured(args)
        width = f", {args.layers} blocks, width {args.width or 48}" if args.model == "tiny-video" else ", dummy weights"
        where = ("GPU ranks" if args.cuda else "1 thread per CPU rank") + (f", {args.acceleration}" if args.acceleration != "none" else "")
        print(f"measured here: {args.model}{width}, {args.size}x{args.size}, {args.steps} steps, {where}")
        print(table(report["measured"], [("ranks", "ranks"), ("fps", "fps"), ("speedup", "x"), ("latency_ms_p50", "flat-out p50 ms"), ("paced_fps", "live fps"), ("paced_ms_p50", "live p50 ms"), ("paced_ms_p99", "live p99 ms"), ("equal", "frames equal"), ("max_diff", "max diff /255"), ("peak_on_ring", "peak on ring"), ("split", "split"), ("rank_params", "DiT params per rank"), ("rank_vae_params", "VAE params per rank")]))
    report["projected"] = projected([1, 2, 4, 8], [1, 4])
    print("\nprojected (published 1xH100 figures, NVLink; see bench/scaling_projection.py):")
    print(table(report["projected"], [("model", "model"), ("steps", "steps"), ("vae", "VAE"), ("stages", "GPUs"), ("fps", "fps"), ("speedup", "x"), ("split", "split"), ("p50_ms", "p50 ms"), ("misses", "misses"), ("max_rank_gib", "max GiB/rank")]))
    path = write_json("scaling", report, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
