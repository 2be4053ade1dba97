"""The per-row IP-Adapter scale: diffusers' IP-Adapter processors, with every ``to_v_ip`` scaled per row.

diffusers' processors add ``scale * softmax(q k_ip^T) v_ip`` with ONE scalar
scale for the whole batch. :func:`attach_ip_adapter` loads the adapter with
diffusers' own loader and then replaces each ``to_v_ip`` projection by a
:class:`RowScaledLinear`, which multiplies output row ``b`` by a factor
``s_b`` while a call is in progress. Since attention is linear in the values,
row ``b`` then gets exactly ``s_b`` times the adapter's attention, and a row
with ``s_b = 0`` gets exactly nothing added.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from ...errors import InputError
from .ip_adapter_weights import StateDict

MODELING_LOGGER = "diffusers.models.modeling_utils"


class RowScale:
    """The per-row factors of the UNet call in progress, shared by every RowScaledLinear of an adapter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None  # (B,) on the UNet's device and dtype, or None: factor 1


class RowScaledLinear(torch.nn.Linear):
    """A ``to_v_ip`` projection whose output row ``b`` is multiplied by a per-row factor while one is set.

    It takes over the original layer's parameters (same names, so the UNet's
    state dict keys do not change) and is still an ``nn.Linear``.
    """

    def __init__(self, linear: torch.nn.Linear, row_scale: RowScale) -> None:
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        self.row_scale = row_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        scale = self.row_scale.value
        if scale is None:
            return out
        if scale.shape[0] != out.shape[0]:
            raise InputError(f"IP-Adapter row scales are set for {scale.shape[0]} rows, but the UNet call has {out.shape[0]}.")
        return out * scale.view(-1, *([1] * (out.ndim - 1)))


def attach_ip_adapter(unet: torch.nn.Module, state_dict: StateDict) -> tuple[list[Any], RowScale]:
    """Load the adapter into ``unet`` with diffusers' loader, then wrap every ``to_v_ip``; returns the IP processors."""
    with _quiet_same_dtype_cast(), torch.random.fork_rng(devices=[]):  # its layers' random init: not the caller's RNG
        unet._load_ip_adapter_weights([state_dict], low_cpu_mem_usage=False)
    unet.encoder_hid_proj.eval().requires_grad_(False)
    row_scale = RowScale()
    processors = [p for p in unet.attn_processors.values() if hasattr(p, "to_v_ip")]
    for processor in processors:
        processor.eval().requires_grad_(False)
        for index, linear in enumerate(processor.to_v_ip):
            processor.to_v_ip[index] = RowScaledLinear(linear, row_scale)
    return processors, row_scale


@contextlib.contextmanager
def _quiet_same_dtype_cast() -> Iterator[None]:
    """diffusers' loader ends with ``unet.to(unet.dtype)``, a no-op cast that still logs a float32 warning."""

    def keep(record: logging.LogRecord) -> bool:
        return "should be kept in float32" not in record.getMessage()

    log = logging.getLogger(MODELING_LOGGER)
    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def check_scales(scale_per_row: Any) -> torch.Tensor:
    """Per-row scales as a float32 (rows,) tensor; InputError unless 1-D and finite."""
    scales = torch.as_tensor(scale_per_row, dtype=torch.float32)
    if scales.ndim != 1:
        raise InputError(f"IP-Adapter scales must be one number per row, shape (rows,), got {tuple(scales.shape)}.")
    if not bool(torch.isfinite(scales).all()):
        raise InputError(f"IP-Adapter scales must be finite, got {scales.tolist()}.")
    return scales
