"""Streaming Wan VAE: encode and decode a live video chunk by chunk, keeping the causal-conv caches.

Wan's VAE (diffusers ``AutoencoderKLWan``) is causal in time: every 3-D
convolution looks at the current frame and the two before it, and diffusers
already feeds a clip through it piece by piece with a *feature cache* (the
last frames seen by each causal conv). But ``encode``/``decode`` clear that
cache at the start and end of every call, so each call is a new clip.

A live stream is one endless clip. :class:`StreamingWanVAE` calls the same
encoder / decoder modules with a cache that belongs to the stream
(:class:`ConvCache`), so chunk after chunk the result equals encoding or
decoding the whole stream at once:

- encode: the stream's first frame alone → 1 latent frame, then every group
  of 4 frames → 1 latent frame;
- decode: the first latent frame → 1 frame, then 4 frames per latent frame.

The VAE module is shared (weights only); every stream gets its own
:class:`EncodeState` / :class:`DecodeState`, so two streams never share a
cache. Latents are normalised with the VAE's ``latents_mean``/``latents_std``
(what the Wan DiT is trained on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError

TEMPORAL_FACTOR = 4


@dataclass
class ConvCache:
    """The feature cache of one encoder or decoder for one stream (diffusers' ``feat_cache`` list)."""

    entries: list[Any]

    @classmethod
    def empty(cls, size: int) -> ConvCache:
        return cls([None] * size)

    def clear(self) -> None:
        self.entries = [None] * len(self.entries)


@dataclass
class EncodeState:
    """Where one stream's encoder stands: its conv cache and how many frames went in."""

    cache: ConvCache
    frames_in: int = 0

    def reset(self) -> None:
        self.cache.clear()
        self.frames_in = 0


@dataclass
class DecodeState:
    """Where one stream's decoder stands: its conv cache and how many latent frames went in."""

    cache: ConvCache
    latents_in: int = 0

    def reset(self) -> None:
        self.cache.clear()
        self.latents_in = 0


def _count_causal_convs(module: torch.nn.Module) -> int:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d  # noqa: PLC0415

    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


class StreamingWanVAE:
    """Chunked encode/decode over a shared ``AutoencoderKLWan`` with per-stream caches (see module docstring)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        config = vae.config
        if getattr(config, "patch_size", None) is not None:
            raise InputError("streaming VAE supports the Wan2.1 VAE (no patchified Wan2.2 VAE)")
        self.vae = vae
        self.z_dim = int(config.z_dim)
        self.spatial_factor = 2 ** (len(config.dim_mult) - 1)
        self.temporal_factor = 2 ** sum(bool(d) for d in config.temperal_downsample)
        if self.temporal_factor != TEMPORAL_FACTOR:
            raise InputError(f"streaming Wan VAE needs 4x temporal compression, this VAE has {self.temporal_factor}x")
        self._encoder_convs = _count_causal_convs(vae.encoder)
        self._decoder_convs = _count_causal_convs(vae.decoder)
        param = next(vae.parameters())
        shape = (1, self.z_dim, 1, 1, 1)
        self._mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(shape).to(param.device)
        self._inv_std = 1.0 / torch.tensor(config.latents_std, dtype=torch.float32).view(shape).to(param.device)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def latent_size(self, width: int, height: int) -> tuple[int, int]:
        """(latent height, latent width) of a ``width`` x ``height`` video."""
        return height // self.spatial_factor, width // self.spatial_factor

    def new_encode_state(self) -> EncodeState:
        return EncodeState(ConvCache.empty(self._encoder_convs))

    def new_decode_state(self) -> DecodeState:
        return DecodeState(ConvCache.empty(self._decoder_convs))

    @staticmethod
    def frames_for_latents(latents: int, first: bool) -> int:
        """Video frames that make ``latents`` latent frames (the stream's first latent takes 1 frame)."""
        return TEMPORAL_FACTOR * latents - (TEMPORAL_FACTOR - 1 if first else 0)

    # ---------------------------------------------------------------- encode
    @torch.inference_mode()
    def encode(self, frames: torch.Tensor, state: EncodeState) -> torch.Tensor:
        """Video ``(B, 3, t, H, W)`` in [-1, 1] → normalised latents ``(B, z, t', H/8, W/8)``.

        ``t`` must be ``1 + 4k`` on the stream's first call and ``4k`` after.
        """
        if frames.ndim != 5 or frames.shape[1] != 3:
            raise InputError(f"frames must be (B, 3, t, H, W), got {tuple(frames.shape)}")
        t = frames.shape[2]
        first = state.frames_in == 0
        if (t - (1 if first else 0)) % TEMPORAL_FACTOR or t == 0:
            need = "1 + 4k frames on its first call" if first else "a multiple of 4 frames"
            raise InputError(f"the streaming VAE encoder takes {need}; got {t}")
        frames = frames.to(self.device, self.dtype)
        rest = frames[:, :, int(first) :]
        groups = ([frames[:, :, :1]] if first else []) + (list(rest.split(TEMPORAL_FACTOR, dim=2)) if rest.shape[2] else [])
        outs = []
        for group in groups:
            outs.append(self.vae.encoder(group, feat_cache=state.cache.entries, feat_idx=[0]))
        state.frames_in += t
        moments = self.vae.quant_conv(torch.cat(outs, dim=2))
        mean = moments[:, : self.z_dim]
        return ((mean.float() - self._mean) * self._inv_std).to(self.dtype)

    # ---------------------------------------------------------------- decode
    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Normalised latents ``(B, z, t', h, w)`` → video ``(B, 3, t, 8h, 8w)`` in [-1, 1].

        ``t = 1 + 4(t' - 1)`` on the stream's first call, ``4t'`` after.
        """
        if latents.ndim != 5 or latents.shape[1] != self.z_dim:
            raise InputError(f"latents must be (B, {self.z_dim}, t, h, w), got {tuple(latents.shape)}")
        z = (latents.float() / self._inv_std + self._mean).to(self.dtype)
        x = self.vae.post_quant_conv(z)
        outs = []
        for i in range(x.shape[2]):
            first = state.latents_in == 0
            outs.append(self.vae.decoder(x[:, :, i : i + 1], feat_cache=state.cache.entries, feat_idx=[0], first_chunk=first))
            state.latents_in += 1
        return torch.cat(outs, dim=2).clamp_(-1.0, 1.0)
