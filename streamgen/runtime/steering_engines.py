"""Engines for the steered image calls, built as ControlNets are attached (ONNX Runtime and TensorRT share this).

ControlNets are attached after a model is accelerated (a server loads its
``--controlnet`` list after the base model; a Python stream names its own),
and an engine holds its weights, so engines cannot all be built at install.
:class:`SteeringEngines` is installed on the model
(``ImageModel.steering_engines``); the model tells it of every ControlNet
as it is attached, before any stream can use it, and it builds then:

- the ControlNet's engine (control image in, every residual out), one per
  attached ControlNet, keyed by its weights;
- on the first ControlNet, the steered UNet (the residuals as inputs), one
  per base model, shared by every ControlNet;
- when an IP-Adapter is loaded, the reference UNet (the residuals, the
  per-row image embeddings and scales as inputs).

A build that fails raises :class:`~streamgen.errors.EngineError` from the
attach, which then leaves the ControlNet unattached (the stream asking for
it is refused with the reason); nothing falls back to eager silently.

How an export becomes a runner (an ONNX Runtime session; a TensorRT engine
built from the export) is the backend's ``build`` function; the slots here
are the same for both: rows padded to buckets, per-call shared conditioning
broadcast to the rows, outputs in the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import EngineError
from .buckets import bucketed
from .control_export import ResidualLayout, controlnet_export, reference_unet_export, residual_layout, steered_unet_export
from .onnx_export import ComponentExport, unet_inputs

Runner = Callable[..., list[torch.Tensor]]  # the export's inputs in order → its outputs in order
BuildRunner = Callable[[ComponentExport, str], Runner]  # (export, model id for its cache key) → runner


class SteeringEngines:
    """The ControlNet and steered-UNet engines of one model (see module docstring)."""

    def __init__(self, model: Any, build: BuildRunner, backend: str) -> None:
        self.model = model
        self.build = build
        self.backend = backend
        self.steered: Runner | None = None
        self.controlnets: dict[str, Callable[..., tuple[list[torch.Tensor], torch.Tensor]]] = {}

    def install(self) -> None:
        """Hook into the model and build engines for the ControlNets already attached."""
        for name, controlnet in list(self.model.controlnets.items()):
            self.controlnet_attached(name, controlnet)
        if self.model.ip_adapter is not None:
            self.ip_adapter_attached(self.model.ip_adapter)
        self.model.controlnet_forward = self.run_controlnet
        self.model.steering_engines = self

    def controlnet_attached(self, name: str, controlnet: torch.nn.Module) -> None:
        """Build ControlNet ``name``'s engine (and, the first time, the steered UNet's) before streams use it."""
        model = self.model
        runner = self.build(controlnet_export(model, controlnet), f"{model.name}+{name}")
        if self.steered is None:
            self.steered = self.build(steered_unet_export(model), str(model.name))
            model.unet_steered_forward = bucketed(steered_unet_slot(self.steered, model.is_sdxl))
        self.controlnets[name] = bucketed(controlnet_slot(runner, model.is_sdxl))

    def ip_adapter_attached(self, adapter: Any) -> None:
        """Build the reference UNet's engine (the adapter's weights are in the UNet now)."""
        model = self.model
        runner = self.build(reference_unet_export(model), str(model.name))
        model.unet_reference_forward = bucketed(reference_unet_slot(runner, model.is_sdxl, residual_layout(model.unet)))

    def run_controlnet(self, name: str, latents, timesteps, hidden, added, images) -> tuple[list[torch.Tensor], torch.Tensor]:
        slot = self.controlnets.get(name)
        if slot is None:
            raise EngineError(f"the ControlNet {name!r} has no {self.backend} engine (it was attached to another model object)")
        return slot(latents, timesteps, hidden, added, images)


def steered_unet_slot(runner: Runner, is_sdxl: bool) -> Callable[..., torch.Tensor]:
    """``unet_steered_forward``'s signature over a runner of :func:`~.control_export.steered_unet_export`."""

    def unet(latents, timesteps, hidden, added, residuals):
        down, mid = residuals
        return runner(*unet_inputs(latents, timesteps, hidden, added, is_sdxl), *down, mid)[0].to(latents.dtype)

    return unet


def reference_unet_slot(runner: Runner, is_sdxl: bool, layout: ResidualLayout) -> Callable[..., torch.Tensor]:
    """``unet_reference_forward``'s signature over a runner of :func:`~.control_export.reference_unet_export`."""

    def unet(latents, timesteps, hidden, added, residuals, embeds, scales):
        down, mid = residuals if residuals is not None else layout.zeros(latents)
        ip = [embeds.expand(latents.shape[0], *embeds.shape[1:]), scales.to(latents.device, latents.dtype)]
        return runner(*unet_inputs(latents, timesteps, hidden, added, is_sdxl), *ip, *down, mid)[0].to(latents.dtype)

    return unet


def controlnet_slot(runner: Runner, is_sdxl: bool) -> Callable[..., tuple[list[torch.Tensor], torch.Tensor]]:
    """One ControlNet's call over a runner of :func:`~.control_export.controlnet_export`: (down residuals, mid residual)."""

    def controlnet(latents, timesteps, hidden, added, images):
        outputs = [o.to(latents.dtype) for o in runner(*unet_inputs(latents, timesteps, hidden, added, is_sdxl), images.to(latents.dtype))]
        return outputs[:-1], outputs[-1]

    return controlnet

