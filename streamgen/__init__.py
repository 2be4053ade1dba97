"""streamgen: real-time streaming diffusion for live video.

Public API::

    import streamgen
    stream = streamgen.ImageStream("tiny", prompt="a watercolor painting")
    out = stream(frame)

``import streamgen`` is cheap: the names that need torch and diffusers
(:class:`ImageStream`, :class:`VideoStream`, :class:`ImagePipeline`, ...) are
imported on first use (PEP 562), so the command line answers ``--help`` and
argument errors without loading them.
"""

from .threads import prefer_passive_waiting

prefer_passive_waiting()  # before anything imports torch (see streamgen.threads)

import importlib  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from .config import ModelSpec, StreamConfig, StreamParams, WeightedPrompt, WeightedSeed  # noqa: E402  (no torch)
from .errors import CapacityError, ConfigError, EngineError, InputError, ModelLoadError, StreamgenError  # noqa: E402

__version__ = "0.1.0"

# Public names whose modules import torch: loaded when first looked up.
_LAZY = {
    "ImagePipeline": ".pipeline",
    "ImageStreamState": ".pipeline",
    "StepOutput": ".pipeline",
    "ImageStream": ".stream",
    "load_pipeline": ".stream",
    "load_stream_pipeline": ".stream",
    "VideoStream": ".video_stream",
}

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import ImagePipeline, ImageStreamState, StepOutput
    from .stream import ImageStream, load_pipeline, load_stream_pipeline
    from .video_stream import VideoStream


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    """The public API only (``dir(streamgen)`` in a REPL, tab completion): not the helpers and submodules."""
    return sorted(__all__)


__all__ = [
    "CapacityError",
    "ConfigError",
    "EngineError",
    "ImagePipeline",
    "ImageStream",
    "ImageStreamState",
    "InputError",
    "ModelLoadError",
    "ModelSpec",
    "StepOutput",
    "StreamConfig",
    "StreamParams",
    "StreamgenError",
    "VideoStream",
    "WeightedPrompt",
    "WeightedSeed",
    "__version__",
    "load_pipeline",
    "load_stream_pipeline",
]
