"""ControlNet image preprocessors: frames in, control images out.

Every preprocessor takes ``(N, 3, H, W)`` frames in [0, 1] and returns the
control image of the same shape, device and dtype in [0, 1], the convention
of diffusers' ControlNet conditioning images. Settings (from
:mod:`streamgen.preprocessor_settings`) are passed with each call;
:class:`PreprocessorBank` shares loaded estimators between sessions.
"""

from .bank import LoadedPreprocessor, PreprocessorBank, build_preprocessor
from .base import Preprocessor
from .blur import Blur, Tile
from .canny import Canny
from .depth import Depth, build_tiny_depth_model
from .edges import Lineart, SoftEdge
from .feedback import Feedback
from .passthrough import Passthrough
from .pose import Pose, build_tiny_pose_model, heatmaps_to_keypoints
from .pose_drawing import draw_pose

__all__ = [
    "Blur",
    "Canny",
    "Depth",
    "Feedback",
    "LoadedPreprocessor",
    "Lineart",
    "Passthrough",
    "Pose",
    "Preprocessor",
    "PreprocessorBank",
    "SoftEdge",
    "Tile",
    "build_preprocessor",
    "build_tiny_depth_model",
    "build_tiny_pose_model",
    "draw_pose",
    "heatmaps_to_keypoints",
]
