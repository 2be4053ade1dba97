"""Prompt conditioning of one stream: weighted blends and timed transitions.

A stream's conditioning is a weighted blend of prompt embeddings (linear or
per-token slerp). When the prompt changes with ``transition_frames`` k > 0 the
conditioning moves from where it was to the new blend over the next k
processed frames, so a live prompt change morphs instead of jumping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import Interpolation, WeightedPrompt
from ..models.image.image_model import PromptEmbedding
from .blend import interpolate, weighted_blend


def blend_prompts(
    prompts: tuple[WeightedPrompt, ...],
    method: Interpolation,
    encode: Callable[[str], PromptEmbedding],
) -> PromptEmbedding:
    """Encode each prompt and blend the embeddings by weight."""
    embeddings = [encode(p.text) for p in prompts]
    weights = [p.weight for p in prompts]
    hidden = weighted_blend([e.hidden for e in embeddings], weights, method, dim=-1)
    pooled = None
    if embeddings[0].pooled is not None:
        pooled = weighted_blend([e.pooled for e in embeddings], weights, method, dim=-1)
    return PromptEmbedding(hidden=hidden, pooled=pooled)


def interpolate_prompt(a: PromptEmbedding, b: PromptEmbedding, t: float, method: Interpolation) -> PromptEmbedding:
    hidden = interpolate(a.hidden, b.hidden, t, method, dim=-1)
    pooled = None if a.pooled is None else interpolate(a.pooled, b.pooled, t, method, dim=-1)
    return PromptEmbedding(hidden=hidden, pooled=pooled)


@dataclass
class PromptTransition:
    """The conditioning in use and, during a transition, where it is heading."""

    current: PromptEmbedding
    start: PromptEmbedding | None = None
    target: PromptEmbedding | None = None
    method: Interpolation = "linear"
    frames_done: int = 0
    frames_total: int = 0

    @property
    def in_progress(self) -> bool:
        return self.target is not None

    def retarget(self, target: PromptEmbedding, frames: int, method: Interpolation) -> None:
        """Head for ``target``: immediately when ``frames`` is 0, else over ``frames`` steps."""
        if frames <= 0:
            self.current, self.start, self.target = target, None, None
            return
        self.start, self.target, self.method = self.current, target, method
        self.frames_done, self.frames_total = 0, frames

    def advance(self) -> None:
        """Move one processed frame along the transition."""
        if self.target is None:
            return
        self.frames_done += 1
        t = self.frames_done / self.frames_total
        if t >= 1.0:
            self.current, self.start, self.target = self.target, None, None
        else:
            self.current = interpolate_prompt(self.start, self.target, t, self.method)
