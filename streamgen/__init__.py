"""streamgen: real-time streaming diffusion for live video.

Public API::

    import streamgen
    stream = streamgen.ImageStream("tiny", prompt="a watercolor painting")
    out = stream(frame)
"""

from .threads import prefer_passive_waiting

prefer_passive_waiting()  # before anything below imports torch (see streamgen.threads)

from .config import ModelSpec, StreamConfig, StreamParams, WeightedPrompt, WeightedSeed
from .errors import CapacityError, ConfigError, EngineError, InputError, ModelLoadError, StreamgenError
from .pipeline import ImagePipeline, ImageStreamState, StepOutput
from .stream import ImageStream, load_pipeline, load_stream_pipeline
from .video_stream import VideoStream

__version__ = "0.1.0"

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
