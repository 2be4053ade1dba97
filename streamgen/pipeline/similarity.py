"""Stochastic similarity filter: skip model work on frames that barely changed.

For an input x and the last PROCESSED input y, with cosine similarity c and
threshold η, the skip probability is p = max(0, 1 − (1 − c)/(1 − η)): a frame
identical to the last processed one is skipped surely, one below the threshold
never. A skipped frame returns the previous output. At most ``max_skip``
frames in a row are skipped, and the counter resets whenever a frame is
processed (the reference implementation forgot the reset, so after the first
forced frame it never skipped again). Randomness comes from a per-session
seeded generator, so a run is reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch


def skip_probability(cosine: float, threshold: float) -> float:
    """p = max(0, 1 − (1 − cos)/(1 − η)), clipped to [0, 1]."""
    return min(1.0, max(0.0, 1.0 - (1.0 - cosine) / (1.0 - threshold)))


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors flattened to vectors (one host sync)."""
    a, b = a.reshape(-1).float(), b.reshape(-1).float()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@dataclass
class SimilarityFilter:
    """Per-session filter state: last processed input, run of skips, seeded RNG."""

    seed: int = 0
    last_processed: torch.Tensor | None = None
    consecutive_skips: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def should_skip(self, frame: torch.Tensor, threshold: float, max_skip: int) -> bool:
        """Decide for ``frame``; remembers it as the reference when it is processed."""
        if self.last_processed is None or self.last_processed.shape != frame.shape:
            self.mark_processed(frame)
            return False
        probability = skip_probability(cosine_similarity(frame, self.last_processed), threshold)
        if self.consecutive_skips < max_skip and self.rng.random() < probability:
            self.consecutive_skips += 1
            return True
        self.mark_processed(frame)
        return False

    def mark_processed(self, frame: torch.Tensor) -> None:
        """Remember ``frame`` as the last processed input and end the run of skips."""
        self.last_processed = frame
        self.consecutive_skips = 0

    def reset(self) -> None:
        self.last_processed = None
        self.consecutive_skips = 0
