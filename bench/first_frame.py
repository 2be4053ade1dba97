"""``python -m bench.first_frame``: time to the first frame of one backend in THIS (fresh) process, as JSON on stdout.

Run by :mod:`bench.engines` twice per backend in new processes over one
engine cache: the first run is the cold start (nothing cached), the second
the warm start (the engines, ONNX exports or torch.compile artefacts the
first one left). Timed: loading the model, installing the backend, and the
first pipeline step of a stream (which compiles, captures or builds what is
still missing), from a process that has only imported streamgen.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_frame")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--dummy", action="store_true")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--engine-dir", type=Path, required=True)
    parser.add_argument("--no-artifacts", action="store_true", help="compile: ignore stored torch.compile artefacts (inductor's disk cache only)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    import torch  # noqa: PLC0415

    from streamgen import load_pipeline  # noqa: PLC0415
    from streamgen.config import StreamConfig  # noqa: PLC0415
    from streamgen.runtime import accelerate  # noqa: PLC0415
    from streamgen.runtime.compile_artifacts import save_compile_artifacts  # noqa: PLC0415

    if args.no_artifacts:
        from streamgen.runtime import compile_backend  # noqa: PLC0415

        compile_backend.load_compile_artifacts = lambda model, cache: False
    imported = time.perf_counter()
    pipeline = load_pipeline(args.model, weights="dummy" if args.dummy else "pretrained", device=args.device)
    loaded = time.perf_counter()
    accelerate(pipeline.model, args.backend, cache_dir=args.engine_dir)
    accelerated = time.perf_counter()
    state = pipeline.create_state(StreamConfig(width=args.size, height=args.size), {"prompt": "a benchmark"})
    frame = torch.randint(0, 256, (1, args.size, args.size, 3), dtype=torch.uint8)
    pipeline.step([state], [frame])
    if pipeline.model.device.type == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter()
    if not args.no_artifacts:
        save_compile_artifacts(pipeline.model)  # what a server saves after its warm-up (not timed)
    print(json.dumps({
        "import_s": round(imported - started, 2),
        "load_s": round(loaded - imported, 2),
        "accelerate_s": round(accelerated - loaded, 2),
        "first_step_s": round(first - accelerated, 2),
        "first_frame_s": round(first - imported, 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
