"""``python -m bench.gpu_quick``: the headline GPU numbers and a CUDA smoke of every path, in a few minutes (``bench/gpu.sh --quick``).

Rows (each in a process of its own, with a time limit, so one slow compile
or one crash costs its row and nothing else):

- ``image-eager``: the sd-turbo architecture (dummy fp16 weights), 512x512,
  1 step, stream batch: fps of one session and of four sessions batched;
- ``image-compile``: the same with ``--acceleration compile`` (CUDA graphs
  on CUDA): time to the first frame (compiling) and both fps;
- ``image-steered``: the same eager model with a ControlNet (canny) and an
  IP-Adapter reference (the ``tiny`` ones, shaped by the model's UNet):
  fps of one steered session and its cost over plain img2img (``x plain``);
- ``video``: the Wan-1.3B causal student architecture (dummy bf16), 480x832,
  1 step: fps, time to the first frame, peak GPU memory;
- ``kv-no-sync``: one chunk forward through the rolling KV cache with
  CUDA's sync debug mode set to *error*: a host sync inside it fails the row,
  naming the op;
- ``stages``: a stream over 2 ranks (pipeline stages on NCCL) equals one
  process, when the machine has 2 GPUs or more.

Prints one table, writes one JSON (``--out``), and says of every row that
did not run why. ``--rehearse`` runs the same rows on this CPU at tiny sizes
(tiny, tiny-video) in processes that see only the packages the GPU machine
would have (its own plus the locked wheels, :mod:`bench.gpu_plan`): what CI
runs as ``bench/gpu.sh --dry-run``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    name: str
    title: str
    timeout_s: int  # on the GPU; a rehearsal gets its own limits
    gpus: int = 1
    cuda_only: bool = False
    rehearse: bool = True  # a CPU rehearsal runs it (compiling the UNet on a CPU takes minutes: not rehearsed)


ROWS = (
    Row("image-eager", "sd-turbo 512 1-step eager: fps 1 / 4 sessions", 50),
    Row("image-compile", "sd-turbo 512 1-step compiled (CUDA graphs): first frame, fps 1 / 4", 110, rehearse=False),
    Row("image-steered", "sd-turbo 512 1-step eager + ControlNet (canny) + IP-Adapter: fps 1, x plain", 40),
    Row("video", "Wan-1.3B causal 480x832 1-step bf16: fps, first frame, peak memory", 50),
    Row("kv-no-sync", "KV-cache chunk forward with CUDA sync debug = error", 20, cuda_only=True),
    Row("stages", "stages over 2 ranks (NCCL) equal one process", 40, gpus=2),
)
QUICK_BUDGET_S = 240


# ------------------------------------------------------------------- the rows
@dataclass(frozen=True)
class Scale:
    """GPU sizes, or the tiny rehearsal's."""

    image_model: str
    image_spec: dict
    image_size: int
    video_model: str
    video_spec: dict
    video_size: tuple[int, int]  # (width, height)
    device: str
    frames: int


GPU = Scale("sd-turbo", {"weights": "dummy", "dtype": "float16"}, 512, "wan-causal-1.3b", {"weights": "dummy", "dtype": "bfloat16"}, (832, 480), "cuda", 48)
TINY = Scale("tiny", {"dtype": "float32"}, 64, "tiny-video", {"dtype": "float32"}, (64, 64), "cpu", 6)


def _image_fps(pipeline: Any, scale: Scale, sessions: int, params: dict[str, Any] | None = None) -> float:
    import torch  # noqa: PLC0415

    from bench.common import measure, median  # noqa: PLC0415
    from streamgen.config import StreamConfig  # noqa: PLC0415

    size = scale.image_size
    states = [pipeline.create_state(StreamConfig(width=size, height=size), {"prompt": f"stream {i}", "seed": i, "num_inference_steps": 1, **(params or {})})
              for i in range(sessions)]
    frames = [torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8) for _ in range(sessions)]
    step = lambda: [o.frames.cpu() for o in pipeline.step(states, frames)]  # noqa: E731
    seconds = median(measure(step, iterations=scale.frames, warmup=3, device=pipeline.device))
    return round(sessions / seconds, 1)


def row_image_eager(scale: Scale) -> dict[str, Any]:
    from streamgen import load_pipeline  # noqa: PLC0415

    pipeline = load_pipeline(scale.image_model, device=scale.device, **scale.image_spec)
    return {"fps_1": _image_fps(pipeline, scale, 1), "fps_4": _image_fps(pipeline, scale, 4)}


def row_image_steered(scale: Scale) -> dict[str, Any]:
    import numpy as np  # noqa: PLC0415

    from streamgen import load_pipeline  # noqa: PLC0415
    from streamgen.control_params import ReferenceImage  # noqa: PLC0415

    pipeline = load_pipeline(scale.image_model, device=scale.device, **scale.image_spec)
    plain = _image_fps(pipeline, scale, 1)
    pipeline.attach_controlnet("tiny")
    pipeline.attach_ip_adapter("tiny")
    style = ReferenceImage.from_pixels(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    steering = {
        "controlnets": [{"model": "tiny", "preprocessor": "canny", "conditioning_scale": 0.8}],
        "ip_adapter_image": style, "ip_adapter_scale": 0.6,
    }
    steered = _image_fps(pipeline, scale, 1, steering)
    return {"fps_1": steered, "fps_plain": plain, "x_plain": round(plain / steered, 2)}


def row_image_compile(scale: Scale) -> dict[str, Any]:
    import tempfile  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from streamgen import load_pipeline  # noqa: PLC0415
    from streamgen.config import StreamConfig  # noqa: PLC0415
    from streamgen.runtime import accelerate  # noqa: PLC0415

    pipeline = load_pipeline(scale.image_model, device=scale.device, **scale.image_spec)
    with tempfile.TemporaryDirectory() as engines:
        started = time.perf_counter()
        accelerate(pipeline.model, "compile", cache_dir=engines)
        size = scale.image_size
        state = pipeline.create_state(StreamConfig(width=size, height=size), {"num_inference_steps": 1})
        pipeline.step([state], [torch.zeros(1, size, size, 3, dtype=torch.uint8)])[0].frames.cpu()
        first = time.perf_counter() - started
        return {"first_frame_s": round(first, 1), "fps_1": _image_fps(pipeline, scale, 1), "fps_4": _image_fps(pipeline, scale, 4)}


def row_video(scale: Scale) -> dict[str, Any]:
    import torch  # noqa: PLC0415

    from bench.video import Case, run_case  # noqa: PLC0415
    from streamgen.pipeline.video_loading import load_video_pipeline  # noqa: PLC0415

    started = time.perf_counter()
    pipeline = load_video_pipeline(scale.video_model, device=scale.device, **scale.video_spec)
    load_s = time.perf_counter() - started
    if pipeline.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipeline.device)
    width, height = scale.video_size
    result = run_case(pipeline, Case(scale.video_model, width, height, 1, True), chunks=scale.frames // 4, warmup_chunks=2)
    peak = torch.cuda.max_memory_allocated(pipeline.device) / 2**30 if pipeline.device.type == "cuda" else None
    return {"fps": result["fps"], "first_frame_ms": result["first_frame_ms"], "load_s": round(load_s, 1),
            "peak_gib": None if peak is None else round(peak, 2), "dtype": str(pipeline.dtype).removeprefix("torch.")}


def row_kv_no_sync(scale: Scale) -> dict[str, Any]:
    """One chunk forward (cache planning, attention, commit) must queue no host sync: CUDA's sync debug mode raises on one."""
    import torch  # noqa: PLC0415

    from streamgen.pipeline.video_loading import load_video_pipeline  # noqa: PLC0415

    pipeline = load_video_pipeline(scale.video_model, device=scale.device, **scale.video_spec)
    probe = pipeline.model.timing_probe
    probe()  # lazy initialisation (allocations, first kernels) may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        probe()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return {"host_syncs": 0}


def row_stages(scale: Scale) -> dict[str, Any]:
    import numpy as np  # noqa: PLC0415

    from streamgen import VideoStream  # noqa: PLC0415

    settings = {"width": 64, "height": 64, "prompt": "a lighthouse", "seed": 7, "num_inference_steps": 2}
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(13)]
    devices = ["cuda:0", "cuda:1"] if scale.device == "cuda" else ["cpu", "cpu"]
    one = VideoStream("tiny-video", device=devices[0], model_seed=1, **settings)
    expected = np.stack([o for f in frames for o in one.stream(f)] + one.flush())
    staged = VideoStream("tiny-video", devices=devices, model_seed=1, **settings)
    try:
        started = time.perf_counter()
        got = np.stack([o for f in frames for o in staged.stream(f)] + staged.flush())
        seconds = time.perf_counter() - started
    finally:
        staged.pipeline.model.stages.close()
    if got.shape != expected.shape:
        raise AssertionError(f"stages gave {got.shape[0]} frames, one process {expected.shape[0]}")
    return {"max_diff": int(np.abs(got.astype(int) - expected.astype(int)).max()), "seconds": round(seconds, 2)}


ROW_FUNCTIONS: dict[str, Callable[[Scale], dict[str, Any]]] = {
    "image-eager": row_image_eager,
    "image-compile": row_image_compile,
    "image-steered": row_image_steered,
    "video": row_video,
    "kv-no-sync": row_kv_no_sync,
    "stages": row_stages,
}


# ------------------------------------------------------------------- running
def run_row(name: str, rehearse: bool) -> dict[str, Any]:
    """One row in this process (``--row``): GPU sizes, or the tiny rehearsal's."""
    started = time.perf_counter()
    result = ROW_FUNCTIONS[name](TINY if rehearse else GPU)
    result["row_s"] = round(time.perf_counter() - started, 1)
    return result


def plan(gpus: int, cuda: bool, rehearse: bool) -> list[tuple[Row, str | None]]:
    """Every row with the reason it will not run here (None: it runs)."""
    planned = []
    for row in ROWS:
        reason = None
        if rehearse and not row.rehearse:
            reason = "not rehearsed on the CPU (compiling the UNet there takes minutes); runs on the GPU"
        elif rehearse and row.cuda_only:
            reason = "CUDA only (sync debug mode)"
        elif not rehearse and not cuda:
            reason = "no CUDA device"
        elif not rehearse and gpus < row.gpus:
            reason = f"needs {row.gpus} GPUs, this machine has {gpus}"
        planned.append((row, reason))
    return planned


def run_plan(planned: list[tuple[Row, str | None]], rehearse: bool, budget_s: float) -> list[dict[str, Any]]:
    """Each row in a new process with a time limit; a rehearsal's see only the GPU machine's packages (gpu_plan.simulated_site)."""
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="streamgen-gpu-site-") as site:
        prefix, env = [sys.executable], {**os.environ, "PYTHONUNBUFFERED": "1"}
        if rehearse:
            from bench.gpu_plan import simulated_site  # noqa: PLC0415

            simulated_site(Path(site), "quick")
            prefix = [sys.executable, "-S"]
            env["PYTHONPATH"] = os.pathsep.join([site, str(ROOT)])
        return _run_rows(planned, prefix, env, rehearse, budget_s)


def _run_rows(planned: list[tuple[Row, str | None]], prefix: list[str], env: dict[str, str], rehearse: bool, budget_s: float) -> list[dict[str, Any]]:
    results = []
    deadline = time.monotonic() + budget_s
    for row, reason in planned:
        entry: dict[str, Any] = {"row": row.name, "what": row.title}
        left = deadline - time.monotonic()
        if reason is None and left < 5:
            reason = f"the {budget_s:.0f} s budget ran out"
        if reason is not None:
            results.append({**entry, "status": "skipped", "note": reason})
            print(f"{row.name}: skipped ({reason})", file=sys.stderr, flush=True)
            continue
        limit = min(row.timeout_s * (3 if rehearse else 1), left)
        command = [*prefix, "-m", "bench.gpu_quick", "--row", row.name, *(["--rehearse"] if rehearse else [])]
        print(f"{row.name}: running (limit {limit:.0f} s) ...", file=sys.stderr, flush=True)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=limit, cwd=ROOT, env=env)
        except subprocess.TimeoutExpired:
            results.append({**entry, "status": "timeout", "note": f"did not finish in {limit:.0f} s"})
            continue
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            results.append({**entry, "status": "failed", "note": " | ".join(lines[-3:])[-400:]})
            continue
        results.append({**entry, "status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])})
    return results


COLUMNS = [
    ("row", "row"), ("status", "status"), ("fps_1", "fps 1"), ("fps_4", "fps 4"), ("fps_plain", "fps plain"), ("x_plain", "x plain"),
    ("fps", "fps"), ("first_frame_s", "1st frame s"),
    ("first_frame_ms", "1st frame ms"), ("peak_gib", "peak GiB"), ("max_diff", "max diff"), ("row_s", "row s"), ("note", "note"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_quick", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rehearse", action="store_true", help="tiny sizes on this CPU, imports limited to the GPU machine's (what CI runs)")
    parser.add_argument("--plan", action="store_true", help="print the plan and exit")
    parser.add_argument("--row", choices=sorted(ROW_FUNCTIONS), help="run one row in this process and print its JSON (used by the runner)")
    parser.add_argument("--budget", type=float, default=QUICK_BUDGET_S, help=f"seconds for all rows (default {QUICK_BUDGET_S})")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu-quick.json")
    args = parser.parse_args(argv)
    if args.row:
        print(json.dumps(run_row(args.row, args.rehearse)))
        return 0
    import torch  # noqa: PLC0415

    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    planned = plan(gpus, cuda, args.rehearse)
    for row, reason in planned:
        print(f"  {row.name:<14} {row.title}" + (f"  [skipped: {reason}]" if reason else f"  [limit {row.timeout_s} s]"))
    if args.plan:
        return 0
    from bench.common import machine, table, write_json  # noqa: PLC0415

    results = run_plan(planned, args.rehearse, args.budget * (3 if args.rehearse else 1))
    print(table(results, COLUMNS))
    info = machine("cuda" if cuda else None)
    report = {"benchmark": "gpu-quick", "rehearsal": args.rehearse, "machine": info, "results": results}
    print(f"wrote {write_json('gpu-quick', report, args.out)}")
    failed = [r["row"] for r in results if r["status"] in ("failed", "timeout")]
    return 1 if args.rehearse and failed else 0


if __name__ == "__main__":
    sys.exit(main())
