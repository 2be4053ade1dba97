"""``python -m bench.image``: speed of the image stream pipeline (``ImagePipeline.step``).

For the ``tiny`` model at each ``--sizes`` resolution (default 256 and 512)
it measures three comparisons, img2img, 1 frame per call:

- ``steps``:    stream batch (all slots in one UNet call) vs. sequential steps
                (one UNet call per slot), ``--steps`` denoising steps, cfg ``self``;
- ``cfg``:      each residual-CFG mode (``none``, ``self``, ``initialize``) vs. ``full``;
- ``sessions``: ``--sessions`` streams advanced by ONE batched ``step`` call vs.
                the same streams stepped one after another.

Every configuration reports frames per second (all sessions together) and
per-frame latency p50/p95. A frame's latency is the time from the start of
the round its input arrived in until its output is on the host: the whole
``step`` call for one session or a batched step; for sessions stepped one
after another, the i-th session waits for the i-1 before it. With stream
batch the output also lags its input by ``lag`` calls (n - 1), which this
time does not include.

It also times every model call (UNet, VAE encode, VAE decode, text encoders:
the replaceable forwards of :class:`~streamgen.models.ImageModel`, with CUDA
synchronised around each) and reports the per-frame time spent OUTSIDE them:
streamgen's own overhead (input conversion, scheduling, blending, output
conversion). Target: at most 10 % of the frame time at 256x256; when a
256x256 configuration misses it (or with ``--profile``), the stream-batch
configuration is profiled with cProfile and the top functions outside the
model are reported.

Configurations run round-robin in ``--repeats`` blocks so that load from
other processes spreads over all of them; fps, the per-frame model and
outside-model times and the outside share are medians over blocks, latency
percentiles are over all frames.

- ``control`` (``--control``, on by default at the first size; a tiny model of
  its own, with the tiny ControlNet and IP-Adapter loaded): plain img2img,
  one ControlNet with each preprocessor, two ControlNets, the IP-Adapter on
  and off; each reports its frame time as a multiple of plain img2img's in
  the same run (``x plain``); their outside-model time includes the
  preprocessors.

``--dummy-sd-turbo`` adds the SD-turbo architecture with random fp16 weights
at 512x512 (CUDA only; skipped with a message otherwise).

Prints a table and writes ``bench/out/image.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import contextlib
import datetime as dt
import pstats
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamgen.config import StreamConfig
from streamgen.control_params import ReferenceImage
from streamgen.models.loading.device import resolve_device
from streamgen.models.image.image_model import ImageModel
from streamgen.params import parse_params
from streamgen.pipeline import ImagePipeline, ImageStreamState
from streamgen.stream import load_pipeline

from .common import OUT_DIR, CallTimer, describe_machine, machine, markdown_table, median, ms, percentile, sync, table, write_json

OUTSIDE_TARGET_PCT = 10.0
TARGET_SIZE = 256
MODEL_LABELS = ("unet", "controlnet", "vae_encode", "vae_decode", "text_encoder")


@dataclass(frozen=True)
class Case:
    """One configuration: what streams to create and how to step them."""

    size: int
    cfg_type: str = "self"
    steps: int = 2
    denoising_batch: bool = True
    sessions: int = 1
    batched_sessions: bool = True
    guidance_scale: float = 1.2
    controlnets: tuple[str, ...] = ()  # one tiny ControlNet per entry, read through this preprocessor
    ip_adapter: bool = False

    @property
    def label(self) -> str:
        mode = "stream batch" if self.denoising_batch else "sequential"
        text = f"{mode}, {self.steps} step{'s' if self.steps != 1 else ''}, cfg {self.cfg_type}"
        if self.sessions > 1:
            text += f", {self.sessions} sessions " + ("in one step" if self.batched_sessions else "one by one")
        if self.controlnets:
            text += f", {len(self.controlnets)} ControlNet{'s' if len(self.controlnets) > 1 else ''} ({' + '.join(self.controlnets)})"
        if self.ip_adapter:
            text += ", IP-Adapter"
        return text

    def steering(self) -> dict[str, Any]:
        """The stream parameters that attach this case's ControlNets and reference image."""
        out: dict[str, Any] = {}
        if self.controlnets:
            out["controlnets"] = [
                {"model": "tiny", "preprocessor": p, **({"preprocessor_settings": {"model": "tiny"}} if p in ("depth", "pose") else {})}
                for p in self.controlnets
            ]
        if self.ip_adapter:
            out["ip_adapter_image"] = ReferenceImage.from_pixels(input_frames(64, 1, seed=99)[0][0])
            out["ip_adapter_scale"] = 0.6
        return out


@dataclass(frozen=True)
class Settings:
    device: str = "auto"
    sizes: tuple[int, ...] = (256, 512)
    frames: int = 48
    warmup: int = 4
    repeats: int = 3
    steps: int = 2
    sessions: int = 4
    quick: bool = False
    control: bool = True
    control_only: bool = False
    dummy_sd_turbo: bool = False
    profile: bool = False
    profile_frames: int = 30
    markdown: bool = False
    out: Path = OUT_DIR / "image.json"


@dataclass
class Tally:
    """What one configuration measured so far."""

    latencies: list[float] = field(default_factory=list)  # per output frame, seconds
    block_fps: list[float] = field(default_factory=list)
    block_outside_pct: list[float] = field(default_factory=list)
    block_frame_s: list[float] = field(default_factory=list)  # wall seconds per output frame
    block_model_s: list[dict[str, float]] = field(default_factory=list)  # label -> model seconds per output frame
    frames: int = 0
    seconds: float = 0.0
    model: dict[str, list[float]] = field(default_factory=dict)  # label -> [seconds, calls, rows]


# ----------------------------------------------------------------- the model
@contextlib.contextmanager
def instrumented(model: ImageModel, timer: CallTimer) -> Iterator[CallTimer]:
    """Time every model call of ``model`` with ``timer`` while inside the block (restored after)."""
    saved = (model.unet_forward, model.vae_encode_forward, model.vae_decode_forward, model.unet_steered_forward, model.controlnet_forward)
    encoders = [(e, e.__dict__.get("forward")) for e in model.text_encoders]
    model.unet_forward = timer.wrap(model.unet_forward, "unet")
    model.unet_steered_forward = timer.wrap(model.unet_steered_forward, "unet")
    model.controlnet_forward = timer.wrap(model.controlnet_forward, "controlnet")
    model.vae_encode_forward = timer.wrap(model.vae_encode_forward, "vae_encode")
    model.vae_decode_forward = timer.wrap(model.vae_decode_forward, "vae_decode")
    for encoder, _ in encoders:
        encoder.forward = timer.wrap(encoder.forward, "text_encoder")
    try:
        yield timer
    finally:
        model.unet_forward, model.vae_encode_forward, model.vae_decode_forward, model.unet_steered_forward, model.controlnet_forward = saved
        for encoder, own in encoders:
            if own is None:
                del encoder.forward
            else:
                encoder.forward = own


def input_frames(size: int, count: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """``count`` different (1, size, size, 3) uint8 frames on the host, as a decoder would hand them over."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (size + 8 * count, size + 8 * count, 3), dtype=torch.uint8, generator=generator)
    return [base[8 * i : 8 * i + size, 8 * i : 8 * i + size].contiguous()[None] for i in range(count)]


# ---------------------------------------------------------------- one config
class Runner:
    """The streams of one configuration and how to advance them by one round."""

    def __init__(self, pipeline: ImagePipeline, case: Case) -> None:
        self.pipeline, self.case = pipeline, case
        config = StreamConfig(width=case.size, height=case.size, use_denoising_batch=case.denoising_batch)
        self.states: list[ImageStreamState] = [
            pipeline.create_state(
                config,
                parse_params(
                    {
                        "prompt": f"benchmark stream {i}",
                        "seed": i + 1,
                        "cfg_type": case.cfg_type,
                        "num_inference_steps": case.steps,
                        "guidance_scale": case.guidance_scale,
                        **case.steering(),
                    }
                ),
            )
            for i in range(case.sessions)
        ]
        self.frames = input_frames(case.size)
        self.round = 0

    def step(self) -> list[float]:
        """One round: every session gets a new frame; returns each output's latency (seconds)."""
        pipeline, device = self.pipeline, self.pipeline.device
        inputs = [self.frames[(self.round + i) % len(self.frames)] for i in range(len(self.states))]
        self.round += 1
        sync(device)
        start = time.perf_counter()
        if self.case.batched_sessions:
            outputs = pipeline.step(self.states, inputs)
            [o.frames.cpu() for o in outputs]  # the server needs the frames on the host
            return [time.perf_counter() - start] * len(outputs)
        latencies = []
        for state, frame in zip(self.states, inputs):
            (output,) = pipeline.step([state], [frame])
            output.frames.cpu()
            latencies.append(time.perf_counter() - start)
        return latencies

    @property
    def lag(self) -> int:
        """Calls by which an output trails its input."""
        return self.states[0].num_slots - 1 if self.case.denoising_batch else 0


def run_block(runner: Runner, timer: CallTimer, tally: Tally, frames: int) -> None:
    """About ``frames`` output frames of ``runner`` (whole rounds), added to ``tally``."""
    rounds = max(1, -(-frames // runner.case.sessions))
    timer.reset()
    start = time.perf_counter()
    produced = 0
    for _ in range(rounds):
        latencies = runner.step()
        tally.latencies += latencies
        produced += len(latencies)
    elapsed = time.perf_counter() - start
    tally.frames += produced
    tally.seconds += elapsed
    tally.block_fps.append(produced / elapsed)
    tally.block_outside_pct.append(100.0 * max(0.0, elapsed - timer.seconds) / elapsed)
    tally.block_frame_s.append(elapsed / produced)
    tally.block_model_s.append({label: timer.by_label.get(label, [0.0])[0] / produced for label in MODEL_LABELS})
    for label, (seconds, calls, rows) in timer.by_label.items():
        entry = tally.model.setdefault(label, [0.0, 0, 0])
        entry[0] += seconds
        entry[1] += calls
        entry[2] += rows


def summarize(model_name: str, group: str, case: Case, runner: Runner, tally: Tally) -> dict[str, Any]:
    frames = tally.frames
    # medians over blocks: a block slowed down by another process does not drag the numbers
    per_frame = {label: median(b[label] for b in tally.block_model_s) or 0.0 for label in MODEL_LABELS}
    model_seconds = median(sum(b.values()) for b in tally.block_model_s) or 0.0
    frame_seconds = median(tally.block_frame_s) or 0.0
    outside_seconds = median(f - sum(b.values()) for f, b in zip(tally.block_frame_s, tally.block_model_s)) or 0.0
    unet = tally.model.get("unet", [0.0, 0, 0])
    fps = median(tally.block_fps)
    return {
        "group": group,
        "model": model_name,
        "size": f"{case.size}x{case.size}",
        "config": case.label,
        **{k: v for k, v in asdict(case).items() if k != "size"},
        "width": case.size,
        "height": case.size,
        "lag_calls": runner.lag,
        "frames": frames,
        "blocks": len(tally.block_fps),
        "fps": round(fps, 2) if fps is not None else None,
        "latency_ms_p50": ms(percentile(tally.latencies, 50)),
        "latency_ms_p95": ms(percentile(tally.latencies, 95)),
        "frame_ms": ms(frame_seconds, 2),
        "model_ms_per_frame": ms(model_seconds, 2),
        "model_ms_per_frame_by_call": {label: ms(seconds, 3) for label, seconds in per_frame.items()},
        "unet_calls_per_frame": round(unet[1] / frames, 2),
        "unet_rows_per_frame": round(unet[2] / frames, 2),
        "outside_model_ms_per_frame": ms(max(0.0, outside_seconds), 2),
        "outside_model_pct": round(median(tally.block_outside_pct) or 0.0, 1),
    }


# ------------------------------------------------------------------ the plan
def tiny_plan(settings: Settings) -> list[tuple[str, Case]]:
    """(group, case) pairs; a case shared by several groups runs once."""
    plan: list[tuple[str, Case]] = []
    steps, n = settings.steps, settings.sessions
    for size in settings.sizes:
        plan += [("steps", Case(size, steps=steps)), ("steps", Case(size, steps=steps, denoising_batch=False))]
        plan += [("cfg", Case(size, cfg_type=mode, steps=steps)) for mode in ("none", "self", "initialize", "full")]
        plan += [
            ("sessions", Case(size, steps=steps, sessions=n)),
            ("sessions", Case(size, steps=steps, sessions=n, batched_sessions=False)),
        ]
    return plan


CONTROL_PREPROCESSORS = ("passthrough", "canny", "depth", "pose", "soft_edge", "lineart", "blur", "tile", "feedback")


def control_plan(size: int, steps: int) -> list[tuple[str, Case]]:
    """Plain img2img, one ControlNet per preprocessor, two ControlNets, the IP-Adapter (same model, same run)."""
    plan = [("control", Case(size, steps=steps))]
    plan += [("control", Case(size, steps=steps, controlnets=(p,))) for p in CONTROL_PREPROCESSORS]
    plan += [("control", Case(size, steps=steps, controlnets=("canny", "depth")))]
    plan += [("control", Case(size, steps=steps, ip_adapter=True)), ("control", Case(size, steps=steps, controlnets=("canny",), ip_adapter=True))]
    return plan


def control_pipeline(device: torch.device) -> ImagePipeline:
    """A tiny model of its own with the tiny ControlNet, IP-Adapter and estimators loaded (the adapter changes its UNet)."""
    pipeline = load_pipeline("tiny", device=str(device), dtype="float32")
    pipeline.attach_controlnet("tiny")
    pipeline.attach_ip_adapter("tiny")
    for kind in ("depth", "pose"):
        pipeline.load_estimator(kind, "tiny")
    return pipeline


def add_cost_ratios(results: list[dict[str, Any]]) -> None:
    """``x_plain``: each control row's frame time over plain img2img's (the first control row), same model and run."""
    rows = [r for r in results if r["group"] == "control"]
    if not rows or not rows[0]["frame_ms"]:
        return
    plain = rows[0]["frame_ms"]
    for row in rows:
        row["x_plain"] = round(row["frame_ms"] / plain, 2) if row["frame_ms"] else None


def sd_turbo_plan(settings: Settings) -> list[tuple[str, Case]]:
    """The same comparisons at 512x512, plus the preset's own defaults (1 step, no CFG)."""
    plan = tiny_plan(Settings(sizes=(512,), steps=settings.steps, sessions=settings.sessions))
    return [("preset defaults", Case(512, cfg_type="none", steps=1, guidance_scale=1.0))] + plan


def run_plan(pipeline: ImagePipeline, model_name: str, plan: list[tuple[str, Case]], settings: Settings) -> list[dict[str, Any]]:
    """Warm every case up, then measure them round-robin in ``settings.repeats`` blocks."""
    cases = list(dict.fromkeys(case for _, case in plan))
    timer = CallTimer(pipeline.device)
    with instrumented(pipeline.model, timer):
        runners: dict[Case, Runner] = {}
        for case in cases:
            print(f"[{model_name}] {case.size}x{case.size} {case.label}: warming up", file=sys.stderr, flush=True)
            runners[case] = runner = Runner(pipeline, case)
            for _ in range(settings.warmup):
                runner.step()
        tallies = {case: Tally() for case in cases}
        per_block = max(1, settings.frames // settings.repeats)
        for block in range(settings.repeats):
            for case in cases:
                print(f"[{model_name}] block {block + 1}/{settings.repeats} {case.size}x{case.size} {case.label}", file=sys.stderr, flush=True)
                run_block(runners[case], timer, tallies[case], per_block)
    return [summarize(model_name, group, case, runners[case], tallies[case]) for group, case in plan]


# ------------------------------------------------------------------- profile
def profile_case(pipeline: ImagePipeline, case: Case, frames: int, warmup: int, top: int = 25) -> dict[str, Any]:
    """cProfile ``frames`` rounds of ``case``; the functions with the most own time, per frame."""
    runner = Runner(pipeline, case)
    for _ in range(warmup):
        runner.step()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(frames):
        runner.step()
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{_short(filename)}:{line}({name})",
                "calls_per_frame": round(calls / frames, 2),
                "own_ms_per_frame": round(1000 * own / frames, 3),
                "cumulative_ms_per_frame": round(1000 * cumulative / frames, 3),
            }
        )
    rows.sort(key=lambda r: r["own_ms_per_frame"], reverse=True)
    streamgen = sorted((r for r in rows if "streamgen/" in r["function"]), key=lambda r: r["cumulative_ms_per_frame"], reverse=True)
    return {"case": case.label, "size": f"{case.size}x{case.size}", "frames": frames, "top_own_time": rows[:top], "streamgen_cumulative": streamgen[:top]}


def _short(filename: str) -> str:
    for marker in ("site-packages/", "streamgen/", "bench/"):
        if marker in filename:
            return (marker if marker != "site-packages/" else "") + filename.split(marker, 1)[1]
    return filename


# -------------------------------------------------------------------- output
COLUMNS = [
    ("model", "model"), ("size", "size"), ("group", "group"), ("config", "config"), ("fps", "fps"),
    ("latency_ms_p50", "p50 ms"), ("latency_ms_p95", "p95 ms"), ("lag_calls", "lag"),
    ("unet_rows_per_frame", "UNet rows/frame"), ("model_ms_per_frame", "model ms/frame"),
    ("outside_model_ms_per_frame", "outside ms/frame"), ("outside_model_pct", "outside %"), ("x_plain", "x plain"),
]
PROFILE_COLUMNS = [("own_ms_per_frame", "own ms/frame"), ("cumulative_ms_per_frame", "cum ms/frame"), ("calls_per_frame", "calls/frame"), ("function", "function")]


GROUP_TITLES = {
    "preset defaults": "Preset defaults",
    "steps": "Stream batch vs. sequential steps",
    "cfg": "Residual CFG modes vs. full",
    "sessions": "Sessions batched in one step vs. one after another",
    "control": "ControlNets, preprocessors and the IP-Adapter vs. plain img2img (x plain: frame time over plain's)",
}
MD_COLUMNS = [
    ("config", "config"), ("fps", "fps"), ("latency_ms_p50", "p50 ms"), ("latency_ms_p95", "p95 ms"), ("lag_calls", "lag (calls)"),
    ("unet_calls_per_frame", "UNet calls/frame"), ("unet_rows_per_frame", "UNet rows/frame"), ("model_ms_per_frame", "model ms/frame"),
    ("outside_model_ms_per_frame", "outside ms/frame"), ("outside_model_pct", "outside %"), ("x_plain", "x plain"),
]


def markdown(report: dict[str, Any]) -> str:
    """The report's results as Markdown: one table per model, size and comparison."""
    parts = []
    results = report["results"]
    for model, size in dict.fromkeys((r["model"], r["size"]) for r in results):
        for group, title in GROUP_TITLES.items():
            rows = [r for r in results if r["model"] == model and r["size"] == size and r["group"] == group]
            if rows:
                parts.append(f"### {model}, {size}: {title}\n\n{markdown_table(rows, MD_COLUMNS)}")
    return "\n\n".join(parts) + "\n"


def target_check(results: list[dict[str, Any]]) -> dict[str, Any]:
    at_target = [r for r in results if r["model"] == "tiny" and r["width"] == TARGET_SIZE]
    worst = max((r["outside_model_pct"] for r in at_target), default=None)
    return {
        "size": f"{TARGET_SIZE}x{TARGET_SIZE}",
        "outside_model_pct_max_allowed": OUTSIDE_TARGET_PCT,
        "outside_model_pct_worst": worst,
        "met": None if worst is None else worst <= OUTSIDE_TARGET_PCT,
    }


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.image", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--sizes", default=None, help="comma-separated square sizes for the tiny model (default 256,512; 64 with --quick)")
    parser.add_argument("--frames", type=int, default=None, help="measured output frames per configuration (default 48; 4 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds per configuration first (default 4; 1 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="round-robin blocks the frames are split into (default 3; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps (slots) per frame (default 2)")
    parser.add_argument("--sessions", type=int, default=4, help="sessions in the multi-session comparison (default 4)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one configuration (stream batch, cfg self), few frames")
    parser.add_argument("--no-control", dest="control", action="store_false", help="leave out the control rows (ControlNets, preprocessors, IP-Adapter)")
    parser.add_argument("--control-only", action="store_true", help="only the control rows (at the first --sizes size)")
    parser.add_argument("--dummy-sd-turbo", action="store_true", help="also the sd-turbo architecture with dummy fp16 weights at 512x512 (CUDA only)")
    parser.add_argument("--profile", action="store_true", help="cProfile the 256x256 stream-batch configuration even when the target is met")
    parser.add_argument("--profile-frames", type=int, default=30, help="frames profiled (default 30)")
    parser.add_argument("--markdown", action="store_true", help="also print the results as Markdown tables (for bench/RESULTS.md)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "image.json", help="JSON output (default bench/out/image.json)")
    args = parser.parse_args(argv)
    quick = args.quick
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip()) if args.sizes else ((64,) if quick else (256, 512))
    pick = lambda value, normal, fast: value if value is not None else (fast if quick else normal)  # noqa: E731
    return Settings(
        device=args.device, sizes=sizes, frames=pick(args.frames, 48, 4), warmup=pick(args.warmup, 4, 1),
        repeats=pick(args.repeats, 3, 1), steps=args.steps, sessions=args.sessions, quick=quick,
        dummy_sd_turbo=args.dummy_sd_turbo, profile=args.profile, profile_frames=args.profile_frames, markdown=args.markdown, out=args.out,
        control=args.control, control_only=args.control_only,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    device = resolve_device(settings.device)
    info = machine(device)
    print(f"machine: {describe_machine(info)}; device {device}", flush=True)

    tiny = load_pipeline("tiny", device=str(device), dtype="float32")
    plan = [("steps", Case(settings.sizes[0], steps=settings.steps))] if settings.quick else tiny_plan(settings)
    results = [] if settings.control_only else run_plan(tiny, "tiny", plan, settings)
    if settings.control and not settings.quick:
        steered = control_pipeline(device)
        results += run_plan(steered, "tiny+control", control_plan(settings.sizes[0], settings.steps), settings)
        add_cost_ratios(results)
        del steered

    skipped: list[str] = []
    if settings.dummy_sd_turbo:
        if device.type != "cuda":
            message = f"--dummy-sd-turbo skipped: it needs a CUDA device (this run uses {device})"
            print(message, flush=True)
            skipped.append(message)
        else:
            print("building sd-turbo with dummy fp16 weights ...", file=sys.stderr, flush=True)
            turbo = load_pipeline("sd-turbo", weights="dummy", device=str(device), dtype="float16")
            turbo_plan = sd_turbo_plan(settings)[:1] if settings.quick else sd_turbo_plan(settings)
            results += run_plan(turbo, "sd-turbo (dummy fp16)", turbo_plan, settings)
            del turbo

    target = target_check(results)
    profiles = []
    if not settings.quick and TARGET_SIZE in settings.sizes and (settings.profile or target["met"] is False):
        case = Case(TARGET_SIZE, steps=settings.steps)
        print(f"profiling {case.label} at {TARGET_SIZE}x{TARGET_SIZE} ...", file=sys.stderr, flush=True)
        profiles.append(profile_case(tiny, case, settings.profile_frames, settings.warmup))

    print(table(results, COLUMNS))
    if target["outside_model_pct_worst"] is not None:
        verdict = "met" if target["met"] else "MISSED"
        print(f"outside-model time at {target['size']}: worst {target['outside_model_pct_worst']} % of the frame time "
              f"(target <= {OUTSIDE_TARGET_PCT:g} %): {verdict}")
    for profile in profiles:
        print(f"\nprofile: {profile['case']} at {profile['size']}, own time per frame (top 15)")
        print(table(profile["top_own_time"][:15], PROFILE_COLUMNS))
        print("streamgen functions by cumulative time per frame (top 15)")
        print(table(profile["streamgen_cumulative"][:15], PROFILE_COLUMNS))

    report = {
        "benchmark": "image",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.image " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {**info, "device": str(device)},
        "settings": {**asdict(settings), "out": str(settings.out)},
        "target": target,
        "skipped": skipped,
        "results": results,
        "profiles": profiles,
    }
    if settings.markdown:
        print("\n" + markdown(report))
    path = write_json("image", report, settings.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
