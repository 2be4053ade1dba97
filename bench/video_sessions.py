"""``python -m bench.video_sessions``: N video sessions in one batched step vs the same N stepped one after another.

``VideoPipeline.step(states, frames)`` runs the chunks of all the sessions
it is given in shared DiT forwards and shared VAE calls (each session's rows
still attend to its own KV cache). This benchmark measures what that buys:
for each case it streams the same synthetic clips through N fresh sessions
twice,

- ``batched``: one ``step`` call per chunk for all N sessions;
- ``one by one``: one ``step`` call per session per chunk (what a server
  without session batching does),

and reports, over the timed calls (after warm-up):

- ``fps``: output frames per second of all sessions together;
- ``dit_calls`` / ``vae_calls``: DiT forwards and VAE encode+decode calls per
  chunk of one session, ``rows``: rows per DiT forward;
- ``speedup``: batched fps / one-by-one fps.

Sessions differ in prompt and seed. Modes: ``batch`` (all stream batch),
``sequential`` (all sequential), ``mixed`` (alternating). Models:
``tiny-video`` (the preset) and ``small-video``: tiny-video's VAE with a
DiT of 8 blocks of width 256 (random weights built in code, no download),
so that the DiT takes a share of the time closer to a real model's. On
CUDA ``--wan`` adds ``wan-causal-1.3b`` with dummy bf16 weights.

On a CPU, batching cannot make the arithmetic cheaper; what it saves is the
per-call cost (Python, dispatch, small-kernel inefficiency), so the speedup
shrinks as the model grows. On a GPU, where one session's rows leave most
of the device idle, larger forwards are where throughput comes from. Each
way runs ``--repeats`` times, alternating, and the fastest run is kept (the
numbers of a shared machine are noisy).

Prints a table and writes ``bench/out/video_sessions.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from streamgen.models.video.stream_vae import StreamingWanVAE
from streamgen.models.loading.components import place
from streamgen.models.video.tiny_video import ByteTokenizer, seeded_build, tiny_umt5_encoder, tiny_wan_vae
from streamgen.models.video.tiny_video_dit import tiny_causal_wan
from streamgen.models.video.video_model import VideoModel
from streamgen.pipeline.video_loading import load_video_pipeline
from streamgen.pipeline.video import VideoPipeline

from .common import CallTimer, describe_machine, machine, markdown_table, ms, percentile, sync, table, write_json
from .video import parse_size, synthetic_clip

COLUMNS = [
    ("model", "model"),
    ("size", "size"),
    ("sessions", "sessions"),
    ("mode", "mode"),
    ("steps", "steps"),
    ("way", "way"),
    ("fps", "fps (all)"),
    ("call_ms_p50", "chunk ms p50"),
    ("dit_calls", "DiT calls/chunk"),
    ("rows", "rows/DiT call"),
    ("vae_calls", "VAE calls/chunk"),
    ("speedup", "speedup"),
]
WAYS = ("batched", "one by one")
MODES = ("batch", "sequential", "mixed")

# small-video: tiny-video with a DiT wide and deep enough for its matmuls, not the Python around them, to count.
SMALL_DIT = {"num_attention_heads": 4, "attention_head_dim": 64, "ffn_dim": 1024, "num_layers": 8}


@dataclass(frozen=True)
class Case:
    model: str
    width: int
    height: int
    steps: int
    sessions: int
    mode: str

    @property
    def size(self) -> str:
        return f"{self.height}x{self.width}"

    def settings(self, session: int) -> dict[str, Any]:
        stream_batch = self.mode == "batch" or (self.mode == "mixed" and session % 2 == 0)
        return {"width": self.width, "height": self.height, "num_inference_steps": self.steps,
                "use_denoising_batch": stream_batch, "prompt": f"style number {session}", "seed": 10 + session}


def build_small_video_model(device: str = "cpu", dtype: torch.dtype = torch.float32) -> VideoModel:
    """``small-video`` (see module docstring): random weights, deterministic, built in code."""
    transformer = tiny_causal_wan(seed=0, device=device, dtype=dtype, **SMALL_DIT)
    vae, text_encoder = seeded_build(1, lambda: (tiny_wan_vae(), tiny_umt5_encoder(transformer.text_dim)))
    return VideoModel(
        name="small-video",
        transformer=transformer,
        vae=StreamingWanVAE(place(vae, device, dtype)),
        text_encoder=place(text_encoder, device, dtype),
        tokenizer=ByteTokenizer(),
        text_length=ByteTokenizer().model_max_length,
        default_size=(128, 128),
    )


def load_model(name: str, device: str) -> VideoPipeline:
    if name == "small-video":
        return VideoPipeline(build_small_video_model(device))
    if name == "wan-causal-1.3b":
        return load_video_pipeline(name, weights="dummy", device=device, dtype="bfloat16")
    return load_video_pipeline(name, device=device, dtype="float32")


def run_case(pipeline: VideoPipeline, case: Case, way: str, chunks: int, warmup: int) -> dict[str, Any]:
    """Stream ``warmup + chunks`` chunks through ``case.sessions`` fresh sessions, stepped ``way``."""
    states = [pipeline.create_state(None, case.settings(i)) for i in range(case.sessions)]
    clip = synthetic_clip(1 + 4 * (warmup + chunks), case.width, case.height, pipeline.device)
    clips = [clip.roll(shifts=17 * i, dims=2) for i in range(case.sessions)]
    calls = [[c[:1]] + list(c[1:].split(4)) for c in clips]
    timer = CallTimer(pipeline.device)
    with instrumented(pipeline.model, timer):
        seconds, frames, call_times = _stream(pipeline, states, calls, way == "batched", warmup, timer)
    dit = timer.by_label.get("dit", [0.0, 0, 0])
    vae_calls = sum(timer.by_label.get(label, [0.0, 0, 0])[1] for label in ("vae_encode", "vae_decode"))
    session_chunks = len(call_times) * case.sessions  # every timed call brings one chunk per session
    return {
        **asdict(case),
        "size": case.size,
        "way": way,
        "fps": round(frames / seconds, 2) if seconds else None,
        "call_ms_p50": ms(percentile(call_times, 50)),
        "dit_calls": round(dit[1] / session_chunks, 2),
        "rows": round(dit[2] / dit[1], 2) if dit[1] else None,
        "vae_calls": round(vae_calls / session_chunks, 2),
        "dit_pct": round(100 * dit[0] / seconds, 1) if seconds else None,
        "frames_timed": frames,
        "seconds_timed": round(seconds, 3),
    }


class instrumented:
    """Count and time the model's DiT forwards and VAE calls; puts the model back afterwards."""

    def __init__(self, model: VideoModel, timer: CallTimer) -> None:
        self.model, self.timer = model, timer

    def __enter__(self) -> None:
        model, timer = self.model, self.timer
        self.forward = model.forward_chunks
        model.forward_chunks = timer.wrap(self.forward, "dit")
        model.vae.encode = timer.wrap(model.vae.encode, "vae_encode")
        model.vae.decode = timer.wrap(model.vae.decode, "vae_decode")

    def __exit__(self, *_: Any) -> None:
        self.model.forward_chunks = self.forward
        del self.model.vae.encode, self.model.vae.decode  # back to the class methods


def _stream(
    pipeline: VideoPipeline, states: list[Any], calls: list[list[torch.Tensor]], batched: bool, warmup: int, timer: CallTimer
) -> tuple[float, int, list[float]]:
    """Feed chunk after chunk; returns (timed seconds, timed output frames, seconds of each timed chunk call).

    Call 0 brings each session's first frame; calls 1..warmup are warm-up chunks; the rest are timed.
    """
    seconds, frames, call_times = 0.0, 0, []
    for index in range(len(calls[0])):
        if index == warmup + 1:
            timer.reset()
        inputs = [c[index] for c in calls]
        sync(pipeline.device)
        start = time.perf_counter()
        if batched:
            outputs = pipeline.step(states, inputs)
        else:
            outputs = [pipeline.step([state], [frames_in])[0] for state, frames_in in zip(states, inputs)]
        sync(pipeline.device)
        elapsed = time.perf_counter() - start
        if index > warmup:
            seconds += elapsed
            frames += sum(out.frames.shape[0] for out in outputs)
            call_times.append(elapsed)
    return seconds, frames, call_times


def fastest_runs(pipeline: VideoPipeline, case: Case, chunks: int, warmup: int, repeats: int) -> list[dict[str, Any]]:
    """Each way ``repeats`` times, alternating ways; the run with the highest fps of each way."""
    best: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for way in WAYS:
            row = run_case(pipeline, case, way, chunks, warmup)
            if way not in best or (row["fps"] or 0) > (best[way]["fps"] or 0):
                best[way] = row
    return [dict(best[way], repeats=repeats) for way in WAYS]


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup`` on each batched row: its fps over the one-by-one fps of the same case."""
    key = lambda r: (r["model"], r["size"], r["sessions"], r["mode"], r["steps"])  # noqa: E731
    by_case = {key(r): r for r in rows if r["way"] == "one by one"}
    for row in rows:
        alone = by_case.get(key(row))
        if row["way"] == "batched" and alone and alone["fps"] and row["fps"]:
            row["speedup"] = round(row["fps"] / alone["fps"], 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.video_sessions", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny-video,small-video", help="tiny-video, small-video (comma separated)")
    parser.add_argument("--size", default="64", help="frame size (HxW or N)")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--modes", default="batch,sequential,mixed", help=f"comma separated, of {', '.join(MODES)}")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps")
    parser.add_argument("--chunks", type=int, default=8, help="timed chunks per session")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way (the fastest is kept)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed chunks first (default: steps + 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--wan", action="store_true", help="also wan-causal-1.3b with dummy bf16 weights (CUDA)")
    parser.add_argument("--wan-size", default="480x832")
    parser.add_argument("--out", default=None, help="JSON path (default bench/out/video_sessions.json)")
    parser.add_argument("--markdown", action="store_true", help="also print the table in Markdown (for RESULTS.md)")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}")
    warmup = args.warmup if args.warmup is not None else args.steps + 1
    width, height = parse_size(args.size)
    plans = [(name, args.device, width, height) for name in args.models.split(",") if name]
    if args.wan:
        wan_width, wan_height = parse_size(args.wan_size)
        plans.append(("wan-causal-1.3b", "cuda", wan_width, wan_height))
    results: list[dict[str, Any]] = []
    for name, device, w, h in plans:
        started = time.perf_counter()
        pipeline = load_model(name, device)
        print(f"{name}: loaded in {time.perf_counter() - started:.1f} s on {pipeline.device} ({pipeline.dtype})", file=sys.stderr)
        for mode in modes:
            case = Case(name, w, h, args.steps, args.sessions, mode)
            pair = fastest_runs(pipeline, case, args.chunks, warmup, args.repeats)
            add_speedups(pair)
            results += pair
            for row in pair:
                print(table([row], COLUMNS).splitlines()[-1], file=sys.stderr, flush=True)
        del pipeline
    info = machine(args.device if args.device != "cpu" else None)
    print(describe_machine(info))
    print(table(results, COLUMNS))
    if args.markdown:
        print(markdown_table(results, COLUMNS))
    report = {"benchmark": "video_sessions", "created": dt.datetime.now(dt.timezone.utc).isoformat(), "machine": info,
              "command": "python -m bench.video_sessions " + " ".join(argv if argv is not None else sys.argv[1:]),
              "chunks": args.chunks, "warmup": warmup, "results": results}
    print(f"wrote {write_json('video_sessions', report, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
