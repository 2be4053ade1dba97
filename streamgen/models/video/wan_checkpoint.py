"""Causal Wan student checkpoints (StreamDiffusionV2, Self-Forcing, CausVid) → diffusers parameter names.

Causal students are trained in the original Wan code base and released as
torch pickles: a dict holding ``generator`` / ``generator_ema`` /
``state_dict`` (or the bare state dict), in ORIGINAL Wan key names
(``blocks.0.self_attn.q.weight``), usually behind a wrapper prefix such as
``model.`` (the training wrapper's attribute). The weights are those of a
plain Wan DiT, so they load into diffusers' ``WanTransformer3DModel`` after
renaming; :class:`~streamgen.models.video.causal_wan.CausalWanTransformer` then
runs them causally.

The renaming reuses diffusers' own single-file converter
(``convert_wan_transformer_to_diffusers``) when it exists and otherwise the
table below (the two are checked against each other in the tests).
:func:`save_original_layout` is the inverse, so tests can write a tiny model
the way the trainers do and load it back.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelLoadError

# Where trainers keep the weights inside the pickle, in order of preference (EMA weights are the ones to run).
CONTAINER_KEYS = ("generator_ema", "generator", "state_dict", "model", "module")
# Prefixes that wrappers (training module, DDP, FSDP, torch.compile, activation checkpointing) add to every key.
WRAPPER_PREFIXES = (
    "model.",
    "module.",
    "diffusion_model.",
    "_orig_mod.",
    "_fsdp_wrapped_module.",
    "_checkpoint_wrapped_module.",
)

# Original Wan name → diffusers name, applied in order to each key.
ORIGINAL_TO_DIFFUSERS: tuple[tuple[str, str], ...] = (
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"^head\.head\.", "proj_out."),
    (r"^(blocks\.\d+)\.modulation$", r"\1.scale_shift_table"),
    (r"\.self_attn\.", ".attn1."),
    (r"\.cross_attn\.", ".attn2."),
    (r"\.(attn[12])\.q\.", r".\1.to_q."),
    (r"\.(attn[12])\.k\.", r".\1.to_k."),
    (r"\.(attn[12])\.v\.", r".\1.to_v."),
    (r"\.(attn[12])\.o\.", r".\1.to_out.0."),
    (r"^(blocks\.\d+)\.norm3\.", r"\1.norm2."),
    (r"\.ffn\.0\.", ".ffn.net.0.proj."),
    (r"\.ffn\.2\.", ".ffn.net.2."),
)

# diffusers name → original Wan name (the inverse of the table above).
DIFFUSERS_TO_ORIGINAL: tuple[tuple[str, str], ...] = (
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),
    (r"\.to_q\.", ".q."),
    (r"\.to_k\.", ".k."),
    (r"\.to_v\.", ".v."),
    (r"\.to_out\.0\.", ".o."),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
)

# Fused projections are copies of to_q/to_k/to_v made at run time, never saved.
_FUSED = re.compile(r"\.(to_qkv|to_kv|to_added_kv)\.")


# --------------------------------------------------------------------------- loading
def load_causal_checkpoint(
    path: str | Path, *, key: str | None = None, trust_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """The transformer state dict of a causal student checkpoint, in diffusers names.

    ``key`` picks the entry (``generator_ema``, ``generator``, ...); by default
    the first of :data:`CONTAINER_KEYS` present, or the bare dict. Pickles
    are read with ``weights_only=True`` (and memory-mapped); a checkpoint
    that also pickles Python objects needs ``trust_pickle=True``.
    """
    return to_diffusers_layout(extract_state_dict(read_checkpoint(path, trust_pickle=trust_pickle), key=key))


def load_causal_weights(
    transformer: torch.nn.Module, path: str | Path, *, key: str | None = None, trust_pickle: bool = False
) -> None:
    """Load a causal checkpoint into a diffusers ``WanTransformer3DModel`` (or a ``CausalWanTransformer``)."""
    target = getattr(transformer, "transformer", transformer)
    raw = strip_wrapper_prefixes(extract_state_dict(read_checkpoint(path, trust_pickle=trust_pickle), key=key))
    state = to_diffusers_layout(raw)
    expected = {k for k in target.state_dict() if not _FUSED.search(k)}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        origin = _file_names(raw, set(unexpected))
        named = [k if origin.get(k, k) == k else f"{k} (the file's {origin[k]})" for k in unexpected]
        raise ModelLoadError(
            f"{path} does not fit this Wan transformer: missing {_sample(missing)}, unexpected (did not map) {_sample(named)}"
        )
    target.load_state_dict(state, strict=False)


def read_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """The object stored in a ``.pt``/``.pth``/``.ckpt`` pickle or a ``.safetensors`` file (on the CPU)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # noqa: PLC0415

        return load_file(str(path))
    try:
        return _torch_load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_pickle:
            raise ModelLoadError(
                f"{path} pickles Python objects besides tensors, so it cannot be read safely "
                f"(weights_only=True failed: {error}); pass trust_pickle=True only if you trust its source"
            ) from error
        return _torch_load(path, weights_only=False)


def extract_state_dict(obj: Any, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint object: ``obj[key]``, the preferred container entry, or ``obj`` itself."""
    if not isinstance(obj, Mapping):
        raise ModelLoadError(f"checkpoint holds a {type(obj).__name__}, expected a dict of tensors")
    if key is not None:
        if key not in obj:
            raise ModelLoadError(f"checkpoint has no entry {key!r}; it has {_sample(sorted(map(str, obj)))}")
        obj = obj[key]
    else:
        for name in CONTAINER_KEYS:
            if isinstance(obj.get(name), Mapping):
                obj = obj[name]
                break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(
            f"unknown checkpoint layout: no tensors found; top-level keys are {_sample(sorted(map(str, obj)))} "
            f"(expected one of {', '.join(CONTAINER_KEYS)} or a bare state dict)"
        )
    return tensors


def to_diffusers_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes and rename original Wan keys; diffusers-named dicts pass through."""
    state = strip_wrapper_prefixes(state)
    keys = state.keys()
    if "head.head.weight" in keys or any(".self_attn." in k for k in keys):
        return convert_original_to_diffusers(state)
    if "proj_out.weight" in keys or any(".attn1." in k for k in keys):
        return dict(state)
    raise ModelLoadError(
        "unknown checkpoint layout: neither original Wan names (blocks.N.self_attn.q.weight, head.head.weight) "
        f"nor diffusers names (blocks.N.attn1.to_q.weight, proj_out.weight); found keys {_sample(sorted(keys))}"
    )


def strip_wrapper_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove prefixes (``model.``, ``module.``, ...) shared by every key, repeatedly."""
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def convert_original_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Wan names → diffusers names (diffusers' own converter when available)."""
    try:
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers  # noqa: PLC0415
    except ImportError:
        return rename_keys(state_dict, ORIGINAL_TO_DIFFUSERS)
    return convert_wan_transformer_to_diffusers(dict(state_dict))


def convert_diffusers_to_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers names → original Wan names (fused projection copies are dropped)."""
    return rename_keys({k: v for k, v in state_dict.items() if not _FUSED.search(k)}, DIFFUSERS_TO_ORIGINAL)


def rename_keys(state_dict: Mapping[str, torch.Tensor], table: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in table]
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in compiled:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


# --------------------------------------------------------------------------- saving
def save_original_layout(
    transformer: torch.nn.Module | Mapping[str, torch.Tensor],
    path: str | Path,
    key: str | None = "generator_ema",
    prefix: str = "model.",
) -> None:
    """Save weights the way causal-student trainers do: original names, ``prefix`` on every key, under ``key``.

    ``transformer`` is a ``WanTransformer3DModel``, a ``CausalWanTransformer``
    or a diffusers-named state dict; ``key=None`` writes the bare dict.
    """
    if isinstance(transformer, Mapping):
        state = dict(transformer)
    else:
        state = getattr(transformer, "transformer", transformer).state_dict()
    original = {prefix + k: v.detach().cpu().contiguous() for k, v in convert_diffusers_to_original(state).items()}
    torch.save(original if key is None else {key: original}, Path(path))


# --------------------------------------------------------------------------- helpers
def _file_names(raw: Mapping[str, torch.Tensor], renamed: set[str]) -> dict[str, str]:
    """For keys in ``renamed`` (diffusers names), the file's name each came from: an error names what the user can find."""
    origin: dict[str, str] = {}
    for name, value in raw.items():
        try:
            converted = to_diffusers_layout({name: value})
        except ModelLoadError:  # a key alone does not show its layout: it keeps its name
            continue
        origin.update({new: name for new in converted if new in renamed})
    return origin


def _torch_load(path: Path, *, weights_only: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error) and "zip" not in str(error):
            raise ModelLoadError(f"cannot read checkpoint {path}: {error}") from error
        # Legacy (non-zip) torch.save format cannot be memory-mapped.
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def _sample(keys: list[str], limit: int = 8) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")
