"""Frame markers: a number drawn into a frame that survives video compression.

Glass-to-glass latency is measured by stamping a frame counter into each
input frame, remembering when the frame was handed to the sender, and
reading the counter back from the output frame when it arrives. The marker
is a grid of 8 x 4 large black/white cells in the top half of the frame:
24 bits of value and 8 check bits, so a frame whose marker was damaged (or
that is not a marked frame at all, like a diffusion model's output) reads as
``None`` instead of a wrong number. Cells are 1/8 of the width and 1/8 of the
height, so VP8 and H.264 at ordinary bitrates keep them intact from 128x128
up. The identity model (``--model identity``) returns frames unchanged, so
markers pass through it.
"""

from __future__ import annotations

import numpy as np

COLUMNS, ROWS = 8, 4
VALUE_BITS = 24
CHECK_BITS = COLUMNS * ROWS - VALUE_BITS
MAX_MARKER = (1 << VALUE_BITS) - 1
_WHITE, _BLACK = 235, 16


def _check(value: int) -> int:
    """8 check bits: a byte-wise sum and xor mix, so flipped cells rarely pass."""
    b0, b1, b2 = value & 0xFF, (value >> 8) & 0xFF, (value >> 16) & 0xFF
    return ((b0 + 3 * b1 + 7 * b2) ^ 0x5A) & 0xFF


def _bits(value: int) -> list[int]:
    word = (value << CHECK_BITS) | _check(value)
    total = VALUE_BITS + CHECK_BITS
    return [(word >> (total - 1 - i)) & 1 for i in range(total)]


def _cells(height: int, width: int):
    cell_w, cell_h = width // COLUMNS, (height // 2) // ROWS
    for i in range(COLUMNS * ROWS):
        row, col = divmod(i, COLUMNS)
        yield i, row * cell_h, col * cell_w, cell_h, cell_w


def stamp_marker(image: np.ndarray, value: int) -> np.ndarray:
    """Draw ``value`` (0..2^24-1) into the top half of an (H, W, 3) uint8 image, in place."""
    if not 0 <= value <= MAX_MARKER:
        raise ValueError(f"marker values are 0..{MAX_MARKER}, got {value}")
    bits = _bits(value)
    for i, top, left, cell_h, cell_w in _cells(*image.shape[:2]):
        image[top : top + cell_h, left : left + cell_w] = _WHITE if bits[i] else _BLACK
    return image


def read_marker(image: np.ndarray) -> int | None:
    """The value stamped into an (H, W, 3) uint8 image, or None when there is no intact marker."""
    height, width = image.shape[:2]
    if width < COLUMNS * 4 or height < ROWS * 8:
        return None
    word = 0
    for _, top, left, cell_h, cell_w in _cells(height, width):
        inner = image[top + cell_h // 4 : top + cell_h - cell_h // 4, left + cell_w // 4 : left + cell_w - cell_w // 4]
        level = float(inner.mean())
        if 60 < level < 190:  # neither black nor white: not a marker cell
            return None
        word = (word << 1) | (1 if level >= 128 else 0)
    value, check = word >> CHECK_BITS, word & ((1 << CHECK_BITS) - 1)
    return value if _check(value) == check else None
