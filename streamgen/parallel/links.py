"""The process groups between stage ranks, and how long a wait on them may last.

Each direction of traffic is a *link* of two groups:

- **control** (gloo, always on the CPU): message headers and control
  messages. Every wait for work that may not come (a rank waiting for the
  next micro-batch, rank 0 waiting for results) happens here;
- **data**: only tensors a header has announced. Between GPUs it is an NCCL
  group, so no rank ever sits in an NCCL receive for something that may not
  come (NCCL's watchdog would abort an idle server); between CPU ranks the
  control group carries the tensors too.

The links: **ring** (rank i to i+1: micro-batches and control messages),
**return** (the last rank to rank 0: results), each with its own groups, and
**exchange** (data only: blocks moved by a rebalance, whose shapes both
sides know). Separate groups are separate communicators: on two stages the
ring (0 → 1) and the return (1 → 0) join the same two ranks, and one
communicator's receive waiting for data would hold up a send queued behind
it while the peer waits for that send.

The process-group timeout is ``STREAMGEN_STAGE_TIMEOUT_S`` seconds (600 by
default): any one wait. Idle is never a hang: every sender sends a
keep-alive when it has sent nothing for a quarter of it (:mod:`.messages`).
The rendezvous waits longer (:func:`rendezvous_store`): a rank joins after
importing torch and loading its weights, which a short timeout must not
race (rank 0 notices a rank that dies while loading by its exit instead).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from ..errors import ConfigError

TIMEOUT_ENV = "STREAMGEN_STAGE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
KEEPALIVE_FRACTION = 0.25


def stage_timeout_seconds() -> float:
    """The process-group timeout from ``STREAMGEN_STAGE_TIMEOUT_S`` (ConfigError naming it when it is not a positive number)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: give the pipeline stages' timeout in seconds, a positive number (default {DEFAULT_TIMEOUT_S:g})")
    return value


RENDEZVOUS_MIN_S = 900.0  # loading a 14B stage from a slow disk takes minutes


def rendezvous_store(init_method: str, rank: int, world: int, timeout_s: float) -> Any:
    """The TCP store of a ``tcp://host:port`` rendezvous, waiting at least :data:`RENDEZVOUS_MIN_S` for the ranks to join.

    ``init_process_group(store=...)`` then keeps ``timeout_s`` for the
    group's own waits: the slow part (ranks starting) is not held to the
    short timeout meant for a wait between working ranks.
    """
    host, _, port = init_method.removeprefix("tcp://").rpartition(":")
    return dist.TCPStore(host, int(port), world, is_master=rank == 0, timeout=timedelta(seconds=max(timeout_s, RENDEZVOUS_MIN_S)))


def keepalive_seconds(timeout_s: float) -> float:
    """How long a sender may stay silent before it sends a keep-alive."""
    return timeout_s * KEEPALIVE_FRACTION


@dataclass(frozen=True)
class Link:
    """One direction's groups (see module docstring)."""

    control: Any
    data: Any


@dataclass(frozen=True)
class Links:
    ring: Link
    back: Link
    exchange: Any
    timeout_s: float


_opened: list[Links] = []


def open_links(world: int, backend: str, timeout_s: float) -> Links:
    """Every rank calls this once, right after joining, in the same order (``new_group`` is collective)."""
    ranks = list(range(world))
    timeout = timedelta(seconds=timeout_s)

    def link() -> Link:
        control = dist.new_group(ranks, timeout=timeout, backend="gloo")
        data = control if backend == "gloo" else dist.new_group(ranks, timeout=timeout, backend=backend)
        return Link(control, data)

    ring = link()
    back = link()
    exchange = dist.new_group(ranks, timeout=timeout, backend=backend)
    links = Links(ring, back, exchange, timeout_s)
    _opened[:] = [links]
    return links


def current_links() -> Links:
    """The links this process opened (RuntimeError before :func:`open_links`)."""
    if not _opened:
        raise RuntimeError("the pipeline-stage links are not open (open_links runs right after joining the process group)")
    return _opened[0]
