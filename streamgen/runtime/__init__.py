"""HOW model components execute: torch eager, torch.compile (+ CUDA graphs), ONNX Runtime, TensorRT.

``models/`` says WHAT a component is and gives every component a *call
slot* (``ImageModel.unet_forward``, ``vae_encode_forward``,
``vae_decode_forward``, ``text_encode_forward``; ``VideoModel.forward_chunks``
...). The pipelines call components only through those slots. A backend
here builds a faster callable for a slot and installs it; the algorithm
never notices. :func:`accelerate` is the one entry point.
"""

from .accelerate import accelerate, preflight
from .backend import ACCELERATIONS, Acceleration, backend_named, unavailable_reason

__all__ = ["ACCELERATIONS", "Acceleration", "accelerate", "backend_named", "preflight", "unavailable_reason"]
