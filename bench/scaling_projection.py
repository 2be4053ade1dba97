"""``python -m bench.scaling_projection``: what 1/2/4/8 pipeline stages would give Wan-1.3B and Wan-14B.

A PROJECTION, NOT A MEASUREMENT. No GPU ran anything here: per-stage costs
are built from published single-GPU figures, the models' widths and stated
assumptions, the block split is chosen by :func:`streamgen.sched.blocks.balanced_split`
and the pipeline is played by the discrete-event simulator
:mod:`bench.stage_sim`. Its numbers are only as good as the inputs
below; ``bench/scaling.py`` feeds the same machinery with *measured*
per-block, fixed and transfer times (:class:`StageInputs`) and compares.

Where every input comes from
----------------------------

Published (StreamDiffusionV2, arXiv 2511.07399; bf16, no TensorRT, H100,
512×512):

- single-H100 fps for 1/2/3/4 denoising steps: Wan-1.3B 26.21 / 24.02 /
  21.51 / 19.43; Wan-14B 18.71 / 13.01 / 10.09 / 8.26. One stream-batch call
  emits one 4-frame chunk, so a call takes ``4 / fps`` seconds.
- "the VAE takes ~30% of the time".
- 4×H100 fps (1.3B: 64.52 / 63.99 / 62.43 / 61.57; 14B: 58.28 / 51.09 /
  38.41 / 31.62) — used only to compare, never as an input.

From the shipped model configs (``streamgen/models/configs/wan-*/transformer/config.json``,
the Wan2.1 diffusers configs; they agree with the published architecture): 1.3B width
1536 = 12 heads × 128, FFN 8960, 30 blocks; 14B width 5120 = 40 heads ×
128, FFN 13824, 40 blocks; text width 4096, 16 latent channels, patch
(1, 2, 2), time-frequency width 256.

Derived here (the code below shows the arithmetic):

- tokens per latent frame: (512/16)² = 1024; a chunk is one latent frame
  (4 video frames); self-attention keys: a 6-frame cache + the chunk =
  7 × 1024; cross-attention over 512 text tokens (Wan's text length), whose
  K/V are cached per prompt.
- FLOPs per block and row (multiply-adds × 2): Q/K/V/O projections 8·T·d²,
  self-attention scores and values 4·T·K·d, cross-attention Q/O
  4·T·d² plus 4·T·L·d, FFN 4·T·d·f. Embedding (patch 64 → d, timestep MLP)
  and head (d → 64) FLOPs likewise. Each block's share of the DiT's time
  per call is its share of these FLOPs.
- DiT time per call = call time − VAE time; per-block time = DiT time ×
  block FLOPs / DiT FLOPs; embedding time goes to rank 0, head time to the
  last rank.
- parameters (bf16, 2 bytes each) per block: 8·d² + 2·d·f + 21·d + f;
  rank 0 also holds the patch, text and time embeddings, the last rank the
  head; so per-rank DiT weights follow from the split.
- bytes sent per micro-batch rank → rank: rows × (1024 tokens × d + 7 × d
  of per-row timestep embedding) × 2; last rank → rank 0: the rows' latents,
  rows × 16 × 64 × 64 × 2.

Assumed (change them with the options; each is a guess, said so):

- the ~30% VAE share is of Wan-1.3B at 1 step (the headline
  configuration); the VAE's time per call is the same for 14B (same VAE,
  same resolution) and for every step count (one chunk in, one out, per
  call); encode : decode = 1 : 2 (the decoder is the heavier half).
- a stage's DiT time is exactly proportional to the FLOPs of its blocks: no
  per-stage launch or Python overhead, every block as efficient as on one
  GPU. The published figures imply low GPU utilisation for 1.3B (see
  ``implied_tflops`` in the JSON), which suggests overheads this
  projection does not model.
- a micro-batch is the stream batch of ``steps`` rows, as on one GPU (so a
  call's time is the published one); as many micro-batches in flight as
  stages; 2 messages in flight per link (as the StreamDiffusionV2 paper has it: "at most 1–2").
- links: NVLink 450 GB/s effective + 10 µs per message; PCIe 25 GB/s +
  15 µs. Transfers run asynchronously beside compute (the simulator's links),
  and are counted as exposed in the balancer's stage times (conservative).
- latency is measured with a camera feeding frames at ``--load`` (90%) of
  each configuration's own throughput; a frame misses when its latency
  (output − arrival, including the wait for the rest of its chunk) exceeds
  ``--deadline-ms`` (default 500 ms, streamgen's default per-frame SLO,
  ``ServerConfig.slo_ms``). A 100 ms deadline is out of reach of any
  configuration here: one 1-step call alone takes 153 ms (1.3B, one H100).

Prints a table and writes ``bench/out/scaling_projection.json``.
:func:`project` returns one configuration as a dict; :func:`project_inputs`
does the same from any :class:`StageInputs` (e.g. CPU measurements).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from streamgen.sched.blocks import BlockSplit, StageTiming, balanced_split, stage_times
from bench.stage_sim import PipelineSpec, StageCost, simulate

from .common import markdown_table, table, write_json

GIB = 2**30
BF16 = 2
FRAMES_PER_CHUNK = 4
SIZE = 512
TOKENS = (SIZE // 16) ** 2  # VAE 8x spatially, patch 2x2
WINDOW_FRAMES = 6 + 1  # cached latent frames + the current chunk
TEXT_TOKENS = 512
LATENT_BYTES_PER_ROW = 16 * (SIZE // 8) ** 2 * BF16

PUBLISHED_ONE_GPU_FPS = {
    "wan-1.3b": {1: 26.21, 2: 24.02, 3: 21.51, 4: 19.43},
    "wan-14b": {1: 18.71, 2: 13.01, 3: 10.09, 4: 8.26},
}
PUBLISHED_FOUR_GPU_FPS = {
    "wan-1.3b": {1: 64.52, 2: 63.99, 3: 62.43, 4: 61.57},
    "wan-14b": {1: 58.28, 2: 51.09, 3: 38.41, 4: 31.62},
}
VAE_SHARE = 0.30  # of the published 1.3B, 1-step call time
VAE_SHARE_OF = ("wan-1.3b", 1)
ENCODE_SHARE_OF_VAE = 1 / 3


@dataclass(frozen=True)
class Link:
    """A rank-to-rank link: effective bandwidth and a fixed cost per message (both assumed)."""

    name: str
    bytes_per_second: float
    latency_seconds: float

    def seconds(self, size: float) -> float:
        return self.latency_seconds + size / self.bytes_per_second


LINKS = {
    "nvlink": Link("nvlink", 450e9, 10e-6),
    "pcie": Link("pcie", 25e9, 15e-6),
}


# ------------------------------------------------------------------ model shapes
@dataclass(frozen=True)
class WanShape:
    """The widths of a Wan2.1 DiT that set its FLOPs and parameters."""

    name: str
    blocks: int
    width: int
    ffn: int
    text_dim: int = 4096
    freq_dim: int = 256
    patch_values: int = 16 * 1 * 2 * 2  # latent channels × patch volume, in and out

    @classmethod
    def shipped(cls, name: str) -> WanShape:
        """The shape from streamgen's shipped diffusers config of ``name`` (``wan-1.3b`` or ``wan-14b``)."""
        path = resources.files("streamgen") / "models" / "configs" / name / "transformer" / "config.json"
        config = json.loads(path.read_text())
        channels = config["in_channels"]
        t, h, w = config["patch_size"]
        return cls(
            name=name,
            blocks=config["num_layers"],
            width=config["num_attention_heads"] * config["attention_head_dim"],
            ffn=config["ffn_dim"],
            text_dim=config["text_dim"],
            freq_dim=config["freq_dim"],
            patch_values=channels * t * h * w,
        )

    # Parameters: what each rank must hold.
    @property
    def block_params(self) -> int:
        d, f = self.width, self.ffn
        attention = 2 * 4 * (d * d + d) + 2 * 2 * d  # self and cross: Q, K, V, O with biases; RMS norms on Q and K
        return attention + 2 * d + (d * f + f + f * d + d) + 6 * d  # cross-attention LayerNorm, FFN, modulation

    @property
    def embed_params(self) -> int:
        """Rank 0: patch embedding, text embedding MLP, timestep MLP and its projection to the 6 modulations."""
        d = self.width
        patch = self.patch_values * d + d
        text = self.text_dim * d + d + d * d + d
        time = self.freq_dim * d + d + d * d + d + d * 6 * d + 6 * d
        return patch + text + time

    @property
    def head_params(self) -> int:
        """The last rank: output projection and its modulation."""
        return self.width * self.patch_values + self.patch_values + 2 * self.width

    @property
    def dit_params(self) -> int:
        return self.blocks * self.block_params + self.embed_params + self.head_params

    # FLOPs of one row (one chunk at one step) at 512×512.
    def block_flops(self) -> float:
        d, f, t = self.width, self.ffn, TOKENS
        keys = WINDOW_FRAMES * TOKENS
        self_attention = 8 * t * d * d + 4 * t * keys * d
        cross_attention = 4 * t * d * d + 4 * t * TEXT_TOKENS * d
        return float(self_attention + cross_attention + 4 * t * d * f)

    def embed_flops(self) -> float:
        d = self.width
        return float(2 * TOKENS * self.patch_values * d + 2 * (self.freq_dim * d + d * d + 6 * d * d))

    def head_flops(self) -> float:
        return float(2 * TOKENS * self.width * self.patch_values)

    def dit_flops(self) -> float:
        return self.blocks * self.block_flops() + self.embed_flops() + self.head_flops()


# --------------------------------------------------------------- per-stage inputs
@dataclass(frozen=True)
class StageInputs:
    """Seconds per micro-batch that make up every stage's cost, measured or derived.

    ``block_seconds``: one DiT block; ``encode_seconds``: rank 0's work
    besides its blocks (VAE encode, embeddings); ``decode_seconds``: the last
    rank's (head, VAE decode); ``transfer_seconds``: a micro-batch's hidden
    state from one rank to the next; ``return_seconds``: the last rank's
    state back to rank 0. The byte counts (optional) give per-rank weights.
    """

    source: str
    num_blocks: int
    steps: int
    block_seconds: float
    encode_seconds: float
    decode_seconds: float
    transfer_seconds: float = 0.0
    return_seconds: float = 0.0
    frames_per_chunk: int = FRAMES_PER_CHUNK
    block_bytes: float | None = None
    encode_bytes: float = 0.0  # weights only rank 0 holds
    decode_bytes: float = 0.0  # weights only the last rank holds

    def timings(self, split: BlockSplit) -> list[StageTiming]:
        """What a window under ``split`` would measure (one stage: no transfer, its state stays put)."""
        last = split.stages - 1
        out = []
        for stage, blocks in enumerate(split.sizes):
            fixed = (self.encode_seconds if stage == 0 else 0.0) + (self.decode_seconds if stage == last else 0.0)
            send = 0.0 if split.stages == 1 else self.return_seconds if stage == last else self.transfer_seconds
            out.append(StageTiming(stage, blocks, blocks * self.block_seconds, fixed, send))
        return out

    def stage_costs(self, split: BlockSplit) -> tuple[StageCost, ...]:
        return tuple(
            StageCost(t.fixed_seconds + t.block_seconds, t.send_seconds) for t in self.timings(split)
        )

    def rank_weight_bytes(self, split: BlockSplit) -> list[float] | None:
        if self.block_bytes is None:
            return None
        last = split.stages - 1
        return [
            blocks * self.block_bytes + (self.encode_bytes if s == 0 else 0.0) + (self.decode_bytes if s == last else 0.0)
            for s, blocks in enumerate(split.sizes)
        ]


def published_inputs(model: str, steps: int, link: str = "nvlink", *, vae_share: float = VAE_SHARE,
                     encode_share: float = ENCODE_SHARE_OF_VAE) -> tuple[StageInputs, dict[str, Any]]:
    """Stage inputs of ``model`` at ``steps`` steps from the published single-H100 fps (see the module docstring).

    Returns the inputs and the numbers they were derived from (for the JSON report).
    """
    if model not in PUBLISHED_ONE_GPU_FPS:
        raise ValueError(f"no published figures for {model!r}; known: {', '.join(PUBLISHED_ONE_GPU_FPS)}")
    if steps not in PUBLISHED_ONE_GPU_FPS[model]:
        raise ValueError(f"published figures cover 1-4 steps, not {steps}")
    if link not in LINKS:
        raise ValueError(f"unknown link {link!r}; known: {', '.join(LINKS)}")
    shape = WanShape.shipped(model)
    call_seconds = FRAMES_PER_CHUNK / PUBLISHED_ONE_GPU_FPS[model][steps]
    base_model, base_steps = VAE_SHARE_OF
    vae_seconds = vae_share * FRAMES_PER_CHUNK / PUBLISHED_ONE_GPU_FPS[base_model][base_steps]
    dit_seconds = call_seconds - vae_seconds
    per_flop = dit_seconds / shape.dit_flops()
    rows = steps  # the stream batch: one row per denoising step
    hidden_bytes = rows * (TOKENS * shape.width + 7 * shape.width) * BF16
    inputs = StageInputs(
        source=f"published 1xH100 fps, {link}",
        num_blocks=shape.blocks,
        steps=steps,
        block_seconds=shape.block_flops() * per_flop,
        encode_seconds=encode_share * vae_seconds + shape.embed_flops() * per_flop,
        decode_seconds=(1 - encode_share) * vae_seconds + shape.head_flops() * per_flop,
        transfer_seconds=LINKS[link].seconds(hidden_bytes),
        return_seconds=LINKS[link].seconds(rows * LATENT_BYTES_PER_ROW),
        block_bytes=shape.block_params * BF16,
        encode_bytes=shape.embed_params * BF16,
        decode_bytes=shape.head_params * BF16,
    )
    derivation = {
        "call_ms": round(call_seconds * 1e3, 2),
        "vae_ms": round(vae_seconds * 1e3, 2),
        "dit_ms": round(dit_seconds * 1e3, 2),
        "block_ms": round(inputs.block_seconds * 1e3, 3),
        "encode_ms": round(inputs.encode_seconds * 1e3, 2),
        "decode_ms": round(inputs.decode_seconds * 1e3, 2),
        "transfer_us": round(inputs.transfer_seconds * 1e6, 1),
        "return_us": round(inputs.return_seconds * 1e6, 1),
        "hidden_mib": round(hidden_bytes / 2**20, 2),
        "block_gflops_per_row": round(shape.block_flops() / 1e9, 1),
        "dit_tflops_per_call": round(rows * shape.dit_flops() / 1e12, 2),
        "implied_tflops": round(rows * shape.dit_flops() / dit_seconds / 1e12, 1),
        "dit_params": shape.dit_params,
        "block_params": shape.block_params,
    }
    return inputs, derivation


# -------------------------------------------------------------------- projecting
@dataclass(frozen=True)
class ProjectionSettings:
    """How each configuration is simulated.

    ``micro_batches``: ``"stages"`` (one per stage, as the issue plans) or
    ``"auto"``: the fewest that give 99% of that throughput. A stream batch
    runs one step per new input, so every extra micro-batch in flight adds
    an input period per remaining step to a chunk's latency; when a fixed
    stage (the decoding rank) is the bottleneck, fewer micro-batches give
    the same rate sooner.
    """

    chunks: int = 300  # measured chunks per simulation
    load: float = 0.9  # camera rate as a share of the configuration's throughput (latency run)
    deadline_s: float = 0.5
    link_slots: int = 2
    micro_batches: str = "stages"

    def __post_init__(self) -> None:
        if self.micro_batches not in ("stages", "auto"):
            raise ValueError(f"micro_batches is 'stages' or 'auto', got {self.micro_batches!r}")
        if not 0 < self.load <= 1:
            raise ValueError(f"load is a share of the throughput in (0, 1], got {self.load}")


def project_inputs(inputs: StageInputs, stages: int, settings: ProjectionSettings = ProjectionSettings()) -> dict[str, Any]:
    """One configuration: the balanced split of ``inputs`` over ``stages`` ranks, simulated twice.

    Back-to-back for throughput, then with a camera at ``settings.load`` of
    that throughput for latency and deadline misses.
    """
    even = BlockSplit.even(inputs.num_blocks, stages)
    split = balanced_split(inputs.timings(even), inputs.num_blocks)
    spec = _spec(inputs, split, stages, settings)
    saturated = simulate(spec, chunks=settings.chunks)
    if settings.micro_batches == "auto":
        for fewer in range(1, stages):
            trial = _spec(inputs, split, fewer, settings)
            result = simulate(trial, chunks=settings.chunks)
            if result.fps >= 0.99 * saturated.fps:
                spec, saturated = trial, result
                break
    camera = simulate(spec, chunks=settings.chunks, input_fps=settings.load * saturated.fps, deadline_s=settings.deadline_s)
    row: dict[str, Any] = {
        "stages": stages,
        "micro_batches": spec.in_flight,
        "split": str(split),
        "bounds": split.to_json(),
        "stage_ms": [round(t * 1e3, 2) for t in stage_times(split, inputs.timings(split))],
        "fps": round(saturated.fps, 2),
        "utilisation_pct": [round(100 * u, 1) for u in saturated.stage_utilisation],
        "camera_fps": round(camera.fps, 2),
        "latency_ms_p50": round(camera.latency_p50_s * 1e3, 1),
        "latency_ms_p99": round(camera.latency_p99_s * 1e3, 1),
        "frames": camera.frames,
        "misses": camera.misses,
        "miss_pct": round(100 * camera.misses / camera.frames, 1),
        "deadline_ms": round(settings.deadline_s * 1e3, 1),
    }
    weights = inputs.rank_weight_bytes(split)
    if weights is not None:
        whole = inputs.num_blocks * (inputs.block_bytes or 0.0) + inputs.encode_bytes + inputs.decode_bytes
        row["rank_weights_gib"] = [round(w / GIB, 2) for w in weights]
        row["max_rank_weights_gib"] = round(max(weights) / GIB, 2)
        row["max_rank_share"] = round(max(weights) / whole, 3)
    return row


def _spec(inputs: StageInputs, split: BlockSplit, micro_batches: int, settings: ProjectionSettings) -> PipelineSpec:
    return PipelineSpec(inputs.stage_costs(split), steps=inputs.steps, micro_batches=micro_batches,
                        frames_per_chunk=inputs.frames_per_chunk, link_slots=settings.link_slots)


def project(model_name: str, steps: int, stages: int, *, link: str = "nvlink",
            settings: ProjectionSettings = ProjectionSettings()) -> dict[str, Any]:
    """The projected ``stages``-rank pipeline of ``model_name`` at ``steps`` steps, with the published figures beside it."""
    inputs, derivation = published_inputs(model_name, steps, link)
    row = {"model": model_name, "link": link, "steps": steps, **project_inputs(inputs, stages, settings)}
    one = row if stages == 1 else project_inputs(inputs, 1, settings)
    row["speedup"] = round(row["fps"] / one["fps"], 2)
    one_gpu = PUBLISHED_ONE_GPU_FPS[model_name][steps]
    four_gpu = PUBLISHED_FOUR_GPU_FPS[model_name][steps]
    row["published_1gpu_fps"] = one_gpu
    row["published_4gpu_fps"] = four_gpu
    row["published_4gpu_speedup"] = round(four_gpu / one_gpu, 2)
    row["published_4gpu_chunk_ms"] = round(FRAMES_PER_CHUNK / four_gpu * 1e3, 2)  # vs the projected slowest stage
    row["inputs"] = derivation
    return row


def projection_rows(models: list[str], steps: list[int], stages: list[int], links: list[str],
                    settings: ProjectionSettings = ProjectionSettings()) -> list[dict[str, Any]]:
    return [project(m, s, n, link=link, settings=settings) for link in links for m in models for s in steps for n in stages]


def target(rows: list[dict[str, Any]], *, stages: int = 4, speedup: float = 3.6) -> dict[str, Any]:
    """The issue's target: at ``stages`` ranks, ≥ ``speedup``× one rank, no deadline misses, weights ≈ 1/stages."""
    checked = []
    for row in rows:
        if row["stages"] != stages:
            continue
        checked.append({
            "model": row["model"], "link": row["link"], "steps": row["steps"], "speedup": row["speedup"],
            "misses": row["misses"], "max_rank_share": row.get("max_rank_share"),
            "met": row["speedup"] >= speedup and row["misses"] == 0,
        })
    return {"stages": stages, "speedup_min": speedup, "rows": checked, "all_met": bool(checked) and all(c["met"] for c in checked)}


COLUMNS = [
    ("model", "model"),
    ("link", "link"),
    ("steps", "steps"),
    ("stages", "stages"),
    ("micro_batches", "in flight"),
    ("split", "split"),
    ("slowest_ms", "slowest stage ms"),
    ("fps", "fps"),
    ("speedup", "speed-up"),
    ("published_4gpu_fps", "SDv2 4xH100 fps"),
    ("published_4gpu_speedup", "SDv2 4x speed-up"),
    ("latency_ms_p50", "p50 ms"),
    ("latency_ms_p99", "p99 ms"),
    ("miss_pct", "miss %"),
    ("max_rank_weights_gib", "DiT GiB/rank"),
    ("max_rank_share", "share"),
]


def _table_row(row: dict[str, Any]) -> dict[str, Any]:
    shown = {**row, "slowest_ms": max(row["stage_ms"])}
    if row["stages"] != 4:
        shown["published_4gpu_fps"] = shown["published_4gpu_speedup"] = None
    return shown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling_projection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="wan-1.3b,wan-14b", help="comma separated: wan-1.3b, wan-14b")
    parser.add_argument("--steps", default="1,2,3,4", help="denoising steps, comma separated (1-4)")
    parser.add_argument("--stages", default="1,2,4,8", help="pipeline stages, comma separated")
    parser.add_argument("--links", default="nvlink,pcie", help=f"comma separated, of {', '.join(LINKS)}")
    parser.add_argument("--deadline-ms", type=float, default=500.0, help="per-frame latency deadline")
    parser.add_argument("--load", type=float, default=0.9, help="camera rate as a share of throughput, for latency")
    parser.add_argument("--chunks", type=int, default=300, help="measured chunks per simulation")
    parser.add_argument("--micro-batches", choices=("stages", "auto"), default="stages",
                        help="in flight: one per stage, or the fewest that give 99%% of that throughput")
    parser.add_argument("--out", default=None, help="JSON path (default bench/out/scaling_projection.json)")
    parser.add_argument("--markdown", action="store_true", help="also print the table in Markdown (for RESULTS.md)")
    args = parser.parse_args(argv)
    try:
        settings = ProjectionSettings(chunks=args.chunks, load=args.load, deadline_s=args.deadline_ms / 1000,
                                      micro_batches=args.micro_batches)
        rows = projection_rows(_names(args.models), _ints(args.steps), _ints(args.stages), _names(args.links), settings)
    except ValueError as error:
        parser.error(str(error))
    shown = [_table_row(r) for r in rows]
    print("PROJECTION from published single-H100 figures and stated assumptions (see python -m bench.scaling_projection --help)")
    print(table(shown, COLUMNS))
    if args.markdown:
        print(markdown_table(shown, COLUMNS))
    goal = target(rows)
    print(f"target (4 stages >= 3.6x one stage, no misses at {args.deadline_ms:g} ms): "
          f"{sum(c['met'] for c in goal['rows'])} of {len(goal['rows'])} configurations")
    report = {
        "benchmark": "scaling_projection",
        "kind": "projection (simulated from published figures and assumptions; not a measurement)",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "command": "python -m bench.scaling_projection " + " ".join(argv if argv is not None else sys.argv[1:]),
        "assumptions": {
            "vae_share": VAE_SHARE, "vae_share_of": list(VAE_SHARE_OF), "encode_share_of_vae": ENCODE_SHARE_OF_VAE,
            "links": {name: asdict(link) for name, link in LINKS.items()}, "size": SIZE, "tokens_per_latent_frame": TOKENS,
            "attention_window_frames": WINDOW_FRAMES, "text_tokens": TEXT_TOKENS, **asdict(settings),
        },
        "target": goal,
        "results": rows,
    }
    print(f"wrote {write_json('scaling_projection', report, args.out)}")
    return 0


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


if __name__ == "__main__":
    raise SystemExit(main())
