"""IP-Adapter: a reference image steers the shared UNet, with a strength per row.

:func:`load_ip_adapter` puts an IP-Adapter into ``model.unet`` through
diffusers' own loader (``UNet2DConditionModel._load_ip_adapter_weights``), and
loads the adapter's CLIP image encoder. The :class:`IPAdapter` it returns:

* turns a reference image into the per-row embedding the UNet takes
  (:meth:`IPAdapter.embed`, memoised by content),
* builds the ``added_cond_kwargs`` entry for a batch of rows
  (:meth:`IPAdapter.unet_kwargs`), and
* applies a per-row adapter scale during one batched UNet call
  (:meth:`IPAdapter.row_scales`).

**Per-row scale.** diffusers' IP-Adapter attention processors add
``scale * softmax(q k_ip^T) v_ip`` to each cross-attention output, with one
scalar ``scale``. Rows of many sessions share one UNet call, each with its own
strength, so the processors keep ``scale = 1`` during the call and every
``to_v_ip`` projection is replaced by :class:`RowScaledLinear`, which
multiplies its output row ``b`` by ``s_b``. Attention is linear in the values,
so ``softmax(q k_ip^T) (s_b v_ip) = s_b softmax(q k_ip^T) v_ip``: row ``b`` gets
exactly ``s_b`` times the adapter's attention, and a row with ``s_b = 0`` gets
exactly zero added, i.e. the plain UNet's output. When every row's scale is 0
the processors' scalar scale is set to 0 instead, and diffusers skips the
adapter's attention altogether.

**Shared weights.** Loading an adapter changes the ONE UNet that every stream
on the model uses: from then on every UNet call needs ``image_embeds`` in
``added_cond_kwargs`` (diffusers refuses calls without), so a row without a
reference image passes :meth:`IPAdapter.zero_embedding` with scale 0, which
leaves it exactly as without the adapter. Outside :meth:`IPAdapter.row_scales`
the adapter is switched off (scale 0). There is no unload; build the model
again to drop it.

**Threads.** :meth:`embed` is thread-safe. :meth:`row_scales` is not: the
per-row scales live on the shared UNet for the duration of a call, so one
UNet call at a time (the pipeline's single model thread); a second
:meth:`row_scales` while one is active raises RuntimeError.

**Engines.** ``ImageModel.reference_call`` runs a UNet call inside
:meth:`row_scales`; the compile backend wraps it around its compiled UNet,
and the ONNX export traces through it, so there the per-row scales are an
input of the graph (:mod:`streamgen.runtime.control_export`).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError, InputError
from ...frames import MAX_INPUT_PIXELS
from .image_model import ImageModel
from .ip_adapter_rows import RowScale, RowScaledLinear, attach_ip_adapter, check_scales
from .ip_adapter_tiny import tiny_image_encoder, tiny_ip_adapter_state_dict
from .ip_adapter_weights import (
    VARIANTS,
    adapter_encoder_width,
    check_fits,
    detect_variant,
    encoder_width,
    load_image_encoder,
    read_state_dict,
    resolve_weight_file,
)

EMBED_CACHE_SIZE = 32  # reference images whose embeddings are kept (LRU)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = ["IPAdapter", "RowScaledLinear", "load_ip_adapter"]


class IPAdapter:
    """An IP-Adapter loaded into ``model.unet``, with its image encoder. Build it with :func:`load_ip_adapter`.

    ``embedding_shape`` is the shape of ONE row's embedding:
    ``(projection_dim,)`` for ``plain`` (CLIP ``image_embeds``; 1024 for
    ViT-H, 32 for ``tiny``) and ``(tokens, hidden_size)`` for ``plus`` (the
    encoder's penultimate hidden states; 257 x 1280 for ViT-H, 17 x 32 for
    ``tiny``). ``num_tokens`` is how many image tokens the adapter adds to
    each cross-attention (4 for plain, the resampler's queries for plus).
    """

    def __init__(self, *, model: ImageModel, image_encoder: torch.nn.Module, variant: str, source: str, processors: list[Any], row_scale: RowScale) -> None:
        self.model = model
        self.image_encoder = image_encoder
        self.variant = variant
        self.source = source
        self._processors = processors
        self._row_scale = row_scale
        config = image_encoder.config
        self.image_size = int(config.image_size)
        tokens = (config.image_size // config.patch_size) ** 2 + 1  # patches + CLS
        self.embedding_shape: tuple[int, ...] = (int(config.projection_dim),) if variant == "plain" else (tokens, int(config.hidden_size))
        self.num_tokens = int(processors[0].num_tokens[0]) if processors else 0
        self._zero = torch.zeros(self.embedding_shape, device=model.device, dtype=model.dtype)
        self._negative: torch.Tensor | None = None
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._call_lock = threading.Lock()
        self._set_processor_scale(0.0)  # off outside row_scales()

    # ---- embeddings -------------------------------------------------------
    def embed(self, image: torch.Tensor | np.ndarray) -> torch.Tensor:
        """One reference image, (H, W, 3) uint8 of any size → one row's embedding, ``embedding_shape``.

        On the model's device and dtype. Memoised by content (sha256 of shape
        and bytes): the same image is encoded once while it stays among the
        last ``EMBED_CACHE_SIZE`` images. Do not modify the returned tensor.
        """
        image = _check_image(image)
        digest = hashlib.sha256(str(tuple(image.shape)).encode())
        digest.update(image.detach().cpu().contiguous().numpy().tobytes())
        key = digest.hexdigest()
        cached = self._cached(key)
        if cached is not None:
            return cached
        with self._encode_lock:  # one encode at a time, so two threads never encode the same image
            cached = self._cached(key)
            if cached is not None:
                return cached
            embedding = self._encode(self.preprocess(image))
            with self._cache_lock:
                self._cache[key] = embedding
                while len(self._cache) > EMBED_CACHE_SIZE:
                    self._cache.popitem(last=False)
        return embedding

    def negative_embedding(self) -> torch.Tensor:
        """What the unconditional rows of classifier-free guidance get, as diffusers gives them.

        Plain adapters: zeros. Plus adapters: the encoder's penultimate
        states of an all-zero (normalised) image, computed once.
        """
        if self.variant == "plain":
            return self._zero
        with self._encode_lock:
            if self._negative is None:
                pixels = torch.zeros(1, 3, self.image_size, self.image_size, device=self.model.device, dtype=next(self.image_encoder.parameters()).dtype)
                self._negative = self._encode(pixels)
            return self._negative

    def zero_embedding(self) -> torch.Tensor:
        """The embedding of a row without a reference image (zeros; use it with scale 0). Do not modify it."""
        return self._zero

    @torch.inference_mode()
    def preprocess(self, image: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 → CLIP pixel values (1, 3, S, S), S = the encoder's image size.

        As CLIPImageProcessor does it, in torch on the model's device: the
        short side is resized to S (bicubic, antialiased), the centre S x S
        cropped, then CLIP's mean/std normalisation; computed in float32 and
        cast to the encoder's dtype.
        """
        image = _check_image(image)
        size = self.image_size
        pixels = image.to(self.model.device).permute(2, 0, 1)[None].float() / 255.0
        height, width = pixels.shape[-2:]
        short, long = min(height, width), max(height, width)
        resized_long = max(size, int(size * long / short))
        new_size = (size, resized_long) if height <= width else (resized_long, size)
        if (height, width) != new_size:
            pixels = F.interpolate(pixels, size=new_size, mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)
        top, left = (new_size[0] - size) // 2, (new_size[1] - size) // 2
        pixels = pixels[:, :, top : top + size, left : left + size]
        mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
        return ((pixels - mean) / std).to(next(self.image_encoder.parameters()).dtype)

    @torch.inference_mode()
    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.variant == "plain":
            out = self.image_encoder(pixels).image_embeds
        else:
            out = self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
        return out[0].to(device=self.model.device, dtype=self.model.dtype)

    def _cached(self, key: str) -> torch.Tensor | None:
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
            return cached

    # ---- one batched UNet call ---------------------------------------------
    def unet_kwargs(self, embeds_per_row: torch.Tensor, scale_per_row: torch.Tensor | Sequence[float]) -> dict[str, Any]:
        """What to merge into ``added_cond_kwargs`` for a call on B rows.

        ``embeds_per_row`` is (B, *embedding_shape) (stack :meth:`embed` /
        :meth:`zero_embedding`), ``scale_per_row`` is (B,). Returns
        ``{"image_embeds": [tensor (B, 1, *embedding_shape)]}``: diffusers'
        layout, one list entry per adapter, one image per row. For SDXL it
        goes beside ``text_embeds`` and ``time_ids``. Run the call inside
        :meth:`row_scales` with the same scales.
        """
        scales = check_scales(scale_per_row)
        if not isinstance(embeds_per_row, torch.Tensor) or tuple(embeds_per_row.shape[1:]) != self.embedding_shape:
            got = tuple(embeds_per_row.shape) if isinstance(embeds_per_row, torch.Tensor) else type(embeds_per_row).__name__
            raise InputError(f"IP-Adapter embeddings must be (rows, {', '.join(map(str, self.embedding_shape))}), got {got}.")
        if embeds_per_row.shape[0] != scales.shape[0]:
            raise InputError(f"IP-Adapter: {embeds_per_row.shape[0]} embeddings but {scales.shape[0]} scales.")
        embeds = embeds_per_row.to(device=self.model.device, dtype=self.model.dtype)
        return {"image_embeds": [embeds.unsqueeze(1)]}

    @contextlib.contextmanager
    def row_scales(self, scale_per_row: torch.Tensor | Sequence[float]) -> Iterator[None]:
        """During the block, row ``b`` of the UNet call gets ``scale_per_row[b]`` times the adapter's attention.

        Scale 0 adds exactly nothing to that row; all rows 0 skips the
        adapter's attention entirely. One UNet call at a time: not
        re-entrant, not for concurrent calls. A CPU tensor (or list) avoids
        a device sync for the all-zero check.
        """
        scales = check_scales(scale_per_row)
        if not self._call_lock.acquire(blocking=False):
            raise RuntimeError("IPAdapter.row_scales is already active: the shared UNet runs one call at a time.")
        try:
            if bool((scales != 0).any()):
                self._row_scale.value = scales.to(device=self.model.device, dtype=self.model.dtype)
                self._set_processor_scale(1.0)
            yield
        finally:
            self._row_scale.value = None
            self._set_processor_scale(0.0)
            self._call_lock.release()

    def _set_processor_scale(self, value: float) -> None:
        for processor in self._processors:
            processor.scale = [value] * len(processor.scale)


def load_ip_adapter(
    model: ImageModel,
    source: str,
    *,
    variant: str | None = None,
    image_encoder: str | None = None,
    seed: int = 0,
) -> IPAdapter:
    """Load an IP-Adapter into ``model.unet`` (shared by every stream) and its CLIP image encoder.

    ``source``: ``"tiny"`` (random weights of the right shapes for the
    model's UNet and a tiny CLIP encoder, deterministic for ``seed``;
    ``variant`` plain by default), a local ``.safetensors``/``.bin`` file in
    the published IP-Adapter format, or a hub file
    ``owner/repo/path/file.safetensors`` (cache first; HF_HUB_OFFLINE=1: cache
    only). ``variant`` (``plain``/``plus``) is read from the weights when not
    given. ``image_encoder``: a local folder or hub id[/subfolder]; by
    default the ``image_encoder`` folder beside the weights (h94's layout).

    Raises ModelLoadError when files are missing, ConfigError when the
    adapter does not fit the UNet or encoder; both before the UNet changes.
    """
    unet = model.unet
    if not hasattr(unet, "_load_ip_adapter_weights"):
        raise ConfigError(f"model {model.name!r}: IP-Adapter needs a diffusers UNet2DConditionModel, not {type(unet).__name__}.")
    if getattr(unet, "encoder_hid_proj", None) is not None and unet.config.encoder_hid_dim_type == "ip_image_proj":
        raise ConfigError(f"model {model.name!r} already has an IP-Adapter loaded; build the model again to use another.")
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(f"IP-Adapter variant must be one of {', '.join(VARIANTS)}, not {variant!r}.")
    if source == "tiny":
        if image_encoder is not None:
            raise ConfigError("the tiny IP-Adapter brings its own tiny image encoder; do not pass image_encoder with it.")
        variant = variant or "plain"
        state_dict = tiny_ip_adapter_state_dict(unet, variant, seed=seed)
        check_fits(unet, state_dict, variant, source)
        encoder = tiny_image_encoder(seed).to(device=model.device)
        encoder = encoder if model.dtype == torch.float32 else encoder.to(dtype=model.dtype)
    else:
        path, hub = resolve_weight_file(source)
        state_dict = read_state_dict(path, source)
        found = detect_variant(state_dict["image_proj"], source)
        if variant is not None and variant != found:
            raise ConfigError(f"IP-Adapter {source!r} is a {found} adapter, not {variant}.")
        variant = found
        check_fits(unet, state_dict, variant, source)
        encoder = load_image_encoder(image_encoder, path, hub, source, model.device, model.dtype)
    wanted, have = adapter_encoder_width(state_dict, variant), encoder_width(encoder.config, variant)
    if wanted != have:
        what = "projection_dim" if variant == "plain" else "hidden_size"
        raise ConfigError(
            f"IP-Adapter {source!r} takes {wanted}-wide image features, but its image encoder has {what} {have}; "
            "pass the image encoder the adapter was trained with (e.g. ViT-H for ip-adapter_sd15, ViT-bigG for ip-adapter_sdxl)."
        )
    processors, row_scale = attach_ip_adapter(unet, state_dict)
    return IPAdapter(model=model, image_encoder=encoder, variant=variant, source=source, processors=processors, row_scale=row_scale)


def _check_image(image: Any) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise InputError(f"IP-Adapter image must be a (H, W, 3) uint8 torch.Tensor or numpy array, got {type(image).__name__}.")
    if image.dtype != torch.uint8:
        raise InputError(f"IP-Adapter image must be uint8 (0..255), got dtype {image.dtype}; shape (H, W, 3).")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise InputError(f"IP-Adapter image must have shape (H, W, 3) (one RGB image, channels last), got {tuple(image.shape)}.")
    height, width = int(image.shape[0]), int(image.shape[1])
    if height == 0 or width == 0:
        raise InputError(f"IP-Adapter image is empty: shape {tuple(image.shape)}.")
    if height * width > MAX_INPUT_PIXELS:
        raise InputError(f"IP-Adapter image {width}x{height} is too large (at most {MAX_INPUT_PIXELS} pixels).")
    return image
