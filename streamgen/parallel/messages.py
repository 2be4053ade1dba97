"""The wire format between stage ranks: a JSON header and tensors, over point-to-point ``torch.distributed`` calls.

A message is an operation name, a small JSON-able ``meta`` dict and a list of
tensors. On the wire it is a fixed two-int header (length of the JSON,
number of tensors), the JSON bytes, then each tensor; the JSON lists every
tensor's dtype and shape so the receiver can allocate before receiving.
JSON rather than pickle: a peer can only make a rank allocate tensors and
run the operations it knows, never run code.

Sends are asynchronous (``isend``); :class:`Sender` keeps the tensors of
unfinished sends alive and bounds how many messages may be in flight, so a
fast rank cannot queue unbounded activations for a slow one. With NCCL
every tensor, the header included, lives on the rank's GPU; with gloo on
the CPU.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

HEADER_INTS = 2
DTYPES = {str(t).removeprefix("torch."): t for t in (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.uint8)}


@dataclass
class Message:
    """One operation for a stage rank (see module docstring)."""

    op: str
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: list[torch.Tensor] = field(default_factory=list)


class Sender:
    """Asynchronous sends to one peer with at most ``max_in_flight`` unfinished messages."""

    def __init__(self, peer: int, device: torch.device, max_in_flight: int = 2, group: Any = None) -> None:
        self.peer = peer
        self.device = device
        self.max_in_flight = max_in_flight
        self.group = group
        self._in_flight: deque[tuple[list[Any], list[torch.Tensor]]] = deque()

    def send(self, message: Message) -> None:
        while len(self._in_flight) >= self.max_in_flight:
            self._wait_oldest()
        tensors = [t.detach().to(self.device).contiguous() for t in message.tensors]
        described = {
            "op": message.op,
            "meta": message.meta,
            "tensors": [[str(t.dtype).removeprefix("torch."), list(t.shape)] for t in tensors],
        }
        body = torch.frombuffer(bytearray(json.dumps(described).encode("utf-8")), dtype=torch.uint8).to(self.device)
        header = torch.tensor([body.numel(), len(tensors)], dtype=torch.int64, device=self.device)
        parts = [header, body, *tensors]
        works = [dist.isend(part, self.peer, group=self.group) for part in parts]
        self._in_flight.append((works, parts))

    def flush(self) -> None:
        """Wait until every message sent so far has left."""
        while self._in_flight:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        works, _ = self._in_flight.popleft()
        for work in works:
            work.wait()


def receive(peer: int, device: torch.device, group: Any = None) -> Message:
    """The next message from ``peer`` (blocks)."""
    header = torch.empty(HEADER_INTS, dtype=torch.int64, device=device)
    dist.recv(header, peer, group=group)
    length, count = (int(v) for v in header.tolist())
    body = torch.empty(length, dtype=torch.uint8, device=device)
    dist.recv(body, peer, group=group)
    described = json.loads(bytes(body.cpu().numpy()).decode("utf-8"))
    if len(described["tensors"]) != count:
        raise RuntimeError(f"a stage message announced {count} tensors but describes {len(described['tensors'])}")
    tensors = []
    for dtype_name, shape in described["tensors"]:
        tensor = torch.empty(shape, dtype=DTYPES[dtype_name], device=device)
        dist.recv(tensor, peer, group=group)
        tensors.append(tensor)
    return Message(described["op"], described["meta"], tensors)


_groups: dict[str, Any] = {}


def open_side_channels(world: int) -> None:
    """Every rank calls this once, right after joining (in the same order): the channels besides the ring.

    - **return**: the last rank's results to rank 0. On two stages the ring
      (0 → 1) and the results (1 → 0) join the same two ranks; rank 0 sends
      from one thread and receives on another, and on one NCCL communicator
      a receive waiting for data would hold up the send queued behind it
      while the peer waits for that send. Separate groups are separate
      communicators;
    - **exchange**: blocks moved by a rebalance (:mod:`.rebalance`), beside
      both, so that no receiver takes a block's tensor for a message header.
    """
    for name in ("return", "exchange"):
        _groups[name] = dist.new_group(list(range(world)))


def return_group() -> Any:
    return _groups.get("return")


def exchange_group() -> Any:
    return _groups.get("exchange")
