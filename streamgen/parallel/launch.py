"""Start, watch and stop the stage ranks of one staged model.

``--devices cuda:0,cuda:1`` (or ``cpu,cpu``): this process is rank 0 (the
driver) on the first device and starts one process per further device
(:mod:`.stage_main`), all joined over ``torch.distributed`` with a TCP
rendezvous on loopback: NCCL when every device is a GPU, gloo otherwise.
Under ``torchrun`` (several machines) the ranks already exist: rank 0 runs
the server, every other rank runs only its stage (``streamgen serve`` does
that by itself), and the rendezvous comes from torchrun's environment.

:class:`StageGroup` is the supervisor: its :meth:`~StageGroup.liveness`
reports a rank whose process exited, and :meth:`~StageGroup.close` stops
them all (politely, then ``kill``), also at interpreter exit.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import timedelta

import torch.distributed as dist

from ..errors import ConfigError, ModelLoadError
from ..sched.blocks import BlockSplit
from .links import open_links, rendezvous_store, stage_timeout_seconds
from .shard_loading import StageSource
from .torchrun import torchrun_rank

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageLaunch:
    """How to start the ranks of a staged model."""

    devices: tuple[str, ...]
    source: StageSource
    split: BlockSplit
    dtype: str = "float32"
    threads: int | None = None  # per rank (CPU ranks)
    acceleration: str = "none"  # or "compile": every rank compiles its blocks
    timeout: float = field(default_factory=stage_timeout_seconds)  # the process groups': rendezvous and any one wait (links.py)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return "nccl" if all(d.startswith("cuda") for d in self.devices) else "gloo"


class StageGroup:
    """The rank processes this driver started (none under torchrun) and the process group."""

    def __init__(self, launch: StageLaunch, processes: list[subprocess.Popen]) -> None:
        self.launch = launch
        self.processes = processes
        self._closed = False
        self._lock = threading.Lock()
        atexit.register(self.kill)  # the last resort; StagedTransformer.close shuts down cleanly first

    def liveness(self) -> str | None:
        """Why the stages cannot run (a rank's process exited), or None.

        When several ranks are gone, one killed by a signal (a negative code)
        is named first: the others usually exited because their link to it broke.
        """
        exited = [(rank, code) for rank, process in enumerate(self.processes, start=1) if (code := process.poll()) is not None]
        if not exited:
            return None
        exited.sort(key=lambda item: (item[1] >= 0, item[0]))
        rank, code = exited[0]
        reason = f"stage rank {rank} on {self.launch.devices[rank]} exited with code {code}"
        others = ", ".join(f"rank {r} with code {c}" for r, c in exited[1:])
        return f"{reason} (then {others})" if others else reason

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def kill(self) -> None:
        """Stop every rank now (a failed start)."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        self.close(5.0)

    def close(self, timeout: float = 10.0) -> None:
        """Wait for the ranks to exit (after the driver's shutdown message); kill those that do not."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("stage rank pid %d did not exit; killing it", process.pid)
                process.kill()
                process.wait()
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except (RuntimeError, ValueError):  # a dead peer: nothing left to tear down cleanly
                pass
        atexit.unregister(self.kill)


def start_stage_group(launch: StageLaunch) -> StageGroup:
    """Start ranks 1.. and join rank 0 to the process group (blocks until every rank has built its stage)."""
    if dist.is_initialized():
        raise ConfigError("this process already runs pipeline stages; one staged model per process")
    joined = torchrun_rank()
    if joined is not None:  # torchrun started every rank: this is rank 0; rendezvous from its environment
        if joined != (0, len(launch.devices)):
            raise ConfigError(f"torchrun started {joined[1]} ranks (this is rank {joined[0]}) but --devices names {len(launch.devices)}")
        dist.init_process_group(launch.backend, init_method="env://", rank=0, world_size=joined[1], **_group_options(launch))
        open_links(joined[1], launch.backend, launch.timeout)
        return StageGroup(launch, [])
    world = len(launch.devices)
    port = _free_port()
    init_method = f"tcp://127.0.0.1:{port}"
    processes = []
    for rank in range(1, world):
        config = {
            "rank": rank,
            "world": world,
            "init_method": init_method,
            "backend": launch.backend,
            "device": launch.devices[rank],
            "dtype": launch.dtype,
            "source": launch.source.to_json(),
            "bounds": list(launch.split.bounds),
            "threads": launch.threads,
            "acceleration": launch.acceleration,
            "timeout": launch.timeout,
            "parent_pid": os.getpid(),
        }
        env = {**os.environ, **launch.env}
        if launch.threads:
            env["OMP_NUM_THREADS"] = str(launch.threads)
        processes.append(subprocess.Popen([sys.executable, "-m", "streamgen.parallel.stage_main", json.dumps(config)], env=env))
    group = StageGroup(launch, processes)
    failure: list[BaseException] = []

    def join() -> None:
        try:
            store = rendezvous_store(init_method, 0, world, launch.timeout)
            dist.init_process_group(launch.backend, store=store, rank=0, world_size=world, **_group_options(launch))
            open_links(world, launch.backend, launch.timeout)
        except BaseException as error:  # noqa: BLE001  - re-raised below, in the caller's thread
            failure.append(error)

    joining = threading.Thread(target=join, name="stage-rendezvous", daemon=True)
    joining.start()
    while joining.is_alive():  # a rank that dies while loading must not leave rank 0 waiting for the timeout
        joining.join(0.2)
        reason = group.liveness()
        if reason is not None and joining.is_alive():
            group.kill()
            raise ModelLoadError(f"a pipeline stage failed while loading: {reason} (its log is above)")
    if failure:
        group.kill()
        raise failure[0]
    return group


def _group_options(launch: StageLaunch) -> dict:
    """Rank 0's process-group options: the timeout, and under NCCL its own GPU (else NCCL guesses cuda:0)."""
    options: dict = {"timeout": timedelta(seconds=launch.timeout)}
    if launch.backend == "nccl":
        import torch  # noqa: PLC0415

        device = torch.device(launch.devices[0])
        torch.cuda.set_device(device)
        options["device_id"] = device
    return options


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
