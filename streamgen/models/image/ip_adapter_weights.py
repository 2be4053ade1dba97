"""IP-Adapter weights: where they come from, what kind they are, and whether they fit a UNet.

The published format (h94/IP-Adapter and most fine-tunes) is one file with
two groups of tensors: ``image_proj.*`` (the module turning a CLIP image
embedding into a few extra cross-attention tokens) and ``ip_adapter.<n>.*``
(a ``to_k_ip``/``to_v_ip`` pair per cross-attention layer, numbered 1, 3, 5, …
in the order of ``unet.attn_processors``). ``.bin`` files hold it as a nested
dict, ``.safetensors`` files flat with dotted prefixes.

Everything here is checked BEFORE the UNet is touched, so an adapter made for
another base model fails with a :class:`ConfigError` and leaves the shared
UNet as it was.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ...errors import ConfigError, ModelLoadError
from ..loading.hub import fetch_file, how_to_get, hub_offline

VARIANTS = ("plain", "plus")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
PLAIN_TOKENS = 4  # diffusers' ImageProjection for IP-Adapter always makes 4 tokens
PLUS_DEPTH = 4  # diffusers builds IPAdapterPlusImageProjection with its default depth
PLUS_DIM_HEAD = 64  # ... and derives the heads as to_q rows // 64
ENCODER_FOLDER = "image_encoder"

StateDict = dict[str, dict[str, torch.Tensor]]


# ---- UNet layout ---------------------------------------------------------------------------


def unet_cross_attention_dim(unet: torch.nn.Module) -> int:
    dim = unet.config.cross_attention_dim
    if isinstance(dim, (list, tuple)):
        if len(set(dim)) != 1:
            raise ConfigError(f"IP-Adapter needs one cross-attention dim for the whole UNet; this UNet has {list(dim)}.")
        dim = dim[0]
    return int(dim)


def cross_attention_layout(unet: torch.nn.Module) -> list[tuple[int, int]]:
    """(key id in the published file, hidden size) of each cross-attention layer, in diffusers' order."""
    channels = list(unet.config.block_out_channels)
    layout, key_id = [], 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        block, index = name.split(".")[:2]
        if block == "mid_block":
            hidden = channels[-1]
        elif block == "up_blocks":
            hidden = channels[::-1][int(index)]
        else:
            hidden = channels[int(index)]
        layout.append((key_id, hidden))
        key_id += 2
    return layout


# ---- reading files -------------------------------------------------------------------------


def read_state_dict(path: Path, source: str) -> StateDict:
    """A published-format adapter file as ``{"image_proj": {...}, "ip_adapter": {...}}``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # noqa: PLC0415

            raw: Mapping = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - corrupt files, pickles, permissions: all "could not load"
        raise ModelLoadError(f"IP-Adapter {source!r}: could not read {path} ({type(error).__name__}: {error}).") from error
    return nest_state_dict(raw, source)


def nest_state_dict(raw: Mapping, source: str) -> StateDict:
    """Accept the nested (``.bin``) and flat dotted (``.safetensors``) layouts alike."""
    groups: StateDict = {"image_proj": {}, "ip_adapter": {}}
    for key, value in raw.items():
        if key in groups and isinstance(value, Mapping):
            groups[key].update(value)
            continue
        group, _, rest = str(key).partition(".")
        if group in groups and rest and isinstance(value, torch.Tensor):
            groups[group][rest] = value
    if not groups["image_proj"] or not groups["ip_adapter"]:
        raise ModelLoadError(
            f"IP-Adapter {source!r} is not in the published IP-Adapter format: expected 'image_proj.*' and "
            "'ip_adapter.*' tensors (as in h94/IP-Adapter's ip-adapter_*.safetensors / .bin)."
        )
    return groups


def flatten_state_dict(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """The flat ``.safetensors`` layout of a nested adapter state dict."""
    return {f"{group}.{key}": value for group, tensors in state_dict.items() for key, value in tensors.items()}


# ---- kinds ---------------------------------------------------------------------------------


def detect_variant(image_proj: Mapping[str, torch.Tensor], source: str) -> str:
    """``plain`` (ImageProjection of CLIP image_embeds) or ``plus`` (Resampler of penultimate states)."""
    if "proj.weight" in image_proj:
        return "plain"
    if "proj.3.weight" in image_proj:
        kind = "IP-Adapter Full Face"
    elif "proj.0.weight" in image_proj or any(k.startswith("perceiver_resampler.") for k in image_proj):
        kind = "IP-Adapter FaceID"
    elif "latents" in image_proj and "proj_in.weight" in image_proj:
        return "plus"
    else:
        kind = "an unknown image projection"
    raise ConfigError(f"IP-Adapter {source!r} is {kind}; streamgen supports the plain and plus IP-Adapters.")


def adapter_cross_attention_dim(state_dict: StateDict, variant: str) -> int:
    """The cross-attention width the adapter's image tokens are made for."""
    image_proj = state_dict["image_proj"]
    if variant == "plain":
        return int(image_proj["proj.weight"].shape[0]) // PLAIN_TOKENS
    return int(image_proj["proj_out.weight"].shape[0])


def adapter_encoder_width(state_dict: StateDict, variant: str) -> int:
    """What the adapter takes from the image encoder: projection dim (plain) or hidden size (plus)."""
    image_proj = state_dict["image_proj"]
    return int(image_proj["proj.weight" if variant == "plain" else "proj_in.weight"].shape[1])


def encoder_width(config, variant: str) -> int:
    return int(config.projection_dim if variant == "plain" else config.hidden_size)


def check_fits(unet: torch.nn.Module, state_dict: StateDict, variant: str, source: str) -> None:
    """Raise ConfigError unless every tensor of the adapter has the shape diffusers will need for ``unet``."""
    unet_dim = unet_cross_attention_dim(unet)
    adapter_dim = adapter_cross_attention_dim(state_dict, variant)
    ip_layers = state_dict["ip_adapter"]
    first = ip_layers.get("1.to_k_ip.weight")
    layer_dim = int(first.shape[1]) if first is not None and first.ndim == 2 else adapter_dim
    for dim in (adapter_dim, layer_dim):
        if dim != unet_dim:
            raise ConfigError(
                f"IP-Adapter {source!r} is made for a UNet with cross-attention dim {dim}, but this UNet has "
                f"cross-attention dim {unet_dim}; use an IP-Adapter made for this base model "
                "(SD 1.5 / SD-turbo: 768, SD 2.x: 1024, SDXL: 2048)."
            )
    layout = cross_attention_layout(unet)
    ids = {int(m.group(1)) for k in ip_layers if (m := re.match(r"(\d+)\.to_[kv]_ip\.weight$", k))}
    if ids != {key_id for key_id, _ in layout}:
        raise ConfigError(
            f"IP-Adapter {source!r} has weights for {len(ids)} cross-attention layers, but this UNet has "
            f"{len(layout)}; it is made for another base model."
        )
    for key_id, hidden in layout:
        for name in ("to_k_ip", "to_v_ip"):
            shape = tuple(ip_layers[f"{key_id}.{name}.weight"].shape)
            if shape != (hidden, unet_dim):
                raise ConfigError(
                    f"IP-Adapter {source!r}: layer {key_id}.{name} has shape {shape}, this UNet needs "
                    f"{(hidden, unet_dim)}; it is made for another base model."
                )
    if variant == "plus":
        _check_plus(state_dict["image_proj"], source)
    try:  # build diffusers' image projection once, off the UNet, so a bad layout fails here
        with torch.random.fork_rng(devices=[]):
            unet._convert_ip_adapter_image_proj_to_diffusers(state_dict["image_proj"], low_cpu_mem_usage=False)
    except Exception as error:  # noqa: BLE001 - strict load_state_dict errors, missing keys
        raise ConfigError(f"IP-Adapter {source!r}: its image projection does not load ({type(error).__name__}: {error}).") from error


def _check_plus(image_proj: Mapping[str, torch.Tensor], source: str) -> None:
    depth = len({k.split(".")[1] for k in image_proj if k.startswith("layers.")})
    q_rows = int(image_proj["layers.0.0.to_q.weight"].shape[0]) if "layers.0.0.to_q.weight" in image_proj else -1
    if depth != PLUS_DEPTH or q_rows <= 0 or q_rows % PLUS_DIM_HEAD:
        raise ConfigError(
            f"IP-Adapter {source!r}: diffusers loads plus adapters with {PLUS_DEPTH} resampler layers and "
            f"{PLUS_DIM_HEAD}-wide heads; this one has {depth} layers and a {q_rows}-row query projection."
        )


# ---- where the files are -------------------------------------------------------------------


def resolve_weight_file(source: str) -> tuple[Path, tuple[str, str] | None]:
    """The local adapter file for ``source``, and (hub repo, folder in it) when it came from the hub.

    ``source`` is a local file, a folder holding exactly one weight file, or
    ``owner/repo/path/in/repo.safetensors`` on the Hugging Face hub (cache
    first; with HF_HUB_OFFLINE=1 the cache only).
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path, None
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if len(files) != 1:
            names = ", ".join(p.name for p in files) or "none"
            raise ModelLoadError(f"IP-Adapter {source!r} is a folder with {len(files)} weight files ({names}); pass the file itself.")
        return files[0], None
    parts = source.split("/")
    if source.startswith((".", "/", "~")) or len(parts) < 3 or not source.endswith(WEIGHT_SUFFIXES):
        raise ModelLoadError(
            f"IP-Adapter {source!r}: no such file or directory. Pass a local .safetensors/.bin file in the "
            "published IP-Adapter format or a hub file such as 'h94/IP-Adapter/models/ip-adapter_sd15.safetensors'."
        )
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        local = fetch_file(repo, filename, "IP-Adapter")
    except ModelLoadError as error:
        raise ModelLoadError(f"IP-Adapter {source!r} is not a local file; as a hub file: {error}") from error
    return local, (repo, filename.rpartition("/")[0])


def load_image_encoder(spec: str | None, weights: Path, hub: tuple[str, str] | None, source: str, device, dtype):
    """The CLIP image encoder: ``spec`` (a folder or hub id[/subfolder]), else the one published beside the weights."""
    if spec is None:
        if hub is not None:
            repo, folder = hub
            return _hub_encoder(repo, f"{folder}/{ENCODER_FOLDER}" if folder else ENCODER_FOLDER, device, dtype)
        for candidate in (weights.parent / ENCODER_FOLDER, weights.parent.parent / ENCODER_FOLDER):
            if (candidate / "config.json").is_file():
                return _local_encoder(candidate, device, dtype)
        raise ModelLoadError(
            f"IP-Adapter {source!r}: found no CLIP image encoder beside it (looked for {weights.parent / ENCODER_FOLDER} "
            f"and {weights.parent.parent / ENCODER_FOLDER}); pass image_encoder= a local folder or a hub id such as "
            "'h94/IP-Adapter/models/image_encoder'."
        )
    path = Path(spec).expanduser()
    if path.is_dir():
        return _local_encoder(path, device, dtype)
    parts = spec.split("/")
    if spec.startswith((".", "/", "~")) or len(parts) < 2:
        raise ModelLoadError(f"IP-Adapter image encoder {spec!r}: no such folder.")
    return _hub_encoder("/".join(parts[:2]), "/".join(parts[2:]), device, dtype)


def _local_encoder(folder: Path, device, dtype):
    from transformers import CLIPVisionModelWithProjection  # noqa: PLC0415

    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(f"IP-Adapter image encoder {str(folder)!r} could not be loaded ({type(error).__name__}: {error}).") from error
    return encoder.to(device=device).eval().requires_grad_(False)


def _hub_encoder(repo: str, subfolder: str, device, dtype):
    from transformers import CLIPVisionModelWithProjection  # noqa: PLC0415

    include = (f"{subfolder}/*" if subfolder else "*",)
    kwargs = {"subfolder": subfolder} if subfolder else {}
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(repo, local_files_only=True, dtype=dtype, **kwargs)
    except Exception as cached_error:  # noqa: BLE001 - "not cached" in any of its forms
        where = f"{repo}/{subfolder}" if subfolder else repo
        if hub_offline():
            raise ModelLoadError(
                f"IP-Adapter image encoder {where!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, "
                f"so streamgen did not try the network. {how_to_get(repo, include)}"
            ) from cached_error
        try:
            encoder = CLIPVisionModelWithProjection.from_pretrained(repo, dtype=dtype, **kwargs)
        except Exception as error:  # noqa: BLE001
            raise ModelLoadError(
                f"IP-Adapter image encoder {where!r} could not be loaded ({type(error).__name__}: {error}). {how_to_get(repo, include)}"
            ) from error
    return encoder.to(device=device).eval().requires_grad_(False)
