"""Batch buckets: pad a varying row count to a few fixed sizes so compiled graphs and engine profiles are reused.

The image driver's UNet row count changes with the number of ready
sessions (and their slots and CFG rows). A CUDA graph or a TensorRT profile
is built per shape, so rows are padded up to the next bucket (1, 2, 4, 8,
..., then multiples of the largest) by repeating the last row; the padded
rows' outputs are cut off before anyone sees them. Repeating a real row
(not zeros) keeps every padded row numerically ordinary (no NaN/Inf paths).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


def bucket_for(rows: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """The smallest bucket holding ``rows`` (beyond the largest: the next multiple of it)."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    for size in buckets:
        if rows <= size:
            return size
    largest = buckets[-1]
    return -(-rows // largest) * largest


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with its first dim padded to ``rows`` by repeating its last row."""
    missing = rows - tensor.shape[0]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])])


def bucketed(call: Callable[..., torch.Tensor], buckets: Sequence[int] = DEFAULT_BUCKETS) -> Callable[..., torch.Tensor]:
    """Wrap a row-batched call: every tensor argument whose first dim is the row count is padded to its bucket.

    Arguments whose first dim differs from the first argument's (shared
    tensors) and non-tensor arguments pass through; dict, list and tuple
    arguments (SDXL's added conditioning, ControlNet residuals) are padded
    entry by entry. The output is cut back (each tensor of a list or tuple
    output: a ControlNet's residuals).
    """

    def run(*args):
        rows = args[0].shape[0]
        size = bucket_for(rows, buckets)
        if size == rows:
            return call(*args)
        padded = [_pad_arg(a, rows, size) for a in args]
        return _cut(call(*padded), rows)

    run.__wrapped__ = call  # type: ignore[attr-defined]
    return run


def _pad_arg(value, rows: int, size: int):
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows:
        return pad_rows(value, size)
    if isinstance(value, dict):
        return {k: _pad_arg(v, rows, size) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_pad_arg(v, rows, size) for v in value)
    return value


def _cut(value, rows: int):
    if isinstance(value, (list, tuple)):
        return type(value)(_cut(v, rows) for v in value)
    return value[:rows]
