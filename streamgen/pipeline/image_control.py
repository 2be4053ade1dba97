"""Control images beside the rows they steer: what a stream's ControlNets and IP-Adapter add to a UNet round.

A frame's control images are made once, when the frame arrives (on the
server's input thread, overlapping the model step), keyed by what they
depend on (preprocessor and its settings: two ControlNets reading the same
edges share one image). Under stream batch the rows of one UNet call came
from different frames; each row gets the images of *its* frame, kept beside
the latent buffer like the frame's tags. A ControlNet enabled (or a
preprocessor changed) while older frames are still in the buffer steers
them with the newest frame's image: they have no image of their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import StreamParams

ControlImages = Mapping[Any, torch.Tensor]  # control key → (f, 3, H, W) in [0, 1], one call's frames


@dataclass(frozen=True)
class PreparedFrames:
    """One call's input, converted on the input side: model images and the control images made from them."""

    images: torch.Tensor  # (f, 3, H, W) in [-1, 1], the model's dtype and device
    controls: ControlImages
    source: torch.Tensor  # the (f, H, W, 3) uint8 frames they came from (what a drain repeats)


@dataclass(frozen=True)
class ControlRows:
    """One ControlNet's part of a row segment: the image each row reads and how strongly it steers."""

    model: str
    rows: torch.Tensor  # (k,) int64: the segment's rows it steers (the steps in its [start, end])
    images: torch.Tensor  # (k, 3, H, W) in [0, 1]
    scales: torch.Tensor  # (k,) float32: its conditioning_scale


@dataclass(frozen=True)
class ReferenceRows:
    """The IP-Adapter's part of a row segment: one embedding for every row of the segment and its scale."""

    embedding: torch.Tensor  # one row's image embedding (the adapter's layout)
    scale: float


def wanted_control_keys(params: StreamParams) -> list[Any]:
    """The distinct control images a call of this stream needs, in entry order."""
    keys: list[Any] = []
    for entry in params.controlnets:
        if entry.enabled and entry.conditioning_scale > 0 and entry.control_key not in keys:
            keys.append(entry.control_key)
    return keys


def feedback_frames(last_output: torch.Tensor | None, count: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """The stream's previous output as (count, 3, H, W) in [0, 1] (TemporalNet-style feedback), None before the first."""
    if last_output is None:
        return None
    frames = last_output.to(device).permute(0, 3, 1, 2).to(dtype) / 255.0
    if frames.shape[0] != count:
        frames = frames[-1:].expand(count, -1, -1, -1)
    return frames


def make_control_images(
    bank: Any,
    params: StreamParams,
    images: torch.Tensor | None,
    last_output: torch.Tensor | None,
    have: ControlImages | None = None,
    *,
    frames: int | None = None,
    skip_feedback: bool = False,
) -> dict[Any, torch.Tensor]:
    """Control images of one call for every key ``params`` needs and ``have`` lacks.

    ``images``: the call's frames, (f, 3, H, W) in [-1, 1] (None for
    txt2img, where only feedback can make an image). ``skip_feedback``
    leaves the feedback image to the step, which knows the newest output.
    """
    out = dict(have or {})
    unit = None
    for key in wanted_control_keys(params):
        if key in out:
            continue
        name, settings = key
        if images is None:
            if name != "feedback" or last_output is None or skip_feedback:
                continue
            out[key] = feedback_frames(last_output, frames or last_output.shape[0], last_output.device, torch.float32)
            continue
        if skip_feedback and name == "feedback":
            continue
        if unit is None:
            unit = ((images + 1) / 2).clamp(0, 1)
        preprocessor = bank.get(name, settings, images.device, images.dtype)
        previous = feedback_frames(last_output, images.shape[0], images.device, images.dtype) if preprocessor.uses_previous_output else None
        out[key] = preprocessor(unit, settings, previous)
    return out


def slot_control_rows(
    params: StreamParams,
    slot_images: Sequence[ControlImages],
    first_slot: int,
    num_slots: int,
    frames_per_slot: int,
    total_slots: int,
) -> tuple[ControlRows, ...]:
    """The ControlNet inputs of slots ``first_slot``.. (``slot_images[k]``: the images of slot first_slot + k's frame).

    A slot whose frame lacks an image (made before the ControlNet was
    enabled) reads the newest one (``slot_images[0]`` is the newest frame's).
    """
    out = []
    newest = slot_images[0]
    for entry in params.controlnets:
        if not entry.enabled or entry.conditioning_scale <= 0 or entry.control_key not in newest:
            continue
        steered = [k for k in range(num_slots) if entry.steers_step(first_slot + k, total_slots)]
        if not steered:
            continue
        images = torch.cat([slot_images[k].get(entry.control_key, newest[entry.control_key]) for k in steered])
        rows = torch.cat([torch.arange(k * frames_per_slot, (k + 1) * frames_per_slot) for k in steered])
        scales = torch.full((rows.shape[0],), entry.conditioning_scale, dtype=torch.float32)
        out.append(ControlRows(entry.model, rows, images, scales))
    return tuple(out)


def control_residuals(
    run_controlnet: Any,
    rows: Sequence[tuple[int, ControlRows]],
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    hidden: torch.Tensor,
    added: dict[str, torch.Tensor] | None,
) -> tuple[list[torch.Tensor], torch.Tensor] | None:
    """The summed residuals of every ControlNet over the rows of one UNet call (zeros for rows it does not steer).

    ``rows`` pairs each segment's first row in the call with its ControlRows.
    Each ControlNet runs once, on exactly the rows it steers, at scale 1;
    its residuals are scaled per row and added into call-sized tensors.
    """
    if not rows:
        return None
    by_model: dict[str, list[tuple[int, ControlRows]]] = {}
    for offset, part in rows:
        by_model.setdefault(part.model, []).append((offset, part))
    down: list[torch.Tensor] | None = None
    mid: torch.Tensor | None = None
    for model, parts in by_model.items():
        index = torch.cat([offset + p.rows for offset, p in parts]).to(latents.device)
        images = torch.cat([p.images for _, p in parts])
        scales = torch.cat([p.scales for _, p in parts]).to(latents.device, latents.dtype)
        sub_added = {k: v[index] for k, v in added.items()} if added else None
        part_down, part_mid = run_controlnet(model, latents[index], timesteps[index], hidden[index], sub_added, images)
        if down is None:
            down = [latents.new_zeros((latents.shape[0], *r.shape[1:])) for r in part_down]
            mid = latents.new_zeros((latents.shape[0], *part_mid.shape[1:]))
        for total, residual in zip(down, part_down):
            total.index_add_(0, index, residual * scales.view(-1, 1, 1, 1))
        mid.index_add_(0, index, part_mid * scales.view(-1, 1, 1, 1))
    return down, mid  # type: ignore[return-value]


def first_rows(part: ControlRows, count: int) -> ControlRows | None:
    """``part`` restricted to the segment's first ``count`` rows (slot 0: the measured unconditional rows of ``initialize``)."""
    keep = part.rows < count
    if not bool(keep.any()):
        return None
    return ControlRows(part.model, part.rows[keep], part.images[keep], part.scales[keep])
