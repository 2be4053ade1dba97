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
cache.

Several streams in one call (:meth:`StreamingWanVAE.encode_batch`,
:meth:`~StreamingWanVAE.decode_batch`): every layer of the Wan VAE works on
each batch item alone (causal convs, RMS norm over channels, per-frame
spatial attention, the time up/down sampling reshapes), so stacking the
streams' caches along the batch axis, running one call and splitting the
caches back gives each stream what its own call gives. What can NOT be
stacked is caches of different *structure*: a cache entry is None before a
conv first ran, the marker "Rep" for an upsampler on its first chunk, and a
tensor of 1 or 2 cached frames depending on how many calls came before; the
decoder also behaves differently on a stream's first latent frame. So streams
are grouped by (first call or not, input shape, the cache's structure:
:meth:`ConvCache.signature`) and each group makes one call. The diffusers
modules replace cache entries with new tensors and never write into them,
so the per-stream entries may be views of the batched tensors.

Latents are normalised with the VAE's ``latents_mean``/``latents_std``
(what the Wan DiT is trained on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import InputError

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

    def copy(self) -> ConvCache:
        """A cache holding the same entries (entries are replaced, never written into, so sharing them is safe)."""
        return ConvCache(list(self.entries))

    def signature(self) -> tuple[Any, ...]:
        """The structure of the cache, without the batch size: caches with equal signatures can be stacked."""
        return tuple(_entry_signature(e) for e in self.entries)

    @classmethod
    def stack(cls, caches: Sequence[ConvCache]) -> ConvCache:
        """The caches of several streams (equal signatures) as one batch, in order."""
        entries = []
        for parts in zip(*(c.entries for c in caches)):
            entries.append(torch.cat(parts) if isinstance(parts[0], torch.Tensor) else parts[0])
        return cls(entries)

    def split(self, sizes: Sequence[int]) -> list[ConvCache]:
        """Undo :meth:`stack`: one cache per stream with ``sizes[i]`` batch items (views of this cache's tensors)."""
        columns = [e.split(list(sizes)) if isinstance(e, torch.Tensor) else [e] * len(sizes) for e in self.entries]
        return [ConvCache(list(row)) for row in zip(*columns)]


def _entry_signature(entry: Any) -> Any:
    if isinstance(entry, torch.Tensor):
        return (tuple(entry.shape[1:]), entry.dtype, entry.device)
    return entry  # None (conv not run yet) or diffusers' "Rep" marker


@dataclass
class EncodeState:
    """Where one stream's encoder stands: its conv cache and how many frames went in."""

    cache: ConvCache
    frames_in: int = 0

    def reset(self) -> None:
        self.cache.clear()
        self.frames_in = 0

    def copy(self) -> EncodeState:
        return EncodeState(self.cache.copy(), self.frames_in)


@dataclass
class DecodeState:
    """Where one stream's decoder stands: its conv cache and how many latent frames went in."""

    cache: ConvCache
    latents_in: int = 0

    def reset(self) -> None:
        self.cache.clear()
        self.latents_in = 0

    def copy(self) -> DecodeState:
        return DecodeState(self.cache.copy(), self.latents_in)


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

    # ------------------------------------------------------- several streams
    def encode_batch(self, frames: Sequence[torch.Tensor], states: Sequence[EncodeState]) -> list[torch.Tensor]:
        """:meth:`encode` for several streams, one call per group of streams whose caches stack (module docstring)."""
        keys = [(s.frames_in == 0, tuple(f.shape[1:]), s.cache.signature()) for f, s in zip(frames, states)]
        return _run_grouped(frames, states, keys, self._encode_group)

    def decode_batch(self, latents: Sequence[torch.Tensor], states: Sequence[DecodeState]) -> list[torch.Tensor]:
        """:meth:`decode` for several streams, one call per group of streams whose caches stack (module docstring)."""
        keys = [(s.latents_in == 0, tuple(z.shape[1:]), s.cache.signature()) for z, s in zip(latents, states)]
        return _run_grouped(latents, states, keys, self._decode_group)

    def _encode_group(self, frames: list[torch.Tensor], states: list[EncodeState]) -> list[torch.Tensor]:
        if len(states) == 1:
            return [self.encode(frames[0], states[0])]
        merged = EncodeState(ConvCache.stack([s.cache for s in states]), states[0].frames_in)
        out = self.encode(torch.cat(frames), merged)
        sizes = [f.shape[0] for f in frames]
        for state, cache, clip in zip(states, merged.cache.split(sizes), frames):
            state.cache.entries = cache.entries
            state.frames_in += clip.shape[2]
        return list(out.split(sizes))

    def _decode_group(self, latents: list[torch.Tensor], states: list[DecodeState]) -> list[torch.Tensor]:
        if len(states) == 1:
            return [self.decode(latents[0], states[0])]
        merged = DecodeState(ConvCache.stack([s.cache for s in states]), states[0].latents_in)
        out = self.decode(torch.cat(latents), merged)
        sizes = [z.shape[0] for z in latents]
        for state, cache, z in zip(states, merged.cache.split(sizes), latents):
            state.cache.entries = cache.entries
            state.latents_in += z.shape[2]
        return list(out.split(sizes))


def _run_grouped(inputs: Sequence[torch.Tensor], states: Sequence[Any], keys: list[Any], run_group: Any) -> list[torch.Tensor]:
    """``run_group(inputs, states)`` once per group of equal keys; the outputs in the order of ``inputs``.

    The states of a stacked group change only after its call returned
    (diffusers writes into the temporary stacked cache); a stream alone in
    its group is encoded/decoded in place, as :meth:`StreamingWanVAE.encode`
    always did. Undoing a failed step is the pipeline's checkpoint's job.
    """
    _check_pairs(inputs, states)
    outputs: list[Any] = [None] * len(inputs)
    for group in _groups(keys):
        for index, output in zip(group, run_group([inputs[i] for i in group], [states[i] for i in group])):
            outputs[index] = output
    return outputs


def _check_pairs(inputs: Sequence[torch.Tensor], states: Sequence[Any]) -> None:
    if len(inputs) != len(states):
        raise InputError(f"got {len(inputs)} inputs for {len(states)} stream states")
    if len(set(map(id, states))) != len(states):
        raise InputError("a stream state may appear only once per batched VAE call")


def _groups(keys: Sequence[Any]) -> list[list[int]]:
    """Indices with equal keys, in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return list(groups.values())
