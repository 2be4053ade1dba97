"""``depth``: monocular depth with Depth Anything (V1/V2: transformers' ``DepthAnythingForDepthEstimation``).

Follows the model's own preprocessing, done in torch on the frames' device
(no PIL): resize so the shorter side is ``resolution``, both sides rounded to
a multiple of 14 (the ViT patch), normalise with the ImageNet mean/std. The
model predicts relative inverse depth (larger = nearer), which is normalised
per image to [0, 1] (near = bright, the ControlNet depth convention), resized
back to H x W and replicated to three channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from .base import check_frames, finish, imagenet_normalise, normalise_range, resolve_settings

PATCH = 14
# Wider than the 0.02 of real checkpoints, so the random tiny model's depth is not all zeros after its final ReLU.
TINY_INIT_RANGE = 0.1


def model_input_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """The (h, w) fed to the model: shorter side about ``resolution``, both multiples of 14."""
    scale = resolution / min(height, width)
    return tuple(max(PATCH, round(side * scale / PATCH) * PATCH) for side in (height, width))


def build_tiny_depth_model(seed: int = 0) -> torch.nn.Module:
    """A random-weight Depth Anything with a tiny Dinov2 backbone (hidden 32, 4 layers), the same for a given seed."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config  # noqa: PLC0415

    backbone = Dinov2Config(
        image_size=518,
        patch_size=PATCH,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        out_indices=[1, 2, 3, 4],  # the neck takes four distinct feature levels
        reshape_hidden_states=False,
        initializer_range=TINY_INIT_RANGE,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 16, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        initializer_range=TINY_INIT_RANGE,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DepthAnythingForDepthEstimation(config)


class Depth:
    """Holds one loaded depth model; per-call settings pick the input resolution."""

    name = "depth"
    uses_previous_output = False

    def __init__(self, model: torch.nn.Module, source: str) -> None:
        self.model = model
        self.source = source

    def __call__(self, frames: torch.Tensor, settings=None, previous: torch.Tensor | None = None) -> torch.Tensor:
        s = resolve_settings(self.name, settings)
        if s.model != self.source:
            raise ConfigError(f"this depth preprocessor holds model {self.source!r}, not {s.model!r}; get one for it from PreprocessorBank.get")
        check_frames(frames)
        weight = next(self.model.parameters())
        height, width = frames.shape[2], frames.shape[3]
        x = frames.to(device=weight.device, dtype=torch.float32)
        x = F.interpolate(x, size=model_input_size(height, width, s.resolution), mode="bicubic", align_corners=False).clamp(0.0, 1.0)
        with torch.no_grad():
            depth = self.model(pixel_values=imagenet_normalise(x).to(weight.dtype)).predicted_depth
        depth = F.interpolate(depth.float().unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
        return finish(normalise_range(depth), frames)
