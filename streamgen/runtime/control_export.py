"""ONNX exports of the steered image calls: each ControlNet, the UNet with ControlNet residual inputs, and with IP-Adapter inputs.

A ControlNet returns one residual per skip connection of the UNet's encoder
(the ``conv_in`` output, each down block's resnets and downsampler) plus one
for the mid block; the UNet adds their per-row weighted sum into its skip
connections. Both graphs are traced like the plain components
(:mod:`streamgen.runtime.onnx_export`): through the model's own eager calls,
latents deliberately not multiples of the upsampling factor, rows, height and
width dynamic. The residuals' spatial sides are the latent sides halved
(rounding up, as the UNet's stride-2 convolutions do) once per downsampler
passed: :class:`ResidualLayout` says which input has which channels and
level, so a TensorRT profile can give every residual input its range.

One ControlNet export per attached ControlNet (its weights are in the graph;
the cache key holds their fingerprint), and one steered-UNet export per base
model, shared by every ControlNet (the residuals are plain inputs).

With an IP-Adapter loaded, calls with reference images go to a third UNet
graph: the steered UNet plus ``image_embeds`` (one embedding per row) and
``ip_scales`` (one strength per row) as inputs. It is traced through
``ImageModel.reference_call``, the eager path itself: the per-row scales
are set on the adapter's value projections for the call, so in the trace
they are the graph input. Calls without residuals give it zeros (adding
zero to a skip connection changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .onnx_export import EXAMPLE_ROWS, ComponentExport, ShapeOf, TracedCall, unet_export

STEERED_UNET = "unet_control"
REFERENCE_UNET = "unet_reference"
CONTROLNET = "controlnet"


def side_at(side: int, level: int) -> int:
    """A latent side after ``level`` stride-2 convolutions (kernel 3, padding 1: each rounds up)."""
    for _ in range(level):
        side = (side + 1) // 2
    return side


@dataclass(frozen=True)
class ResidualLayout:
    """Channels and downsampling level of every ControlNet residual the UNet takes (down blocks, then mid)."""

    down: tuple[tuple[int, int], ...]  # (channels, level) per skip connection
    mid: tuple[int, int]

    @property
    def names(self) -> tuple[str, ...]:
        return (*(f"down_{i}" for i in range(len(self.down))), "mid")

    def signature(self) -> str:
        """A short text of the layout: part of the cache key of graphs that take or give residuals."""
        parts = [f"{c}@{level}" for c, level in (*self.down, self.mid)]
        return "residuals:" + ",".join(parts)

    def shapes(self, factor: int) -> dict[str, ShapeOf]:
        """Per residual: (rows, height px, width px) → its shape, for a VAE of scale ``factor``."""
        entries = dict(zip(self.names, (*self.down, self.mid)))
        return {name: _residual_shape(channels, level, factor) for name, (channels, level) in entries.items()}

    def examples(self, rows: int, height: int, width: int, like: torch.Tensor) -> list[torch.Tensor]:
        """Random residuals for latents of ``height`` x ``width`` (the trace's example inputs)."""
        return [
            torch.randn(rows, channels, side_at(height, level), side_at(width, level), device=like.device, dtype=like.dtype)
            for channels, level in (*self.down, self.mid)
        ]


    def zeros(self, latents: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(down, mid) residuals of zeros for ``latents``: a call without ControlNets on a graph that takes residuals."""
        rows, _, height, width = latents.shape
        tensors = [latents.new_zeros(rows, c, side_at(height, level), side_at(width, level)) for c, level in (*self.down, self.mid)]
        return tensors[:-1], tensors[-1]


def _residual_shape(channels: int, level: int, factor: int) -> ShapeOf:
    return lambda r, hp, wp: (r, channels, side_at(hp // factor, level), side_at(wp // factor, level))


def residual_layout(unet: torch.nn.Module) -> ResidualLayout:
    """The residuals a diffusers UNet2DConditionModel's encoder has skip connections for."""
    channels = tuple(int(c) for c in unet.config.block_out_channels)
    down = [(channels[0], 0)]
    level = 0
    for index, block in enumerate(unet.down_blocks):
        down += [(channels[index], level)] * len(block.resnets)
        if getattr(block, "downsamplers", None):
            level += 1
            down.append((channels[index], level))
    return ResidualLayout(tuple(down), (channels[-1], level))


def _latent_example_sides(unet: torch.nn.Module) -> tuple[int, int]:
    up = 2 ** int(getattr(unet, "num_upsamplers", 0))
    return 2 * up + 1, 3 * up + 1  # as unet_export: not multiples of the upsampling factor


def steered_unet_export(model: Any) -> ComponentExport:
    """The UNet with every ControlNet residual as an input (``down_0`` .. ``down_N``, ``mid``)."""
    plain = unet_export(model)
    layout = residual_layout(model.unet)
    factor = model.vae_scale_factor
    height, width = _latent_example_sides(model.unet)
    residuals = layout.examples(EXAMPLE_ROWS, height, width, plain.example[0])
    base_names = plain.input_names
    count = len(layout.down)

    def call(*args):
        base, down, mid = args[: len(base_names)], list(args[len(base_names) : len(base_names) + count]), args[-1]
        added = {"text_embeds": base[3], "time_ids": base[4]} if model.is_sdxl else None
        return model.eager_unet_steered(base[0], base[1], base[2], added, (down, mid))

    axes = dict(plain.dynamic_axes)
    for name in layout.names:
        axes[name] = {0: "rows", 2: f"{name}_height", 3: f"{name}_width"}
    shapes = {**plain.shapes, **layout.shapes(factor)}
    return ComponentExport(
        STEERED_UNET, model.unet, TracedCall(call, [model.unet]), (*plain.example, *residuals),
        (*base_names, *layout.names), plain.output_names, axes, shapes, factor, layout.signature(),
    )


def controlnet_export(model: Any, controlnet: torch.nn.Module) -> ComponentExport:
    """A ControlNet for ``model`` at scale 1: control image in, every residual out."""
    plain = unet_export(model)
    layout = residual_layout(model.unet)
    factor = model.vae_scale_factor
    latents = plain.example[0]
    image = torch.rand(latents.shape[0], 3, latents.shape[2] * factor, latents.shape[3] * factor, device=latents.device, dtype=latents.dtype)
    base_names = plain.input_names

    def call(*args):
        base, images = args[: len(base_names)], args[-1]
        added = {"text_embeds": base[3], "time_ids": base[4]} if model.is_sdxl else None
        down, mid = model.controlnet_call(controlnet, base[0], base[1], base[2], added, images)
        return (*down, mid)

    axes = {key: value for key, value in plain.dynamic_axes.items() if key != "eps"}
    axes["control"] = {0: "rows", 2: "image_height", 3: "image_width"}
    for output in layout.names:
        axes[output] = {0: "rows", 2: f"{output}_height", 3: f"{output}_width"}
    shapes = dict(plain.shapes)
    shapes["control"] = lambda r, hp, wp: (r, 3, hp // factor * factor, wp // factor * factor)
    return ComponentExport(
        CONTROLNET, controlnet, TracedCall(call, [controlnet]), (*plain.example, image),
        (*base_names, "control"), layout.names, axes, shapes, factor, "control-image->" + layout.signature(),
    )


def reference_unet_export(model: Any) -> ComponentExport:
    """The steered UNet with the IP-Adapter's inputs: ``image_embeds`` (rows, *embedding_shape) and ``ip_scales`` (rows,)."""
    adapter = model.ip_adapter
    steered = steered_unet_export(model)
    layout = residual_layout(model.unet)
    plain_names = steered.input_names[: -len(layout.names)]
    count = len(layout.down)
    latents = steered.example[0]
    embeds = torch.randn(EXAMPLE_ROWS, *adapter.embedding_shape, device=latents.device, dtype=latents.dtype)
    scales = torch.tensor([0.5, 1.0][:EXAMPLE_ROWS], device=latents.device, dtype=latents.dtype)  # non-zero: the adapter's path

    def call(*args):
        base, embeds_, scales_ = args[: len(plain_names)], args[len(plain_names)], args[len(plain_names) + 1]
        down, mid = list(args[len(plain_names) + 2 : len(plain_names) + 2 + count]), args[-1]
        added = {"text_embeds": base[3], "time_ids": base[4]} if model.is_sdxl else None
        return model.reference_call(model.eager_unet_steered, base[0], base[1], base[2], added, (down, mid), embeds_, scales_)

    names = (*plain_names, "image_embeds", "ip_scales", *layout.names)
    axes = {**steered.dynamic_axes, "image_embeds": {0: "rows"}, "ip_scales": {0: "rows"}}
    shape = tuple(adapter.embedding_shape)
    shapes = {**steered.shapes, "image_embeds": lambda r, hp, wp: (r, *shape), "ip_scales": lambda r, hp, wp: (r,)}
    example = (*steered.example[: len(plain_names)], embeds, scales, *steered.example[len(plain_names) :])
    signature = f"ip-adapter:{adapter.variant}:{'x'.join(map(str, shape))};{steered.signature}"
    return ComponentExport(
        REFERENCE_UNET, model.unet, TracedCall(call, [model.unet]), example, names, steered.output_names, axes, shapes,
        steered.pixel_factor, signature,
    )
