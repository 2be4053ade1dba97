"""Drawing body keypoints as the OpenPose-style skeleton ControlNet pose models are trained on.

ControlNet openpose models saw OpenPose's 18-point body layout drawn on
black: 17 limbs, each its own colour from an evenly spaced hue wheel (limbs
at 60 % brightness, joints at full brightness on top). Pose estimators give
COCO-17 keypoints, so the neck (point 1 of OpenPose) is added as the middle of
the shoulders and the points are reordered.

Rendering is vectorised: the distance of every pixel to every limb segment
and joint at once (memory about N x 18 x H x W floats), the last-drawn shape
winning where they overlap, as in a painter's drawing. Keypoints below the
confidence threshold are left out, and so are limbs touching them.
"""

from __future__ import annotations

import colorsys

import torch

# OpenPose body-18 point -> COCO-17 point (-1: the neck, made from the shoulders).
OPENPOSE_FROM_COCO = (0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
COCO_LEFT_SHOULDER, COCO_RIGHT_SHOULDER = 5, 6
# Limbs as pairs of OpenPose points, in drawing order.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
LIMB_BRIGHTNESS = 0.6


def palette(count: int = 18) -> torch.Tensor:
    """``count`` fully saturated colours around the hue wheel, starting at red: (count, 3) in [0, 1]."""
    return torch.tensor([colorsys.hsv_to_rgb(i / count, 1.0, 1.0) for i in range(count)], dtype=torch.float32)


def coco_to_openpose(keypoints: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 17, 2) xy and (N, 17) scores in COCO order -> (N, 18, 2) and (N, 18) in OpenPose order."""
    neck = (keypoints[:, COCO_LEFT_SHOULDER] + keypoints[:, COCO_RIGHT_SHOULDER]) / 2
    neck_score = torch.minimum(scores[:, COCO_LEFT_SHOULDER], scores[:, COCO_RIGHT_SHOULDER])
    index = torch.tensor([max(i, 0) for i in OPENPOSE_FROM_COCO], device=keypoints.device)
    points, point_scores = keypoints[:, index].clone(), scores[:, index].clone()
    points[:, 1], point_scores[:, 1] = neck, neck_score
    return points, point_scores


def _near_segments(height: int, width: int, start: torch.Tensor, end: torch.Tensor, radius: float) -> torch.Tensor:
    """Which pixel centres lie within ``radius`` of each of the (N, S, 2) xy segments -> (N, S, H, W) bool."""
    ax, ay = start[..., 0, None, None], start[..., 1, None, None]
    dx, dy = (end - start)[..., 0, None, None], (end - start)[..., 1, None, None]
    px = torch.arange(width, device=start.device, dtype=torch.float32).view(1, 1, 1, width) - ax  # (N, S, 1, W)
    py = torch.arange(height, device=start.device, dtype=torch.float32).view(1, 1, height, 1) - ay  # (N, S, H, 1)
    t = ((px * dx + py * dy) / (dx * dx + dy * dy).clamp_min(1e-12)).clamp(0.0, 1.0)  # nearest point on the segment
    return (px - t * dx).square() + (py - t * dy).square() <= radius * radius


def _paint(canvas: torch.Tensor, masks: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Paint (N, S, H, W) masks in order S onto an (N, H, W, 3) canvas; the last shape covering a pixel wins."""
    order = torch.arange(1, masks.shape[1] + 1, device=masks.device).view(1, -1, 1, 1)
    top = (masks * order).amax(dim=1)  # (N, H, W): 0 = nothing, k = shape k-1
    lookup = torch.cat([torch.zeros(1, 3, device=colours.device), colours])
    return torch.where((top > 0)[..., None], lookup[top], canvas)


def draw_pose(keypoints: torch.Tensor, scores: torch.Tensor, height: int, width: int, min_confidence: float, line_width: int) -> torch.Tensor:
    """COCO-17 keypoints ((N, 17, 2) xy in pixels of an ``height`` x ``width`` image) -> (N, 3, H, W) skeleton image in [0, 1].

    Limbs are ``line_width`` pixels thick, joints are discs of diameter ``line_width``.
    """
    device = keypoints.device
    points, point_scores = coco_to_openpose(keypoints.float(), scores.float())
    visible = point_scores >= min_confidence
    colours = palette().to(device)
    first = torch.tensor([a for a, _ in LIMBS], device=device)
    second = torch.tensor([b for _, b in LIMBS], device=device)
    radius = line_width / 2.0
    limb_masks = _near_segments(height, width, points[:, first], points[:, second], radius) & (visible[:, first] & visible[:, second])[..., None, None]
    joint_masks = _near_segments(height, width, points, points, radius) & visible[..., None, None]
    canvas = torch.zeros(points.shape[0], height, width, 3, device=device)
    canvas = _paint(canvas, limb_masks, colours[: len(LIMBS)] * LIMB_BRIGHTNESS)
    canvas = _paint(canvas, joint_masks, colours)
    return canvas.permute(0, 3, 1, 2)
