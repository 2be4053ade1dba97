"""Cross-attention keys and values of a prompt, computed once and reused for every chunk.

Wan's cross-attention attends from the video tokens to the text tokens. The
text side (text projection, ``to_k``/``norm_k``, ``to_v`` of every block)
depends on the prompt only, so a stream computes it when the prompt changes
and every chunk after that runs only the query side. All layers are stacked
in one tensor so that selecting rows, concatenating sessions or blending two
prompts is a single tensor operation, whatever the depth of the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...errors import InputError


@dataclass(frozen=True)
class CrossAttentionContext:
    """Per-block cross-attention K/V, ``(num_layers, rows, heads, text_len, head_dim)`` each (SDPA layout)."""

    keys: torch.Tensor
    values: torch.Tensor

    @property
    def rows(self) -> int:
        return self.keys.shape[1]

    @property
    def num_layers(self) -> int:
        return self.keys.shape[0]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[index], self.values[index]

    def select(self, rows: torch.Tensor | Sequence[int] | slice) -> CrossAttentionContext:
        """The context of some rows (index tensor, list or slice)."""
        if isinstance(rows, slice):
            return CrossAttentionContext(self.keys[:, rows], self.values[:, rows])
        index = torch.as_tensor(rows, device=self.keys.device, dtype=torch.long)
        return CrossAttentionContext(self.keys.index_select(1, index), self.values.index_select(1, index))

    def expand(self, rows: int) -> CrossAttentionContext:
        """A one-row context seen as ``rows`` rows (a view, no copy)."""
        if self.rows == rows:
            return self
        if self.rows != 1:
            raise InputError(f"cannot expand a context of {self.rows} rows to {rows} rows")
        shape = (self.num_layers, rows, *self.keys.shape[2:])
        return CrossAttentionContext(self.keys.expand(shape), self.values.expand(shape))

    def lerp(self, other: CrossAttentionContext, weight: float | torch.Tensor) -> CrossAttentionContext:
        """``(1 - weight) * self + weight * other``; a tensor weight of shape ``(rows,)`` blends per row."""
        if other.keys.shape != self.keys.shape:
            raise InputError(f"cannot blend contexts of shapes {tuple(self.keys.shape)} and {tuple(other.keys.shape)}")
        if isinstance(weight, torch.Tensor) and weight.ndim == 1:
            weight = weight.to(self.keys.device, self.keys.dtype).view(1, -1, 1, 1, 1)
        return CrossAttentionContext(
            torch.lerp(self.keys, other.keys, weight), torch.lerp(self.values, other.values, weight)
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CrossAttentionContext:
        return CrossAttentionContext(self.keys.to(device, dtype), self.values.to(device, dtype))

    @staticmethod
    def concat(contexts: Sequence[CrossAttentionContext]) -> CrossAttentionContext:
        """Rows of several contexts (e.g. several sessions) in one batch."""
        if not contexts:
            raise InputError("concat needs at least one context")
        lengths = {c.keys.shape[3] for c in contexts}
        if len(lengths) != 1:
            raise InputError(f"contexts have different text lengths {sorted(lengths)}; pad prompts to one length")
        return CrossAttentionContext(
            torch.cat([c.keys for c in contexts], dim=1), torch.cat([c.values for c in contexts], dim=1)
        )


def blend_contexts(a: CrossAttentionContext, b: CrossAttentionContext, weight: float | torch.Tensor) -> CrossAttentionContext:
    """Linear blend of two prompts' contexts (for prompt transitions)."""
    return a.lerp(b, weight)
