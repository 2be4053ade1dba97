"""Pipeline stages across machines: every rank started by ``torchrun``, rank 0 serving.

Each machine runs the same command under torchrun, for example two
machines with two GPUs each::

    # on both machines (MASTER = the first machine's address)
    torchrun --nnodes 2 --nproc-per-node 2 --node-rank <0|1> \\
        --rdzv-backend c10d --rdzv-endpoint MASTER:29500 \\
        -m streamgen serve --model wan-causal-1.3b \\
        --devices cuda:0,cuda:1,cuda:0,cuda:1 --host 0.0.0.0

``--devices`` lists one device per global rank (rank i uses entry i, the
GPU on its own machine). Rank 0 loads the VAE encoder, the text encoder
and the first blocks and serves HTTP; every other rank builds its blocks
(the last one also the head and the VAE decoder) and runs
the stage loop until rank 0 shuts down. The block split is the even one
(the same computation on every rank, from the same arguments), and the
balancer on rank 0 moves blocks from there on.
"""

from __future__ import annotations

import os


def torchrun_rank() -> tuple[int, int] | None:
    """``(rank, world)`` when torchrun started this process as one of several ranks, else None."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def run_torchrun_stage(model: str, devices: tuple[str, ...], dtype: str, joined: tuple[int, int], acceleration: str = "none") -> int:
    """Serve as stage ``rank`` of a torchrun job (see module docstring); returns the exit code."""
    from datetime import timedelta  # noqa: PLC0415

    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    from ..errors import ConfigError  # noqa: PLC0415
    from ..models.loading.device import resolve_dtype  # noqa: PLC0415
    from ..models.loading.video_presets import VIDEO_PRESETS  # noqa: PLC0415
    from ..sched.blocks import BlockSplit  # noqa: PLC0415
    from .links import open_links, stage_timeout_seconds  # noqa: PLC0415
    from .shard_loading import StageRole, StageSource, build_stage_shard, num_blocks  # noqa: PLC0415
    from .stage_loop import run_stage  # noqa: PLC0415

    rank, world = joined
    if len(devices) != world:
        raise ConfigError(f"torchrun started {world} ranks but --devices names {len(devices)} devices (one per rank)")
    preset = VIDEO_PRESETS.get(model)
    if preset is None:
        raise ConfigError(f"torchrun ranks run pipeline stages of a video model; {model!r} is not one")
    device = torch.device(devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    source = StageSource(model)
    split = BlockSplit.even(num_blocks(source, preset), world)
    blocks = split.blocks_of(rank)
    with torch.inference_mode():
        shard = build_stage_shard(source, StageRole(rank, world, blocks.start, blocks.stop), device, resolve_dtype(dtype, device, family="video"))
    shard.accelerate(acceleration)
    backend = "nccl" if all(d.startswith("cuda") for d in devices) else "gloo"
    timeout_s = stage_timeout_seconds()
    dist.init_process_group(
        backend, init_method="env://", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s),
        **({"device_id": device} if backend == "nccl" else {}),
    )
    links = open_links(world, backend, timeout_s)
    try:
        run_stage(rank, shard, split, device if backend == "nccl" else torch.device("cpu"), links)
    finally:
        dist.destroy_process_group()
    return 0
