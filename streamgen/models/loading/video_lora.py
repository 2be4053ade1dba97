"""LoRA adapters for the causal Wan DiT: ``lora={path_or_hub_file: scale}`` on video models.

Wan LoRAs are published in the names of the code they were trained with,
not in diffusers' names, so this module reads the file itself (rather than
through diffusers' loaders, as :mod:`.lora` does for image models) and maps
every entry to one linear layer of the DiT:

- original Wan names, as the Wan trainers and ComfyUI write them:
  ``diffusion_model.blocks.0.self_attn.q.lora_A.weight`` / ``lora_B`` (or
  ``lora_down`` / ``lora_up`` with ``....q.alpha``);
- diffusers / PEFT names: ``transformer.blocks.0.attn1.to_q.lora_A.weight``
  (also bare or behind ``base_model.model.``), with the alpha of diffusers'
  ``lora_adapter_metadata`` when the file has one;
- kohya names (musubi-tuner and other kohya-style trainers):
  ``lora_unet_blocks_0_self_attn_q.lora_down.weight`` / ``lora_up`` /
  ``.alpha`` (the Wan or the diffusers module name with ``_`` for ``.``).

Original names go through the table that loads causal student checkpoints
(:data:`~streamgen.models.video.wan_checkpoint.DIFFUSERS_TO_ORIGINAL`), so
a LoRA and a checkpoint of the same trainer agree on what each name means.
Any linear layer of the DiT may carry a LoRA: the attention projections
(q, k, v, o of self- and cross-attention) and the FFN are what trainers
target; the embedding and head linears are accepted when a file has them.

A file is checked whole before anything touches the model: every entry must
map to a layer (a LoRA for another model, e.g. the 14B's blocks 30..39 on the
1.3B or an image-to-video LoRA's ``k_img``, is refused with a
:class:`~streamgen.errors.ConfigError` listing the first keys that did not
map), and every pair's shapes must fit its layer. Then peft LoRA layers are
added through diffusers' adapter calls on the DiT (``add_adapter``,
``set_adapters``, ``fuse_lora``, ``unload_lora``) with each file's ranks and
alphas, each adapter gets its user scale on top of alpha/rank, and with
``fuse_lora`` (the default) they are merged into the weights and removed: a
fused LoRA costs nothing per step.

Unfused, the adapters stay as peft layers and :func:`set_video_lora_scales`
changes their scales later. The scales belong to the model, so every stream
of that model sees a change (from its next chunk on; a chunk running on
another thread at that moment may mix old and new scales). One exception:
a stream computes the cross-attention keys and values of its prompt once
(when it starts and when its prompt changes), so a LoRA on the
cross-attention ``k``/``v`` projections reaches a running stream at its
next prompt change; every other layer changes at once.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigError, ModelLoadError
from ..video.causal_wan import CausalWanTransformer
from ..video.video_model import VideoModel
from ..video.wan_checkpoint import DIFFUSERS_TO_ORIGINAL, WRAPPER_PREFIXES, extract_state_dict, read_checkpoint, rename_keys
from .hub import fetch_file
from .lora import lora_state_dict_path
from .single_file import SINGLE_FILE_SUFFIXES

# Prefixes in front of a layer's name, tried one after another until the name is a layer's.
NAME_PREFIXES = ("lora_unet_", "lora_transformer_", "diffusion_model_", "base_model.model.", "transformer.", *WRAPPER_PREFIXES)
_PAIR = re.compile(r"^(?P<layer>.+)\.(?P<part>lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight$")
_ALPHA = re.compile(r"^(?P<layer>.+)\.alpha$")
_DOWN = ("lora_A", "lora_down")
METADATA_KEY = "lora_adapter_metadata"  # diffusers' safetensors metadata entry (the peft LoraConfig as JSON)
EXAMPLE_KEYS = (
    "'diffusion_model.blocks.0.self_attn.q.lora_A.weight' (Wan names, also lora_down/lora_up + .alpha), "
    "'transformer.blocks.0.attn1.to_q.lora_A.weight' (diffusers/PEFT names) or "
    "'lora_unet_blocks_0_self_attn_q.lora_down.weight' + '.alpha' (kohya names)"
)
SHOWN_KEYS = 5
ADAPTER_PREFIX = "streamgen_video_lora_"
_LOADED_ATTRIBUTE = "_streamgen_video_loras"


@dataclass(frozen=True)
class LoraPair:
    """One layer's LoRA: ``down`` (rank, in), ``up`` (out, rank) and ``alpha`` (the update is up @ down · alpha / rank)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass(frozen=True)
class VideoLora:
    """A LoRA file mapped onto the DiT: diffusers layer name → its pair."""

    source: str
    path: Path
    layers: dict[str, LoraPair]


@dataclass
class LoadedVideoLoras:
    """What :func:`apply_video_loras` did to a model: kept in the DiT for :func:`set_video_lora_scales`."""

    fused: bool
    adapters: dict[str, str] = field(default_factory=dict)  # the ``lora=`` key → peft adapter name
    scales: dict[str, float] = field(default_factory=dict)  # the ``lora=`` key → its scale in force


# --------------------------------------------------------------------------- API
def check_lora_option(loras: Any) -> dict[str, float]:
    """The ``lora=`` option as ``{source: scale}``, or ConfigError."""
    if loras is None:
        return {}
    if not isinstance(loras, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in loras.items()
    ):
        raise ConfigError(f"lora must map LoRA files (paths or hub files) to numeric scales; got {loras!r}")
    return {k: float(v) for k, v in loras.items()}


def video_lora_file(source: str) -> Path:
    """The local file of a LoRA: a path, a folder holding one, a hub repository or a hub file ``owner/repo/file.safetensors``.

    Paths, folders and repositories follow the image models' rules
    (:func:`~streamgen.models.loading.lora.lora_state_dict_path`); a hub file
    is looked up in the Hugging Face cache first, and with ``HF_HUB_OFFLINE=1``
    the network is never tried. Missing → ModelLoadError naming ``source``.
    """
    hub_file = _hub_file(source)
    if hub_file is None:
        return lora_state_dict_path(source)
    repo, filename = hub_file
    try:
        return fetch_file(repo, filename, "LoRA")
    except ModelLoadError as error:
        raise ModelLoadError(f"LoRA {source!r}: no such local file, and as the hub file {filename!r} of {repo!r}: {error}") from error


def resolve_video_lora_files(loras: Mapping[str, float]) -> dict[str, Path]:
    """Every LoRA's local file, found before the (large) model is built: a typo fails in milliseconds."""
    return {source: video_lora_file(source) for source in loras}


def read_video_lora(source: str, transformer: CausalWanTransformer, path: Path | None = None) -> VideoLora:
    """The LoRA ``source`` (file ``path``, else found) mapped onto ``transformer``'s layers and checked (see module docstring)."""
    path = video_lora_file(source) if path is None else path
    tensors, metadata = _read_file(source, path)
    return VideoLora(source, path, _map_layers(source, tensors, metadata, _inner(transformer)))


def apply_video_loras(
    transformer: CausalWanTransformer, loras: Mapping[str, float], *, fuse: bool = True, files: Mapping[str, Path] | None = None
) -> None:
    """Load each LoRA with its scale into the DiT; merge them into the weights if ``fuse``.

    ``files``: the local files of the sources (:func:`resolve_video_lora_files`),
    else they are looked up here. Every file is read and checked before the
    first adapter is injected, so a refused LoRA leaves the model untouched.
    """
    loras = check_lora_option(loras)
    if not loras:
        return
    inner = _inner(transformer)
    if getattr(transformer, _LOADED_ATTRIBUTE, None) is not None:
        raise ConfigError("this video model carries LoRAs already; load the model again with all its LoRAs at once")
    files = files or {}
    parsed = [read_video_lora(source, transformer, files.get(source)) for source in loras]
    loaded = LoadedVideoLoras(fused=fuse)
    for index, lora in enumerate(parsed):
        name = f"{ADAPTER_PREFIX}{index}"
        _inject(inner, name, lora)
        loaded.adapters[lora.source] = name
        loaded.scales[lora.source] = loras[lora.source]
    _activate(inner, loaded)
    if fuse:
        inner.fuse_lora()  # merges every active adapter at its scale
        inner.unload_lora()  # then each peft layer gives way to its (merged) base layer
    setattr(transformer, _LOADED_ATTRIBUTE, loaded)


def fuse_video_loras_into_part(
    part: CausalWanTransformer, loras: Mapping[str, float], reference: torch.nn.Module, owns: Callable[[str], bool]
) -> None:
    """Fuse LoRAs into the layers a pipeline stage holds (``owns(parameter name)``) of a partly built DiT.

    Each file is read and checked against ``reference``, the whole
    architecture (on the meta device: names and shapes only), exactly as in
    one process, so a file is refused the same way wherever it runs; then
    only the pairs of this stage's layers are injected and merged. Every
    stage does this for its layers, so together they hold the model one
    process would, and a block moved by a rebalance carries its merged
    weights along.
    """
    loras = check_lora_option(loras)
    inner = _inner(part)
    for index, (source, scale) in enumerate(loras.items()):
        path = video_lora_file(source)
        tensors, metadata = _read_file(source, path)
        layers = _map_layers(source, tensors, metadata, reference)
        owned = {name: pair for name, pair in layers.items() if owns(f"{name}.weight")}
        if not owned:
            continue
        name = f"{ADAPTER_PREFIX}{index}"
        _inject(inner, name, VideoLora(source, path, owned))
        _activate(inner, LoadedVideoLoras(fused=True, adapters={source: name}, scales={source: scale}))
        inner.fuse_lora()
        inner.unload_lora()


def set_video_lora_scales(model: VideoModel | CausalWanTransformer, scales: Mapping[str, float]) -> None:
    """Change the scales of a video model's unfused LoRAs (loaded with ``fuse_lora=False``), named by their ``lora=`` keys.

    Model-wide: every stream of the model sees the new scales from its next
    chunk on, except cross-attention ``k``/``v`` LoRAs, which reach a
    running stream at its next prompt change (see module docstring). A scale
    of 0 switches a LoRA off exactly.
    """
    transformer = _transformer_of(model)
    loaded = _loaded(transformer)
    if loaded.fused:
        raise ConfigError("this video model's LoRAs were fused into its weights at load; load it with fuse_lora=False to change their scales")
    changes = check_lora_option(scales)
    unknown = [name for name in changes if name not in loaded.adapters]
    if unknown:
        raise ConfigError(f"no LoRA {', '.join(map(repr, unknown))} on this video model; its LoRAs: {', '.join(map(repr, loaded.adapters))}")
    loaded.scales = {**loaded.scales, **changes}
    _activate(_inner(transformer), loaded)


def video_lora_scales(model: VideoModel | CausalWanTransformer) -> dict[str, float]:
    """The LoRAs of a video model and their scales in force (``{}`` without LoRAs)."""
    loaded = getattr(_transformer_of(model), _LOADED_ATTRIBUTE, None)
    return dict(loaded.scales) if loaded is not None else {}


# --------------------------------------------------------------------------- reading
def _hub_file(source: str) -> tuple[str, str] | None:
    """``owner/repo/path/file.safetensors`` (not a local path) → (repo, file in repo); else None."""
    if Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or "\\" in source:
        return None
    parts = source.split("/")
    if len(parts) < 3 or not all(parts) or not source.lower().endswith(SINGLE_FILE_SUFFIXES):
        return None
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:])


def _read_file(source: str, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open  # noqa: PLC0415

            with safe_open(str(path), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
        return extract_state_dict(read_checkpoint(path)), {}
    except ModelLoadError as error:
        raise ModelLoadError(f"could not read LoRA {source!r} from {path}: {error}") from error
    except Exception as error:  # noqa: BLE001 - safetensors/torch raise many kinds on damaged files
        raise ModelLoadError(f"could not read LoRA {source!r} from {path} ({type(error).__name__}: {error})") from error


def _layer_names(inner: torch.nn.Module) -> dict[str, str]:
    """Every spelling a file may use for a linear layer (diffusers and Wan names, dotted and kohya) → its diffusers name."""
    names: dict[str, str] = {}
    for name, module in inner.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith(".base_layer"):
            original = next(iter(rename_keys({f"{name}.": None}, DIFFUSERS_TO_ORIGINAL)))[:-1]
            for spelling in (name, original):
                names[spelling] = name
                names[spelling.replace(".", "_")] = name
    return names


def _resolve(name: str, names: Mapping[str, str]) -> str | None:
    while name not in names:
        prefix = next((p for p in NAME_PREFIXES if name.startswith(p)), None)
        if prefix is None:
            return None
        name = name[len(prefix) :]
    return names[name]


def _map_layers(source: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], inner: torch.nn.Module) -> dict[str, LoraPair]:
    names = _layer_names(inner)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    spelled: dict[str, str] = {}  # diffusers layer name → the file's name for it
    unmapped: list[str] = []
    for key in sorted(tensors):
        match = _PAIR.match(key) or _ALPHA.match(key)
        layer = _resolve(match["layer"], names) if match else None
        if layer is None:
            unmapped.append(key)
            continue
        if spelled.setdefault(layer, match["layer"]) != match["layer"]:
            raise ConfigError(f"LoRA {source!r} names layer {layer} twice ({spelled[layer]!r} and {match['layer']!r})")
        part = "alpha" if key.endswith(".alpha") else ("down" if match["part"] in _DOWN else "up")
        parts.setdefault(layer, {})[part] = tensors[key]
    if unmapped:
        blocks = len(getattr(inner, "blocks", ()))
        shown = ", ".join(unmapped[:SHOWN_KEYS]) + (f", ... ({len(unmapped)} in all)" if len(unmapped) > SHOWN_KEYS else "")
        raise ConfigError(
            f"LoRA {source!r} does not fit this Wan DiT: {len(unmapped)} of its {len(tensors)} keys map to no linear layer of it: "
            f"{shown}. Expected LoRA pairs like {EXAMPLE_KEYS}, for blocks 0..{blocks - 1}; "
            "is the LoRA made for another model (another Wan size, image-to-video) or in a format streamgen does not read (DoRA, LoHa, full diffs)?"
        )
    if not parts:
        raise ConfigError(f"LoRA {source!r} holds no LoRA weights (no keys like {EXAMPLE_KEYS})")
    default_alpha, alpha_pattern = _metadata_alphas(source, metadata)
    return {
        layer: _pair(source, layer, spelled[layer], found, inner.get_submodule(layer), _alpha_for(layer, default_alpha, alpha_pattern))
        for layer, found in parts.items()
    }


def _metadata_alphas(source: str, metadata: Mapping[str, str]) -> tuple[float | None, dict[str, float]]:
    """diffusers' saved LoraConfig: its ``lora_alpha`` and ``alpha_pattern`` (plain or under ``transformer.``)."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return None, {}
    try:
        config = json.loads(raw)
    except ValueError as error:
        raise ModelLoadError(f"LoRA {source!r}: unreadable {METADATA_KEY} ({error})") from error
    if not isinstance(config, dict):
        return None, {}
    config = {k.removeprefix("transformer."): v for k, v in config.items()}
    if config.get("use_dora"):
        raise ConfigError(f"LoRA {source!r} is a DoRA (use_dora in its metadata), which streamgen does not apply to video models")
    alpha = config.get("lora_alpha")
    return (float(alpha) if isinstance(alpha, (int, float)) else None), dict(config.get("alpha_pattern") or {})


def _alpha_for(layer: str, default: float | None, pattern: Mapping[str, float]) -> float | None:
    for key, value in pattern.items():  # peft's rule: the pattern matches the end of the layer's name
        if re.match(rf"(.*\.)?({key})$", layer):
            return float(value)
    return default


def _pair(source: str, layer: str, spelling: str, found: Mapping[str, torch.Tensor], module: torch.nn.Module, alpha: float | None) -> LoraPair:
    missing = [p for p in ("down", "up") if p not in found]
    if missing:
        raise ConfigError(f"LoRA {source!r}: layer {spelling!r} has no {' and no '.join(missing)} weight (a LoRA needs both)")
    down, up = _matrix(found["down"]), _matrix(found["up"])
    out_features, in_features = module.weight.shape
    if down is None or up is None or down.shape[0] != up.shape[1] or down.shape[1] != in_features or up.shape[0] != out_features:
        raise ConfigError(
            f"LoRA {source!r} does not fit layer {layer} ({spelling!r} in the file): the layer's weight is "
            f"{out_features}x{in_features} (out x in), so down must be (rank, {in_features}) and up ({out_features}, rank); "
            f"the file's down is {tuple(found['down'].shape)} and up {tuple(found['up'].shape)}"
        )
    if "alpha" in found:
        if found["alpha"].numel() != 1:
            raise ConfigError(f"LoRA {source!r}: the alpha of layer {spelling!r} is not a number (shape {tuple(found['alpha'].shape)})")
        alpha = float(found["alpha"].float().item())
    rank = int(down.shape[0])
    return LoraPair(down, up, float(rank) if alpha is None else alpha)


def _matrix(tensor: torch.Tensor) -> torch.Tensor | None:
    """A 2-D weight (kohya may store linear LoRAs as (out, in, 1, 1)); None if it is not one."""
    while tensor.ndim > 2 and tensor.shape[-1] == 1:
        tensor = tensor.squeeze(-1)
    return tensor if tensor.ndim == 2 else None


# --------------------------------------------------------------------------- applying
def _inject(inner: torch.nn.Module, name: str, lora: VideoLora) -> None:
    """peft LoRA layers named ``name`` on the LoRA's layers, with its ranks, alphas and weights."""
    from peft import LoraConfig  # noqa: PLC0415

    layers = sorted(lora.layers)
    first = lora.layers[layers[0]]
    config = LoraConfig(
        r=first.rank,
        lora_alpha=first.alpha,
        target_modules=layers,
        rank_pattern={re.escape(layer): lora.layers[layer].rank for layer in layers},  # peft matches patterns as regexes
        alpha_pattern={re.escape(layer): lora.layers[layer].alpha for layer in layers},
        lora_dropout=0.0,
        inference_mode=True,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*peft_config.*multiple adapters")  # our several adapters are deliberate
        inner.add_adapter(config, adapter_name=name)
    with torch.no_grad():
        for layer, pair in lora.layers.items():
            module = inner.get_submodule(layer)
            if module.r.get(name) != pair.rank or float(module.lora_alpha.get(name)) != pair.alpha:
                raise ModelLoadError(
                    f"peft gave layer {layer} rank {module.r.get(name)} and alpha {module.lora_alpha.get(name)}, "
                    f"expected {pair.rank} and {pair.alpha}"
                )
            module.lora_A[name].weight.copy_(pair.down)
            module.lora_B[name].weight.copy_(pair.up)


def _activate(inner: torch.nn.Module, loaded: LoadedVideoLoras) -> None:
    """Every adapter active at its scale (all of them at once: diffusers' ``set_adapters`` deactivates any not named)."""
    inner.set_adapters([loaded.adapters[source] for source in loaded.scales], weights=list(loaded.scales.values()))
    inner.requires_grad_(False)  # set_adapters makes the active adapters trainable


def _inner(transformer: Any) -> torch.nn.Module:
    if not isinstance(transformer, CausalWanTransformer):
        raise ConfigError(f"LoRAs for video models go on a CausalWanTransformer, got {type(transformer).__name__}")
    return transformer.transformer


def _transformer_of(model: Any) -> CausalWanTransformer:
    transformer = model.transformer if isinstance(model, VideoModel) else model
    if not isinstance(transformer, CausalWanTransformer):
        raise ConfigError(
            f"video LoRA scales live in a model run in this process (a VideoModel or CausalWanTransformer), got {type(transformer).__name__}"
        )
    return transformer


def _loaded(transformer: CausalWanTransformer) -> LoadedVideoLoras:
    loaded = getattr(transformer, _LOADED_ATTRIBUTE, None)
    if loaded is None:
        raise ConfigError("this video model has no LoRA; load it with lora={file: scale} and fuse_lora=False")
    return loaded
