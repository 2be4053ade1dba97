"""The small interface the image pipeline uses to reach a diffusion model.

:class:`ImageModel` owns the shared weights (UNet, VAE, text encoders) and
exposes exactly four operations: encode a prompt, predict noise for a batch of
rows, encode images to latents and decode latents to images. The pipeline
never touches diffusers classes directly, so a runtime backend (torch.compile,
ONNX Runtime, TensorRT) can replace :attr:`ImageModel.unet_forward`,
:attr:`vae_encode_forward`, :attr:`vae_decode_forward` or
:attr:`text_encode_forward` without the algorithm noticing.

The text slot is ONE callable for all encoders, ``(index, token ids) →
(hidden states, pooled or None)``: SD models have one encoder (index 0),
SDXL two (0: CLIP, 1: CLIP with projection, which gives the pooled vector).
One attribute, not a list, so a backend replaces it (and ``auto`` restores
it) by plain assignment, like the other slots.

Nothing here is per-session; prompt embeddings are memoised by text because
that is a pure function of the weights.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...config import PredictionType, X0Formula
from ...errors import ConfigError

UnetForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None], torch.Tensor]
ImageForward = Callable[[torch.Tensor], torch.Tensor]
TextForward = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]

PROMPT_CACHE_SIZE = 64


@dataclass(frozen=True)
class PromptEmbedding:
    """Text conditioning for one prompt: token states and, for SDXL, the pooled vector."""

    hidden: torch.Tensor  # (1, tokens, dim)
    pooled: torch.Tensor | None = None  # (1, pooled_dim), SDXL only


@dataclass(frozen=True)
class ModelNumerics:
    """How to turn a network output into a clean-image estimate."""

    alphas_cumprod: torch.Tensor  # (1000,), float32, on the model device
    x0_formula: X0Formula = "lcm"
    prediction_type: PredictionType = "epsilon"
    timestep_scaling: float = 10.0
    sigma_data: float = 0.5


class ImageModel:
    """Shared weights of an image diffusion model plus the four calls the pipeline needs."""

    def __init__(
        self,
        *,
        name: str,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoders: Sequence[torch.nn.Module],
        tokenizers: Sequence[Any],
        numerics: ModelNumerics,
        default_size: tuple[int, int],
        is_sdxl: bool = False,
        default_params: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.unet = unet
        self.vae = vae
        self.text_encoders = list(text_encoders)
        self.tokenizers = list(tokenizers)
        self.numerics = numerics
        self.default_size = default_size
        self.is_sdxl = is_sdxl
        self.default_params = dict(default_params or {})  # StreamParams fields that suit this model
        self.unet_forward: UnetForward = self.eager_unet
        self.vae_encode_forward: ImageForward = self._eager_vae_encode
        self.vae_decode_forward: ImageForward = self._eager_vae_decode
        self.text_encode_forward: TextForward = self.eager_text_encode
        # Steered calls (ControlNet residuals) have their own slots: the compile backend replaces them with
        # compiled graphs, ONNX Runtime and TensorRT with engines that take the residuals as inputs.
        self.unet_steered_forward: Callable[..., torch.Tensor] = self.eager_unet_steered
        self.controlnet_forward: Callable[..., tuple[list[torch.Tensor], torch.Tensor]] = self.eager_controlnet
        # Calls with IP-Adapter references (some row's scale non-zero): (latents, timesteps, hidden, added,
        # residuals or None, embeddings (B, *embedding_shape), scales (B,)); backends install graphs that take
        # the embeddings and per-row scales as inputs.
        self.unet_reference_forward: Callable[..., torch.Tensor] = self.eager_unet_reference
        # Set by a backend whose engines hold weights (ONNX Runtime, TensorRT): told of every ControlNet and of the
        # IP-Adapter as they are attached, before streams can use them, so that their engines are built then
        # (streamgen.runtime.steering_engines).
        self.steering_engines: Any = None
        # Set by a backend whose engines have fixed shape ranges (streamgen.runtime.engine_limits.EngineLimits).
        self.engine_limits: Any = None
        # Attachments shared by every stream (streamgen.models.image.controlnet / ip_adapter): ControlNets by
        # name, the IP-Adapter (or None). Streams choose per row which steer them and how strongly.
        self.controlnets: dict[str, torch.nn.Module] = {}
        self.ip_adapter: Any = None
        self._attach_lock = threading.Lock()
        self._prompt_cache: OrderedDict[str, PromptEmbedding] = OrderedDict()
        self._prompt_lock = threading.Lock()

    # ---- properties -------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        config = self.vae.config
        blocks = getattr(config, "block_out_channels", None) or getattr(config, "encoder_block_out_channels")
        return 2 ** (len(blocks) - 1)

    @property
    def vae_scaling(self) -> tuple[float, float]:
        config = self.vae.config
        return float(getattr(config, "scaling_factor", 1.0) or 1.0), float(getattr(config, "shift_factor", 0.0) or 0.0)

    def latent_size(self, width: int, height: int) -> tuple[int, int]:
        """(latent height, latent width) for an image of ``width`` x ``height``."""
        factor = self.vae_scale_factor
        return height // factor, width // factor

    # ---- prompts ----------------------------------------------------------
    @torch.inference_mode()
    def encode_prompt(self, text: str) -> PromptEmbedding:
        """Text → conditioning, memoised by text (a pure function of the weights)."""
        with self._prompt_lock:
            cached = self._prompt_cache.get(text)
            if cached is not None:
                self._prompt_cache.move_to_end(text)
                return cached
        embedding = self._encode_prompt_uncached(text)
        with self._prompt_lock:
            self._prompt_cache[text] = embedding
            while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                self._prompt_cache.popitem(last=False)
        return embedding

    def _encode_prompt_uncached(self, text: str) -> PromptEmbedding:
        device = self.device
        hidden_parts: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for index, (tokenizer, _) in enumerate(zip(self.tokenizers, self.text_encoders)):
            ids = tokenizer(
                [text],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            hidden_part, pooled_part = self.text_encode_forward(index, ids)
            hidden_parts.append(hidden_part)
            pooled = pooled_part if pooled_part is not None else pooled
        hidden = torch.cat(hidden_parts, dim=-1).to(self.dtype)
        return PromptEmbedding(hidden=hidden, pooled=None if pooled is None else pooled.to(self.dtype))

    def eager_text_encode(self, index: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (1, L) → (the states the UNet attends to, the pooled vector or None) of encoder ``index``.

        SDXL takes the penultimate hidden states, and its projection
        encoder's first output is 2-D: that is the pooled vector.
        """
        encoder = self.text_encoders[index]
        if self.is_sdxl:
            out = encoder(ids, output_hidden_states=True)
            return out.hidden_states[-2], (out[0] if out[0].ndim == 2 else None)
        return encoder(ids)[0], None

    # ---- denoising --------------------------------------------------------
    def sdxl_time_ids(self, width: int, height: int) -> torch.Tensor:
        """SDXL micro-conditioning: original size, crop offset, target size."""
        return torch.tensor([[height, width, 0, 0, height, width]], device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def predict_noise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        hidden: torch.Tensor,
        added_cond: dict[str, torch.Tensor] | None = None,
        residuals: tuple[list[torch.Tensor], torch.Tensor] | None = None,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """ε̂ for every row; v-prediction outputs are converted to ε here.

        ``residuals`` (ControlNet down-block and mid-block residuals, summed)
        go through the steered slot; ``reference`` (IP-Adapter embeddings,
        one per row, and per-row scales, some non-zero) through the
        reference slot, with the residuals if any. A backend installs graphs
        or engines in every slot; a call never silently takes the torch UNet.
        """
        if reference is not None:
            embeds, scales = reference
            out = self.unet_reference_forward(latents, timesteps, hidden, added_cond, residuals, embeds, scales)
        elif residuals is not None:
            out = self.unet_steered_forward(latents, timesteps, hidden, added_cond, residuals)
        else:
            out = self.unet_forward(latents, timesteps, hidden, added_cond)
        if self.numerics.prediction_type == "v_prediction":
            ac = self.numerics.alphas_cumprod[timesteps].to(out.dtype).view(-1, 1, 1, 1)
            out = ac.sqrt() * out + (1 - ac).sqrt() * latents
        return out

    def eager_unet(self, latents, timesteps, hidden, added_cond):
        added_cond = self.without_reference(added_cond, latents.shape[0])
        return self.unet(latents, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added_cond, return_dict=False)[0]

    def without_reference(self, added_cond: dict[str, Any] | None, rows: int) -> dict[str, Any] | None:
        """``added_cond`` for a call without IP-Adapter references.

        Once an IP-Adapter is loaded, diffusers' UNet wants ``image_embeds``
        in every call; a call without references gets zeros, and since the
        adapter's processors are at scale 0 outside a reference call it is
        exactly the plain UNet's.
        """
        adapter = self.ip_adapter
        if adapter is None or (added_cond is not None and "image_embeds" in added_cond):
            return added_cond
        zero = adapter.zero_embedding()
        return {**(added_cond or {}), "image_embeds": [zero.expand(rows, 1, *zero.shape)]}

    # ---- ControlNets -------------------------------------------------------
    def attach_controlnet(self, name: str, loader: Callable[[str, "ImageModel"], torch.nn.Module]) -> torch.nn.Module:
        """The ControlNet ``name``, loaded by ``loader`` the first time (thread-safe; weights shared by every stream)."""
        with self._attach_lock:
            controlnet = self.controlnets.get(name)
            if controlnet is None:
                controlnet = loader(name, self)
                if self.steering_engines is not None:  # its engine first: a failed build leaves it unattached
                    self.steering_engines.controlnet_attached(name, controlnet)
                self.controlnets[name] = controlnet
            return controlnet

    def eager_unet_steered(self, latents, timesteps, hidden, added_cond, residuals):
        down, mid = residuals if residuals is not None else (None, None)
        added_cond = self.without_reference(added_cond, latents.shape[0])
        return self.unet(
            latents, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added_cond,
            down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False,
        )[0]

    def attach_ip_adapter(self, source: str, loader: Callable[["ImageModel"], Any]) -> Any:
        """The IP-Adapter ``source``, loaded into the shared UNet by ``loader`` the first time; one per model."""
        with self._attach_lock:
            if self.ip_adapter is not None:
                if self.ip_adapter.source != source:
                    raise ConfigError(f"this model already has the IP-Adapter {self.ip_adapter.source!r}; one IP-Adapter per model (load another model for {source!r})")
                return self.ip_adapter
            self.ip_adapter = loader(self)  # the shared UNet has the adapter now, so it is registered even if an engine fails
            if self.steering_engines is not None:
                self.steering_engines.ip_adapter_attached(self.ip_adapter)
            return self.ip_adapter

    def eager_unet_reference(self, latents, timesteps, hidden, added_cond, residuals, embeds, scales):
        return self.reference_call(self.eager_unet_steered, latents, timesteps, hidden, added_cond, residuals, embeds, scales)

    def reference_call(self, unet_call: Callable[..., torch.Tensor], latents, timesteps, hidden, added_cond, residuals, embeds, scales) -> torch.Tensor:
        """``unet_call`` (a steered UNet call) with the IP-Adapter's embeddings and per-row scales in force.

        What the reference slot runs eagerly, what the compile backend wraps
        around its compiled UNet, and what the engine exports trace (the
        scales become an input of the graph there).
        """
        adapter = self.ip_adapter
        with adapter.row_scales(scales):
            added = {**(added_cond or {}), **adapter.unet_kwargs(embeds, scales)}
            return unet_call(latents, timesteps, hidden, added, residuals)

    @torch.inference_mode()
    def run_controlnet(self, name: str, latents, timesteps, hidden, added_cond, images) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One ControlNet over some rows at scale 1: (down-block residuals, mid-block residual)."""
        return self.controlnet_forward(name, latents, timesteps, hidden, added_cond, images)

    def eager_controlnet(self, name: str, latents, timesteps, hidden, added_cond, images) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.controlnet_call(self.controlnets[name], latents, timesteps, hidden, added_cond, images)

    def controlnet_call(self, controlnet: torch.nn.Module, latents, timesteps, hidden, added_cond, images) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One ControlNet module at scale 1 (what the ControlNet slot runs, and what its engine export traces)."""
        down, mid = controlnet(
            latents, timesteps, encoder_hidden_states=hidden, controlnet_cond=images.to(self.dtype),
            conditioning_scale=1.0, added_cond_kwargs=added_cond, return_dict=False,
        )
        return list(down), mid

    # ---- VAE --------------------------------------------------------------
    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → scaled latents."""
        scale, shift = self.vae_scaling
        return (self.vae_encode_forward(images.to(self.dtype)) - shift) * scale

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images in [-1, 1]."""
        scale, shift = self.vae_scaling
        return self.vae_decode_forward(latents / scale + shift)

    def _eager_vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        out = self.vae.encode(images, return_dict=False)[0]
        return out if isinstance(out, torch.Tensor) else out.mode()

    def _eager_vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]
