"""CUDA streams for the threads of a stage rank, and the CPU stand-ins that make the same code run without a GPU.

On a GPU every thread that touches the device gets a stream of its own:
rank 0's executor computes on one, its sender's copies and NCCL sends are
ordered after that work with an event (not a device-wide synchronize), its
receiver's NCCL receives land on a third. Work that must be finished before
the host reads a number (a stage time, a send that must have left) waits for
*its own* stream only, so no thread ever waits for another thread's work.
On the CPU every call here is a no-op or a plain ``perf_counter``.

``torch.cuda.set_device`` is per thread in CUDA: each of these threads binds
its rank's device first (:func:`bind_device`), so events, streams and
allocations land on that GPU and not on ``cuda:0``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch


def bind_device(device: torch.device) -> None:
    """Make ``device`` this thread's current CUDA device (nothing on the CPU)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def new_stream(device: torch.device) -> Any:
    """A stream of its own on ``device`` (None on the CPU)."""
    return torch.cuda.Stream(device=device) if device.type == "cuda" else None


@contextlib.contextmanager
def on_stream(stream: Any) -> Iterator[None]:
    """Queue the work inside on ``stream`` (nothing on the CPU)."""
    if stream is None:
        yield
        return
    with torch.cuda.stream(stream):
        yield


def mark(device: torch.device) -> Any:
    """An event recorded after the work queued so far on this thread's current stream (None on the CPU)."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


def wait_for(stream: Any, event: Any) -> None:
    """Order ``stream``'s later work after ``event`` (device side; the host does not wait)."""
    if stream is not None and event is not None:
        stream.wait_event(event)


def finished(device: torch.device) -> float:
    """``perf_counter`` once this thread's current stream has finished its queued work (not the whole device's)."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return time.perf_counter()


def hand_over(tensors: list[torch.Tensor], device: torch.device) -> None:
    """Tensors received on a private stream go to code on the device's default stream: the allocator must know.

    The receiver synchronised its stream, so the values are there; without
    ``record_stream`` the allocator could give the memory back to the
    receiver's next allocation while the consumer's kernels still read it.
    """
    if device.type != "cuda":
        return
    consumer = torch.cuda.default_stream(device)
    for tensor in tensors:
        if tensor.is_cuda:
            tensor.record_stream(consumer)
