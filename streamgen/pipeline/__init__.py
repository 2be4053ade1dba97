"""Pure-torch stream algorithms: no I/O, no asyncio, no per-session state in shared objects."""

from .image import ImagePipeline
from .image_state import ImageStreamState
from .output import StepOutput, StreamCounters, StreamPipeline

__all__ = ["ImagePipeline", "ImageStreamState", "StepOutput", "StreamCounters", "StreamPipeline"]
