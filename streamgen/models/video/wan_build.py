"""Build Wan transformers from configs without downloading weights (shipped configs, dummy and tiny weights).

``streamgen/models/configs/wan-1.3b`` and ``wan-14b`` hold the real
``WanTransformer3DModel`` configs of Wan2.1 T2V, so ``weights="dummy"``
builds the true architecture with random weights (for benchmarks of speed,
which does not depend on weight values) and tests can check true sizes on
the ``meta`` device. Parameters are created directly on the target device
and dtype, and initialisation is seeded without touching the caller's RNG.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .causal_wan import CausalWanTransformer
from ..loading.dummy import building_on
from ..loading.shipped_configs import component_config, shipped_config_dir

WAN_CONFIG_NAMES = ("wan-1.3b", "wan-14b")


def wan_transformer_config(name: str) -> dict[str, Any]:
    """The shipped ``transformer/config.json`` of ``wan-1.3b`` or ``wan-14b``."""
    return component_config(shipped_config_dir(name), "transformer")


def build_wan_transformer(
    config: Mapping[str, Any],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> torch.nn.Module:
    """A diffusers ``WanTransformer3DModel`` with random weights, built in place on ``device``/``dtype``."""
    from diffusers import WanTransformer3DModel  # noqa: PLC0415

    device = torch.device(device)
    settings = {k: v for k, v in config.items() if not k.startswith("_")}
    with seeded(seed, device), building_on(device, dtype):
        model = WanTransformer3DModel.from_config(settings)
    return model.eval().requires_grad_(False)


def build_dummy_causal_wan(
    name: str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> CausalWanTransformer:
    """The real ``wan-1.3b`` / ``wan-14b`` architecture with random weights (``weights="dummy"``)."""
    return CausalWanTransformer(build_wan_transformer(wan_transformer_config(name), device=device, dtype=dtype, seed=seed))


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Deterministic random init for ``seed`` without disturbing the caller's RNG state."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
