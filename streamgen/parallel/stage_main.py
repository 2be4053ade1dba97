"""Entry point of a stage rank process: ``python -m streamgen.parallel.stage_main '<json>'`` (started by :mod:`.launch`).

The JSON names the rank, the rendezvous, the device and the model part to
build (:class:`~.shard_loading.StageSource`, the block split). The process
dies with its parent (``PR_SET_PDEATHSIG`` on Linux, and a watchdog
thread everywhere) so no rank outlives the server, even after ``kill -9``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from datetime import timedelta
from typing import Any


def main(argv: list[str]) -> int:
    config: dict[str, Any] = json.loads(argv[1])
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s stage{config['rank']}: %(message)s")
    _die_with_parent(config.get("parent_pid"))
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    from ..sched.blocks import BlockSplit  # noqa: PLC0415
    from .links import open_links, rendezvous_store  # noqa: PLC0415
    from .shard_loading import StageRole, StageSource, build_stage_shard  # noqa: PLC0415
    from .stage_loop import run_stage  # noqa: PLC0415

    rank, world = int(config["rank"]), int(config["world"])
    device = torch.device(config["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    split = BlockSplit(tuple(config["bounds"]))
    blocks = split.blocks_of(rank)
    role = StageRole(rank, world, blocks.start, blocks.stop)
    dtype = getattr(torch, config["dtype"])
    with torch.inference_mode():
        shard = build_stage_shard(StageSource.from_json(config["source"]), role, device, dtype)
    shard.accelerate(config.get("acceleration", "none"))
    timeout_s = float(config["timeout"])
    store = rendezvous_store(config["init_method"], rank, world, timeout_s)
    dist.init_process_group(
        config["backend"], store=store, rank=rank, world_size=world,
        timeout=timedelta(seconds=timeout_s), **({"device_id": device} if config["backend"] == "nccl" else {}),
    )
    links = open_links(world, config["backend"], timeout_s)
    comm_device = device if config["backend"] == "nccl" else torch.device("cpu")
    try:
        run_stage(rank, shard, split, comm_device, links)
    except RuntimeError as error:  # a neighbour died: its failure is the story, this rank's is a consequence
        detail = str(error).split("] ", 1)[-1].split(". ", 1)[0]
        logging.getLogger(__name__).error("the link to a neighbouring rank broke (%s); exiting", detail)
        return 1
    finally:
        try:
            dist.destroy_process_group()
        except (RuntimeError, ValueError):
            pass
    return 0


def _die_with_parent(parent: int | None) -> None:
    """Exit when the process that started this rank is gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes  # noqa: PLC0415
            import signal  # noqa: PLC0415

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if parent is None:
        return

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
