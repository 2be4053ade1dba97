"""A :class:`~streamgen.models.video.video_model.VideoModel` whose DiT runs as pipeline stages.

:func:`load_staged_video_model` starts the ranks (:mod:`.launch`), builds
the driver's part (embeddings, first blocks, VAE encoder, text encoder) and wraps
the :class:`~.driver.StageDriver` in :class:`StagedTransformer`, which
answers the calls the video pipeline makes on a transformer. It runs under
:class:`~streamgen.pipeline.video_staged.StagedVideoPipeline`, which feeds
the stages chunk by chunk (what :func:`~streamgen.pipeline.video_loading.video_pipeline_for`
picks for such a model); the server and :class:`~streamgen.VideoStream` use
it like any video pipeline.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ..models.video.causal_wan import CacheSegment, CausalWanTransformer
from ..models.video.video_model import VideoModel
from ..sched.blocks import BlockBalancer, BlockSplit
from .driver import StageDriver
from .handles import ShardedContext, ShardedKVCache
from .launch import StageGroup, StageLaunch, start_stage_group
from .shard_loading import StageRole, StageSource, build_stage_transformer, fuse_stage_loras, keep_vae_half, num_blocks, prune
from .stage_shard import StageShard

logger = logging.getLogger(__name__)
STAGE_ACCELERATIONS = ("none", "compile")
COMPILE_RESULT_TIMEOUT = 900.0


class StagedTransformer:
    """The driver's view of the whole DiT: sizes from its own part, work through the :class:`StageDriver`."""

    def __init__(self, local: CausalWanTransformer, driver: StageDriver, group: StageGroup) -> None:
        self.local = local
        self.driver = driver
        self.group = group
        self.rope = local.rope

    # sizes (the local part has the full config)
    config = property(lambda self: self.local.config)
    num_layers = property(lambda self: self.driver.split.num_blocks)
    num_heads = property(lambda self: self.local.num_heads)
    head_dim = property(lambda self: self.local.head_dim)
    patch_size = property(lambda self: self.local.patch_size)
    in_channels = property(lambda self: self.local.in_channels)
    out_channels = property(lambda self: self.local.out_channels)
    text_dim = property(lambda self: self.local.text_dim)
    device = property(lambda self: self.local.device)
    dtype = property(lambda self: self.local.dtype)

    def tokens_per_frame(self, latent_h: int, latent_w: int) -> int:
        return self.local.tokens_per_frame(latent_h, latent_w)

    def new_cache(self, rows: int, latent_h: int, latent_w: int, **options: Any) -> ShardedKVCache:
        self.local.tokens_per_frame(latent_h, latent_w)  # the same size errors as one process
        return self.driver.new_cache(rows, latent_h, latent_w, **options)

    def encode_context(self, text_embeds: torch.Tensor) -> ShardedContext:
        if text_embeds.ndim != 3 or text_embeds.shape[-1] != self.text_dim:
            from ..errors import InputError  # noqa: PLC0415

            raise InputError(f"text embeddings must be (B, L, {self.text_dim}), got {tuple(text_embeds.shape)}")
        return self.driver.encode_context(text_embeds)

    def forward_chunks(self, latents: torch.Tensor, timesteps: torch.Tensor, segments: Sequence[Any], context: ShardedContext) -> torch.Tensor:
        return self.driver.forward_chunks(latents, timesteps, segments, context)

    def forward_chunk(self, latents, timesteps, cache: ShardedKVCache, context: ShardedContext, *, write=None) -> torch.Tensor:
        return self.driver.forward_chunks(latents, timesteps, [CacheSegment(cache, write)], context)

    def describe(self) -> dict[str, Any]:
        """The split, the ranks and the driver's own memory (for doctor, /health and the benchmark)."""
        return {
            "stages": self.driver.stages,
            "devices": list(self.group.launch.devices),
            "split": list(self.driver.split.bounds),
            "acceleration": self.driver.shard.acceleration,
            "rebalances": self.driver.rebalances,
            "micro_batches": self.driver.micro_batches,
            "peak_micro_batches_on_ring": self.driver.peak_on_ring,
            "failure": self.driver.failure,
            "rank0_parameters": sum(p.numel() for p in self.local.parameters()),
        }

    def close(self) -> None:
        """Stop the ranks: a clean shutdown through the ring, else kill them. No rank outlives this."""
        try:
            clean = self.driver.shutdown()
        finally:
            self.driver.sender.close()  # no keep-alive may outlive the process group
        if clean:
            self.group.close()
        else:
            self.group.kill()


def parse_devices(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"cuda:0,cuda:1"`` or a list → device names, checked (``cpu`` may repeat: one CPU rank per entry)."""
    devices = tuple(d.strip() for d in (value.split(",") if isinstance(value, str) else value) if d.strip())
    if not devices:
        raise ConfigError("--devices needs at least one device, e.g. cuda:0,cuda:1 or cpu,cpu")
    for device in devices:
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"{device!r} in --devices is not a device name (use cpu, cuda:0, cuda:1, ...)") from None
        if parsed.type not in ("cpu", "cuda"):
            raise ConfigError(f"{device!r} in --devices: pipeline stages run on cpu or cuda devices")
        if parsed.type == "cuda" and parsed.index is None:
            raise ConfigError(f"{device!r} in --devices: name the GPU (cuda:0, cuda:1, ...)")
    gpus = [d for d in devices if d.startswith("cuda")]
    if len(set(gpus)) != len(gpus):
        raise ConfigError(f"--devices names a GPU twice: {', '.join(devices)}")
    if gpus and len(gpus) != len(devices):
        raise ConfigError("--devices mixes cpu and cuda; use all GPUs or all CPU ranks")
    if gpus and not torch.cuda.is_available():
        raise ConfigError(f"--devices asks for {', '.join(gpus)} but CUDA is not available here")
    if gpus and max(torch.device(d).index for d in gpus) >= torch.cuda.device_count():
        raise ConfigError(f"--devices asks for {', '.join(gpus)} but this machine has {torch.cuda.device_count()} GPU(s)")
    return devices


def load_staged_video_model(
    model: str,
    devices: Sequence[str],
    *,
    weights: str = "pretrained",
    dtype: str = "auto",
    seed: int = 0,
    layers: int | None = None,
    checkpoint: str | None = None,
    checkpoint_key: str | None = None,
    split: BlockSplit | Sequence[int] | None = None,
    rebalance: bool = True,
    result_timeout: float = 60.0,
    threads: int | None = None,
    tiny_dit: dict[str, int] | None = None,
    acceleration: str = "none",
    lora: dict[str, float] | None = None,
    fuse_lora: bool = True,
) -> VideoModel:
    """``model`` (a video preset) with its DiT blocks split over ``devices`` (see module docstring).

    ``lora`` (``{path_or_hub_file: scale}``): each stage fuses the LoRAs into the layers it holds
    (files are found here, once; a preset published as a LoRA, LongLive, brings its own).
    """
    from ..models.loading.device import resolve_dtype  # noqa: PLC0415
    from ..models.loading.video_presets import VIDEO_PRESETS  # noqa: PLC0415

    devices = parse_devices(devices)
    if acceleration not in STAGE_ACCELERATIONS:
        raise ConfigError(
            f"acceleration {acceleration!r} does not run with pipeline stages; use compile (each rank compiles its blocks) or none"
        )
    if len(devices) < 2:
        raise ConfigError("pipeline stages need at least two devices")
    preset = VIDEO_PRESETS.get(model)
    if preset is None:
        raise ConfigError(f"pipeline stages run the causal video models ({', '.join(VIDEO_PRESETS)}); {model!r} is not one")
    if (layers is not None or tiny_dit) and preset.repo is not None:
        raise ConfigError("layers= and tiny_dit= apply to tiny-video only")
    if weights == "tiny":
        raise ConfigError(f"weights='tiny' runs {model}'s recipe on the tiny DiT in one process; pipeline stages run its real or dummy weights")
    from ..models.loading.video_lora import check_lora_option, resolve_video_lora_files  # noqa: PLC0415
    from ..models.loading.video_presets import VideoSpec, preset_loras  # noqa: PLC0415

    loras = preset_loras(VideoSpec(preset, weights=weights, lora=check_lora_option(lora)))
    if loras and not fuse_lora:
        raise ConfigError("pipeline stages fuse LoRAs into each stage's blocks; fuse_lora=False (live scales) runs in one process")
    lora_files = {str(path): loras[source] for source, path in resolve_video_lora_files(loras).items()}  # found once, here
    if checkpoint is None and preset.checkpoint is not None and weights == "pretrained":
        from ..models.loading.hub import fetch_file  # noqa: PLC0415  (the student's published weights, as in one process)

        checkpoint = str(fetch_file(preset.checkpoint.repo, preset.checkpoint.filename, f"video preset {model!r}: the student's weights"))
    device = torch.device(devices[0])
    torch_dtype = resolve_dtype(dtype, device, family="video")
    source = StageSource(model, weights, seed, layers, tiny_dit, checkpoint, checkpoint_key, lora=lora_files or None)
    block_count = num_blocks(source, preset)
    if len(devices) > block_count:
        raise ConfigError(f"{model} has {block_count} blocks: at most {block_count} stages, got {len(devices)} devices")
    block_split = split if isinstance(split, BlockSplit) else (BlockSplit(tuple(split)) if split else BlockSplit.even(block_count, len(devices)))
    if block_split.stages != len(devices) or block_split.num_blocks != block_count:
        raise ConfigError(f"block split {list(block_split.bounds)} does not fit {block_count} blocks on {len(devices)} devices")
    launch = StageLaunch(devices, source, block_split, str(torch_dtype).removeprefix("torch."), threads, acceleration=acceleration)
    logger.info("starting %d pipeline stages on %s (blocks %s)", len(devices), ", ".join(devices), list(block_split.bounds))
    group = start_stage_group(launch)
    role = StageRole(0, len(devices), *_bounds(block_split, 0))
    with torch.inference_mode():
        video = _driver_side(source, preset, role, device, torch_dtype)
    keep_vae_half(video.vae, "encoder")  # the last rank decodes
    local = video.transformer
    shard = StageShard(local, role.blocks)
    shard.accelerate(acceleration)
    driver = StageDriver(
        shard, block_split, device if launch.backend == "nccl" else torch.device("cpu"),
        liveness=group.liveness, balancer=BlockBalancer(block_split) if rebalance else None,
        # a rank that compiles a graph answers late, not never: the first graphs of a large model take minutes
        result_timeout=max(result_timeout, COMPILE_RESULT_TIMEOUT) if acceleration == "compile" else result_timeout,
        encoder_vae=video.vae.vae,
    )
    staged = StagedTransformer(local, driver, group)
    atexit.register(staged.close)
    video.transformer = staged
    video.forward_chunk = staged.forward_chunk
    video.forward_chunks = staged.forward_chunks
    video.stages = staged
    return video


def _bounds(split: BlockSplit, stage: int) -> tuple[int, int]:
    blocks = split.blocks_of(stage)
    return blocks.start, blocks.stop


def _driver_side(source: StageSource, preset: Any, role: StageRole, device: torch.device, dtype: torch.dtype) -> VideoModel:
    """The driver's model: its stage of the DiT plus the VAE (the caller drops its decoder), the text encoder and the tokenizer."""
    from ..models.loading import video_presets  # noqa: PLC0415

    if source.model == "tiny-video":
        video = video_presets.build_tiny_video_model(seed=source.seed, device=device, dtype=dtype, layers=source.layers, dit=source.tiny_dit)
        prune(video.transformer, role)
        fuse_stage_loras(video.transformer, source, role)
        return video
    transformer = build_stage_transformer(source, role, device, dtype)
    if source.weights == "dummy":
        return video_presets.build_dummy_video_model(preset, seed=source.seed, device=device, dtype=dtype, transformer=transformer)
    return video_presets.load_wan_folder(video_presets.wan_snapshot(preset, dtype), preset, device=device, dtype=dtype, transformer=transformer)
