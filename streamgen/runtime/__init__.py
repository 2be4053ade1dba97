"""HOW model components execute: torch eager, torch.compile (+ CUDA graphs), ONNX Runtime, TensorRT.

``models/`` says WHAT a component is and gives every component a *call
slot* (``ImageModel.unet_forward``, ``vae_encode_forward``,
``vae_decode_forward``, ``text_encode_forward``; ``VideoModel.forward_chunks``
...). The pipelines call components only through those slots. A backend
here builds a faster callable for a slot and installs it; the algorithm
never notices. :func:`accelerate` is the one entry point. Importing the
package is cheap (the names load torch on first use), so option checks can
name the backends without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .backend import ACCELERATIONS, Acceleration, backend_named, unavailable_reason

_LAZY = {"accelerate": ".accelerate", "preflight": ".accelerate"}

if TYPE_CHECKING:  # pragma: no cover
    from .accelerate import accelerate, preflight


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value


__all__ = ["ACCELERATIONS", "Acceleration", "accelerate", "backend_named", "preflight", "unavailable_reason"]
