"""``pose``: body pose with ViTPose (transformers' ``VitPoseForPoseEstimation``), drawn as an OpenPose-style skeleton.

ViTPose is a top-down estimator: it expects one person box. Here the whole
frame is that box: it is padded with black to the model's aspect ratio
(centred, as the model's own affine crop would), resized to the model input
(256 x 192 for the published checkpoints) and normalised with the ImageNet
mean/std, all in torch on the device. Each COCO-17 heatmap gives a keypoint
(argmax, moved a quarter pixel towards the larger neighbour, the classic
SimpleBaseline refinement) and a confidence (the heatmap peak), mapped back
to frame pixels and drawn by :func:`~.pose_drawing.draw_pose`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from .base import check_frames, finish, imagenet_normalise, resolve_settings
from .pose_drawing import draw_pose


def build_tiny_pose_model(seed: int = 0) -> torch.nn.Module:
    """A random-weight ViTPose (hidden 32, 2 layers, 64 x 48 input, 17 keypoints), the same for a given seed."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation  # noqa: PLC0415

    backbone = VitPoseBackboneConfig(
        image_size=[64, 48], patch_size=[8, 8], hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, out_indices=[2]
    )
    config = VitPoseConfig(backbone_config=backbone, num_labels=17, scale_factor=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VitPoseForPoseEstimation(config)


def heatmaps_to_keypoints(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, h, w) heatmaps -> (N, K, 2) xy in heatmap pixels and (N, K) peak values."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.float().reshape(n, k, h * w)
    scores, index = flat.max(dim=-1)
    x, y = (index % w), (index // w)

    def at(dx: int, dy: int) -> torch.Tensor:
        xi, yi = (x + dx).clamp(0, w - 1), (y + dy).clamp(0, h - 1)
        return flat.gather(-1, (yi * w + xi).unsqueeze(-1)).squeeze(-1)

    shift_x = 0.25 * torch.sign(at(1, 0) - at(-1, 0))
    shift_y = 0.25 * torch.sign(at(0, 1) - at(0, -1))
    return torch.stack([x.float() + shift_x, y.float() + shift_y], dim=-1), scores


def letterbox(height: int, width: int, model_height: int, model_width: int) -> tuple[int, int, int, int]:
    """Padding (left, right, top, bottom) that gives an ``height`` x ``width`` frame the model's aspect ratio."""
    if width * model_height > height * model_width:  # too wide: pad top and bottom
        extra = round(width * model_height / model_width) - height
        return 0, 0, extra // 2, extra - extra // 2
    extra = round(height * model_width / model_height) - width
    return extra // 2, extra - extra // 2, 0, 0


class Pose:
    """Holds one loaded ViTPose model; per-call settings pick the confidence threshold and line width."""

    name = "pose"
    uses_previous_output = False

    def __init__(self, model: torch.nn.Module, source: str) -> None:
        self.model = model
        self.source = source

    def __call__(self, frames: torch.Tensor, settings=None, previous: torch.Tensor | None = None) -> torch.Tensor:
        s = resolve_settings(self.name, settings)
        if s.model != self.source:
            raise ConfigError(f"this pose preprocessor holds model {self.source!r}, not {s.model!r}; get one for it from PreprocessorBank.get")
        check_frames(frames)
        keypoints, scores = self.keypoints(frames)
        skeleton = draw_pose(keypoints, scores, frames.shape[2], frames.shape[3], s.min_confidence, s.line_width)
        return finish(skeleton, frames)

    def keypoints(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """COCO-17 keypoints of the one person each frame is taken to hold: (N, 17, 2) xy in frame pixels, (N, 17) confidences."""
        weight = next(self.model.parameters())
        config = self.model.config.backbone_config
        model_height, model_width = config.image_size
        height, width = frames.shape[2], frames.shape[3]
        left, right, top, bottom = letterbox(height, width, model_height, model_width)
        x = F.pad(frames.to(device=weight.device, dtype=torch.float32), (left, right, top, bottom), value=0.0)
        x = F.interpolate(x, size=(model_height, model_width), mode="bilinear", antialias=True, align_corners=False)
        inputs = {"pixel_values": imagenet_normalise(x).to(weight.dtype)}
        if getattr(config, "num_experts", 1) > 1:  # ViTPose+ checkpoints: expert 0 is COCO
            inputs["dataset_index"] = torch.zeros(x.shape[0], dtype=torch.long, device=weight.device)
        with torch.no_grad():
            heatmaps = self.model(**inputs).heatmaps
        points, scores = heatmaps_to_keypoints(heatmaps)
        scale = torch.tensor([(width + left + right) / heatmaps.shape[3], (height + top + bottom) / heatmaps.shape[2]], device=points.device)
        offset = torch.tensor([left, top], device=points.device, dtype=torch.float32)
        return (points + 0.5) * scale - 0.5 - offset, scores
