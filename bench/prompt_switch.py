"""``python -m bench.prompt_switch``: what a prompt switch costs a causal video stream, by switch method.

``prompt_switch="blend"`` morphs the cross-attention context over
``transition_chunks`` (no extra model work); ``"recache"`` rebuilds the
self-attention KV cache from the frames in the window under the new prompt
before the next chunk (LongLive's method: extra DiT forwards once, at the
switch). For each method and denoising mode it streams a synthetic clip,
switches the prompt once in the middle and reports:

- ``chunk_ms_p50``: a normal chunk's ``step`` wall time (CUDA synchronised);
- ``switch_ms``: the chunk whose step applied the switch (the prompt's
  encoding is memoised beforehand, as the server's setup thread does, so
  this is the pipeline's cost alone);
- ``switch_x``: ``switch_ms / chunk_ms_p50``, measured in the same run;
- ``recache_forwards``: the extra DiT forwards the switch ran.

Models: ``tiny-video`` on the CPU; on CUDA also ``wan-causal-1.3b`` with
dummy bf16 weights (``--no-wan`` skips it). Prints a table and writes
``bench/out/prompt_switch.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from typing import Any

import torch

from streamgen.pipeline.video_loading import load_video_pipeline

from .common import describe_machine, machine, ms, percentile, sync, table, write_json
from .video import parse_size, synthetic_clip

COLUMNS = [
    ("model", "model"),
    ("size", "size"),
    ("switch", "switch"),
    ("mode", "mode"),
    ("chunk_ms_p50", "chunk p50 ms"),
    ("switch_ms", "switch ms"),
    ("switch_x", "x chunk"),
    ("recache_forwards", "extra forwards"),
]
FIRST, SECOND = "a watercolor city at dawn", "an oil painting of a harbour at night"


def run_case(pipeline: Any, width: int, height: int, switch: str, batch: bool, chunks: int, steps: int) -> dict[str, Any]:
    """Stream ``chunks`` chunks, switching the prompt (method ``switch``) before the middle one."""
    device = pipeline.device
    settings = {"width": width, "height": height, "use_denoising_batch": batch, "num_inference_steps": steps,
                "prompt": FIRST, "prompt_switch": switch}
    state = pipeline.create_state(None, settings)
    pipeline.model.encode_prompt(SECOND)  # memoised, as the server's setup thread does before queueing an update
    t = state.config.chunk_frames
    clip = synthetic_clip(4 * (t - 1) + 1 + 4 * t * chunks, width, height, device)
    calls = [clip[: 4 * (t - 1) + 1]] + list(clip[4 * (t - 1) + 1 :].split(4 * t))
    middle = len(calls) // 2
    normal: list[float] = []
    switch_s = None
    forwards_before = 0
    for index, frames in enumerate(calls):
        if index == middle:
            forwards_before = state.recache_forwards
            pipeline.update(state, {"prompt": SECOND})
        sync(device)
        start = time.perf_counter()
        pipeline.step([state], [frames])
        sync(device)
        seconds = time.perf_counter() - start
        if index == middle:
            switch_s = seconds
        elif index > steps:  # past the stream batch's fill and the first chunks' warm-up
            normal.append(seconds)
    p50 = percentile(normal, 50)
    return {
        "model": pipeline.model.name,
        "size": f"{height}x{width}",
        "switch": switch,
        "mode": "batch" if batch else "sequential",
        "steps": steps,
        "chunk_ms_p50": ms(p50),
        "switch_ms": ms(switch_s),
        "switch_x": round(switch_s / p50, 2) if p50 and switch_s is not None else None,
        "recache_forwards": state.recache_forwards - forwards_before,
        "recaches": state.recaches,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prompt_switch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-size", default="128", help="tiny-video size (HxW or N)")
    parser.add_argument("--wan-size", default="480x832", help="Wan-1.3B size on CUDA")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps")
    parser.add_argument("--chunks", type=int, default=8, help="chunks streamed per case (the switch comes before the middle one)")
    parser.add_argument("--no-wan", action="store_true", help="skip Wan-1.3B even on CUDA")
    parser.add_argument("--out", default=None, help="JSON path (default bench/out/prompt_switch.json)")
    args = parser.parse_args(argv)
    plans = [("tiny-video", {"device": "cpu", "dtype": "float32"}, parse_size(args.tiny_size))]
    if torch.cuda.is_available() and not args.no_wan:
        plans.append(("wan-causal-1.3b", {"weights": "dummy", "device": "cuda", "dtype": "bfloat16"}, parse_size(args.wan_size)))
    results = []
    for model, spec, (width, height) in plans:
        pipeline = load_video_pipeline(model, **spec)
        for switch in ("blend", "recache"):
            for batch in (True, False):
                row = run_case(pipeline, width, height, switch, batch, args.chunks, args.steps)
                results.append(row)
                print(table([row], COLUMNS).splitlines()[-1], file=sys.stderr, flush=True)
        del pipeline
    info = machine("cuda" if torch.cuda.is_available() else None)
    print(describe_machine(info))
    print(table(results, COLUMNS))
    report = {"benchmark": "prompt_switch", "created": dt.datetime.now(dt.timezone.utc).isoformat(), "machine": info, "results": results}
    print(f"wrote {write_json('prompt_switch', report, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
