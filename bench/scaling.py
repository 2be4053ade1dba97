"""``python -m bench.scaling``: pipeline stages, measured on CPU ranks here and projected for Wan on GPUs.

1. **Measured** (this machine): one causal video stream (tiny-video with
   ``--layers`` blocks at ``--size``, stream batch, ``--steps`` steps) fed
   ``--frames`` frames, once in one process and once over ``--ranks`` CPU
   ranks with ONE thread each, in the same run: throughput (frames per
   second), per-frame latency (one step's wall time), the frames' equality
   and every rank's weights and KV cache (from the ranks themselves).
2. **Projected** (bench.scaling_projection): Wan-1.3B and 14B at 512×512 on
   1/2/4/8 GPUs from published single-H100 figures, in two placements of
   the VAE: ``rank0-vae``, where streamgen runs it today (the driver, rank
   0, encodes AND decodes), and ``decode-last``, the decoder on the last
   rank (the issue's plan, not implemented yet). The difference is what
   moving the decoder would buy.

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


def measure_stream(model: Any, frames: list[torch.Tensor], size: int, steps: int) -> tuple[float, list[float], torch.Tensor]:
    """(frames per second, per-step seconds, output frames) of one stream fed ``frames`` one call each."""
    from streamgen.pipeline.video_loading import video_pipeline_for

    pipeline = video_pipeline_for(model)
    state = pipeline.create_state({"width": size, "height": size, "use_denoising_batch": True}, {"prompt": "a fox", "num_inference_steps": steps})
    for frame in frames[:9]:  # warm-up: fill the window (not timed)
        pipeline.step([state], [frame])
    step_seconds, outputs = [], []
    began = time.perf_counter()
    for frame in frames[9:]:
        start = time.perf_counter()
        outputs.append(pipeline.step([state], [frame])[0].frames)
        step_seconds.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - began
    produced = sum(o.shape[0] for o in outputs)
    return produced / elapsed, step_seconds, torch.cat(outputs)


def measured(settings: argparse.Namespace) -> list[dict[str, Any]]:
    from streamgen.models.loading.video_presets import build_tiny_video_model
    from streamgen.parallel.staged_model import load_staged_video_model

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    frames = [torch.randint(0, 256, (1, settings.size, settings.size, 3), generator=generator, dtype=torch.uint8) for _ in range(settings.frames)]
    rows = []
    one = build_tiny_video_model(seed=0, layers=settings.layers)
    fps, steps, reference = measure_stream(one, frames, settings.size, settings.steps)
    params = sum(p.numel() for p in one.transformer.parameters())
    rows.append({"ranks": 1, "fps": round(fps, 2), **_latency(steps), "equal": True, "rank_params": [params]})
    del one
    for ranks in settings.ranks:
        staged = load_staged_video_model("tiny-video", ["cpu"] * ranks, layers=settings.layers, threads=1, rebalance=settings.rebalance)
        try:
            fps, steps, out = measure_stream(staged, frames, settings.size, settings.steps)
            inventory = staged.stages.driver.inventory()
            split = list(staged.stages.driver.split.bounds)
        finally:
            staged.stages.close()
        rows.append({
            "ranks": ranks, "fps": round(fps, 2), **_latency(steps), "equal": bool(torch.equal(out, reference)),
            "split": split, "rank_params": [r["parameters"] for r in inventory], "rank_kv_bytes": [r["kv_cache_bytes"] for r in inventory],
        })
    base = rows[0]["fps"]
    for row in rows:
        row["speedup"] = round(row["fps"] / base, 2)
    return rows


def _latency(steps: list[float]) -> dict[str, float]:
    ordered = sorted(steps)
    return {"step_ms_p50": round(ordered[len(ordered) // 2] * 1e3, 1), "step_ms_p99": round(ordered[int(len(ordered) * 0.99) - 1] * 1e3, 1)}


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
    parser.add_argument("--layers", type=int, default=8, help="tiny-video DiT blocks (default 8)")
    parser.add_argument("--size", type=int, default=128, help="frame size in pixels (default 128)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps = stream batch rows (default 2)")
    parser.add_argument("--frames", type=int, default=89, help="input frames (default 89)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[2], help="CPU rank counts to measure (default 2)")
    parser.add_argument("--rebalance", action="store_true", help="let the block balancer move blocks while measuring")
    parser.add_argument("--skip-measure", action="store_true", help="projection only")
    parser.add_argument("--out", default=None, help="JSON path (default bench/out/scaling.json)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    report: dict[str, Any] = {"machine": machine(), "settings": vars(args)}
    if not args.skip_measure:
        report["measured"] = measured(args)
        print(f"measured here: tiny-video, {args.layers} blocks, {args.size}x{args.size}, {args.steps} steps, 1 thread per rank")
        print(table(report["measured"], [("ranks", "ranks"), ("fps", "fps"), ("speedup", "x"), ("step_ms_p50", "step p50 ms"), ("step_ms_p99", "p99 ms"), ("equal", "frames equal"), ("split", "split"), ("rank_params", "params per rank")]))
    report["projected"] = projected([1, 2, 4, 8], [1, 4])
    print("\nprojected (published 1xH100 figures, NVLink; see bench/scaling_projection.py):")
    print(table(report["projected"], [("model", "model"), ("steps", "steps"), ("vae", "VAE"), ("stages", "GPUs"), ("fps", "fps"), ("speedup", "x"), ("split", "split"), ("p50_ms", "p50 ms"), ("misses", "misses"), ("max_rank_gib", "max GiB/rank")]))
    path = write_json("scaling", report, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
