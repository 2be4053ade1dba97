"""Pure-torch stream algorithms: no I/O, no asyncio, no per-session state in shared objects."""

from .contract import Capabilities, StepShape, StreamPipeline, StreamShape
from .identity import IdentityPipeline
from .image import ImagePipeline
from .image_state import ImageStreamState
from .output import StepOutput, StreamCounters

__all__ = [
    "Capabilities", "IdentityPipeline", "ImagePipeline", "ImageStreamState", "StepOutput", "StepShape", "StreamCounters",
    "StreamPipeline", "StreamShape",
]
