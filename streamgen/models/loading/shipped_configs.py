"""The model configurations that ship inside streamgen (JSON only, no weights).

``streamgen/models/configs/<name>/`` is laid out like a diffusers model
directory without weight files (``model_index.json``, ``unet/config.json``,
``text_encoder/config.json``, ...). The same folder serves three purposes:

- ``weights="dummy"`` builds the real architecture from it with random weights;
- single-file checkpoints use it as diffusers' ``config=`` so no config has to
  be downloaded;
- tests read the real sizes (channels, layers) from it.

``taesd`` and ``taesdxl`` hold the AutoencoderTiny configs of the tiny VAEs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIGS_ROOT = Path(__file__).resolve().parent.parent / "configs"

# Which shipped folder describes each family's tiny VAE (TAESD for SD 1.x/2.x, TAESDXL for SDXL).
TINY_VAE_CONFIGS = {"sd": "taesd", "sdxl": "taesdxl"}


def shipped_config_dir(name: str) -> Path:
    """The folder of a shipped configuration (``sd-turbo``, ``sd15``, ``sdxl-turbo``, ``taesd``, ...)."""
    folder = CONFIGS_ROOT / name
    if not folder.is_dir():
        available = ", ".join(sorted(p.name for p in CONFIGS_ROOT.iterdir() if p.is_dir()))
        raise KeyError(f"no shipped config {name!r}; available: {available}")
    return folder


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def component_config(folder: Path, component: str) -> dict[str, Any]:
    """``<folder>/<component>/config.json`` (or the scheduler's ``scheduler_config.json``)."""
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    return read_json(folder / component / name)
