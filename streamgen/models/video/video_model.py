"""The shared weights of a causal video model and the few calls the video pipeline makes on them.

:class:`VideoModel` bundles the block-causal DiT
(:class:`~streamgen.models.video.causal_wan.CausalWanTransformer`), the streaming
VAE, the text encoder and its tokenizer. The pipeline reaches them only
through :meth:`encode_prompt`, :meth:`encode_context`,
:attr:`forward_chunks` (one chunk for rows of several streams' caches) and
the VAE's batched encode/decode, so a runtime backend may replace
:attr:`forward_chunks` (torch.compile, CUDA graphs) without the algorithm
noticing. :attr:`forward_chunk` (one cache) stays for single-stream callers.
:attr:`timing_probe` gives ``accelerate(..., "auto")`` one representative
call of that slot to time. Nothing here is per-session; prompt embeddings
are memoised by text because they are a pure function of the weights.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .causal_recipe import STREAMDIFFUSION_V2, CausalRecipe
from .causal_wan import CacheSegment, CausalWanTransformer
from .stream_vae import StreamingWanVAE
from .wan_context import CrossAttentionContext

PROMPT_CACHE_SIZE = 64
FLOW_SHIFT = 8.0
# the stream defaults (pipeline.video_params): a timing probe runs what a default stream runs
PROBE_STEPS = 2  # rows: one per denoising step (stream batch)
PROBE_CACHE = {"sink_frames": 3, "ring_frames": 3, "chunk_frames": 1}


@dataclass(eq=False)
class VideoModel:
    """A causal video model: DiT + streaming VAE + text encoder (see module docstring)."""

    name: str
    transformer: CausalWanTransformer
    vae: StreamingWanVAE
    text_encoder: torch.nn.Module
    tokenizer: Any
    text_length: int
    default_size: tuple[int, int]  # (width, height)
    flow_shift: float = FLOW_SHIFT
    default_params: dict[str, Any] = field(default_factory=dict)
    recipe: CausalRecipe = STREAMDIFFUSION_V2  # what the student was trained with: chunk, window, txt2vid schedule
    forward_chunk: Callable[..., torch.Tensor] | None = None
    forward_chunks: Callable[..., torch.Tensor] | None = None
    # How the DiT executes, chosen at load: None runs it in this process; pipeline stages
    # (streamgen.parallel.staged_model.StagedTransformer) put their executor here, and
    # ``transformer``/``forward_chunk(s)`` are the executor's calls.
    stages: Any = None
    _prompt_cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _prompt_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.forward_chunk is None:
            self.forward_chunk = self.transformer.forward_chunk
        if self.forward_chunks is None:
            self.forward_chunks = self.transformer.forward_chunks

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def latent_channels(self) -> int:
        return self.transformer.in_channels

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this (VAE factor × patch size)."""
        return self.vae.spatial_factor * self.transformer.patch_size[1]

    def latent_size(self, width: int, height: int) -> tuple[int, int]:
        return self.vae.latent_size(width, height)

    # ---------------------------------------------------------------- prompts
    @torch.inference_mode()
    def encode_prompt(self, text: str) -> torch.Tensor:
        """Text → embeddings ``(1, text_length, text_dim)``, padding zeroed (as Wan is trained), memoised."""
        with self._prompt_lock:
            cached = self._prompt_cache.get(text)
            if cached is not None:
                self._prompt_cache.move_to_end(text)
                return cached
        embeds = self._encode_prompt_uncached(text)
        with self._prompt_lock:
            self._prompt_cache[text] = embeds
            while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                self._prompt_cache.popitem(last=False)
        return embeds

    def _encode_prompt_uncached(self, text: str) -> torch.Tensor:
        tokens = self.tokenizer(
            [text],
            padding="max_length",
            max_length=self.text_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = next(self.text_encoder.parameters()).device
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        hidden = self.text_encoder(ids, attention_mask=mask).last_hidden_state
        hidden = hidden * mask[..., None].to(hidden.dtype)
        return hidden.to(self.device, self.dtype)

    @torch.inference_mode()
    def encode_context(self, embeds: torch.Tensor) -> CrossAttentionContext:
        """Per-block cross-attention K/V for text embeddings (once per prompt, reused by every chunk)."""
        return self.transformer.encode_context(embeds)

    # ----------------------------------------------------------------- timing
    @property
    def timing_probe(self) -> Callable[[], torch.Tensor]:
        """A zero-argument callable: ONE chunk forward through :attr:`forward_chunks` at the native size.

        It runs what a default stream runs in its steady state: one row per
        step (``num_inference_steps`` of :attr:`default_params`, else 2),
        one latent frame, a full 3 + 3 frame window (so attention runs
        without a mask). The cache is made once per probe and marked full;
        every call writes nothing into it (``write`` all False), so all
        calls do identical work. The slot is looked up at each call, so the
        probe times whatever backend is installed then.
        """
        rows = int(self.default_params.get("num_inference_steps", PROBE_STEPS))
        width, height = self.default_size
        latent_h, latent_w = self.latent_size(width, height)
        cache = self.transformer.new_cache(rows, latent_h, latent_w, **PROBE_CACHE)
        full = PROBE_CACHE["sink_frames"] + PROBE_CACHE["ring_frames"]
        cache.restore_counters(torch.full((rows,), full, device=self.device), [full] * rows)
        generator = torch.Generator(device="cpu").manual_seed(0)
        latents = torch.randn(rows, self.latent_channels, 1, latent_h, latent_w, generator=generator)
        latents = latents.to(self.device, self.dtype)
        timesteps = torch.linspace(1000.0, 250.0, rows, device=self.device)[:, None]
        with torch.inference_mode():
            context = self.encode_context(torch.zeros(1, self.text_length, self.transformer.text_dim, device=self.device))
        segment = CacheSegment(cache, torch.zeros(rows, dtype=torch.bool, device=self.device))

        @torch.inference_mode()
        def probe() -> torch.Tensor:
            return self.forward_chunks(latents, timesteps, [segment], context)

        return probe
