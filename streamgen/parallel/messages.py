"""The wire format between stage ranks: a JSON header on the control group, then the tensors it announced on the data group.

A message is an operation name, a small JSON-able ``meta`` dict and a list of
tensors. On a :class:`~.links.Link` it is a fixed two-int header (length of
the JSON, number of tensors) and the JSON bytes, both on the gloo control
group; the JSON lists every tensor's dtype and shape, so the receiver
allocates them and only then posts their receives on the data group (NCCL
between GPUs). JSON rather than pickle: a peer can only make a rank
allocate tensors and run the operations it knows, never run code.

:class:`Sender`:

- orders its copies and sends after the work the caller queued (an event
  on the caller's stream, its own CUDA stream), never a device-wide sync;
- bounds the messages in flight *on the host* (under NCCL ``work.wait()``
  only orders streams, so it also synchronises its own stream), and keeps
  the tensors of unfinished sends alive;
- sends a keep-alive (``idle``) when it has sent nothing for a while, so a
  receiver waiting through a quiet hour never hits the process group's
  timeout (:func:`~.links.keepalive_seconds`); :func:`receive` skips them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from .device_streams import bind_device, hand_over, mark, new_stream, on_stream, wait_for
from .links import Link

logger = logging.getLogger(__name__)

HEADER_INTS = 2
IDLE = "idle"
DTYPES = {str(t).removeprefix("torch."): t for t in (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.uint8)}


@dataclass
class Message:
    """One operation for a stage rank (see module docstring)."""

    op: str
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: list[torch.Tensor] = field(default_factory=list)


def encode_header(message: Message, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The two CPU tensors that go on the control group: ``[length, count]`` and the JSON bytes."""
    described = {
        "op": message.op,
        "meta": message.meta,
        "tensors": [[str(t.dtype).removeprefix("torch."), list(t.shape)] for t in tensors],
    }
    body = torch.frombuffer(bytearray(json.dumps(described).encode("utf-8")), dtype=torch.uint8)
    return torch.tensor([body.numel(), len(tensors)], dtype=torch.int64), body


def decode_header(body: torch.Tensor, count: int) -> tuple[str, dict[str, Any], list[tuple[torch.dtype, list[int]]]]:
    """The op, meta and announced tensors of a header (RuntimeError when it contradicts itself)."""
    described = json.loads(bytes(body.numpy()).decode("utf-8"))
    announced = described["tensors"]
    if len(announced) != count:
        raise RuntimeError(f"a stage message announced {count} tensors but describes {len(announced)}")
    tensors = []
    for dtype_name, shape in announced:
        if dtype_name not in DTYPES:
            raise RuntimeError(f"a stage message announced a tensor of unknown dtype {dtype_name!r}")
        tensors.append((DTYPES[dtype_name], [int(n) for n in shape]))
    return described["op"], described["meta"], tensors


class Sender:
    """Sends to one peer over one link, at most ``max_in_flight`` unfinished messages, with keep-alives (see module docstring)."""

    def __init__(
        self, peer: int, link: Link, device: torch.device, *, max_in_flight: int = 2, keepalive_s: float | None = None, name: str = "sender"
    ) -> None:
        self.peer = peer
        self.link = link
        self.device = device
        self.max_in_flight = max_in_flight
        self.sent = 0
        self._lock = threading.Lock()
        self._in_flight: deque[tuple[list[Any], list[torch.Tensor]]] = deque()
        self._stream = new_stream(device)
        self._last_sent = time.monotonic()
        self._stopped = threading.Event()
        self._ticker: threading.Thread | None = None
        if keepalive_s is not None:
            self._ticker = threading.Thread(target=self._keep_alive, args=(keepalive_s,), name=f"{name}-keepalive", daemon=True)
            self._ticker.start()

    def send(self, message: Message) -> None:
        ready = mark(self.device)  # the caller's work that made the tensors
        with self._lock:
            while len(self._in_flight) >= self.max_in_flight:
                self._wait_oldest()
            with on_stream(self._stream):
                wait_for(self._stream, ready)
                tensors = [t.detach().to(self.device).contiguous() for t in message.tensors]
                header, body = encode_header(message, tensors)
                works = [dist.isend(header, self.peer, group=self.link.control), dist.isend(body, self.peer, group=self.link.control)]
                works += [dist.isend(t, self.peer, group=self.link.data) for t in tensors]
            self._in_flight.append((works, [header, body, *tensors]))
            self._last_sent = time.monotonic()
            if message.op != IDLE:
                self.sent += 1

    def flush(self) -> None:
        """Wait until every message sent so far has left."""
        with self._lock:
            while self._in_flight:
                self._wait_oldest()

    def close(self) -> None:
        """Stop the keep-alives (before the last message: the peer exits after it)."""
        self._stopped.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(5.0)

    def _wait_oldest(self) -> None:
        works, _ = self._in_flight.popleft()
        with on_stream(self._stream):
            for work in works:
                work.wait()  # gloo: the host waits; NCCL: the sender's stream does
        if self._stream is not None:
            self._stream.synchronize()

    def _keep_alive(self, interval: float) -> None:
        bind_device(self.device)
        while not self._stopped.wait(min(interval, 1.0)):
            if time.monotonic() - self._last_sent < interval:
                continue
            try:
                self.send(Message(IDLE))
            except (RuntimeError, ValueError) as error:  # the link broke or the group is gone: whoever uses it next reports that
                logger.debug("stage keep-alive to rank %d stopped: %s", self.peer, error)
                return


def receive(peer: int, link: Link, device: torch.device, stream: Any = None) -> Message:
    """The next message from ``peer`` over ``link`` (blocks; keep-alives are skipped).

    Tensors land on ``stream`` when given (a receiver thread's own stream)
    and are complete when this returns.
    """
    while True:
        header = torch.empty(HEADER_INTS, dtype=torch.int64)
        dist.recv(header, peer, group=link.control)
        length, count = (int(v) for v in header.tolist())
        body = torch.empty(length, dtype=torch.uint8)
        dist.recv(body, peer, group=link.control)
        op, meta, announced = decode_header(body, count)
        if op == IDLE and not announced:
            continue
        tensors = []
        with on_stream(stream):
            for dtype, shape in announced:
                tensor = torch.empty(shape, dtype=dtype, device=device)
                dist.recv(tensor, peer, group=link.data)
                tensors.append(tensor)
        if stream is not None:
            stream.synchronize()
            hand_over(tensors, device)
        return Message(op, meta, tensors)
