"""Which files of a diffusers/transformers folder hold the weights, and which variant to use.

Hub repositories often carry the same weights several times (fp32 and fp16
safetensors, legacy ``.bin`` pickles, a single-file checkpoint at the root).
Downloading or loading the wrong set wastes gigabytes, so this module picks
exactly one set per component folder: safetensors over ``.bin``, and the
``fp16`` variant when half precision is wanted and the repository has it.
The same rule decides what to download and what to load afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# diffusers models, transformers models, legacy transformers pickles.
WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
HALF_VARIANT = "fp16"

_STEM = "|".join(re.escape(s) for s in WEIGHT_STEMS)
_WEIGHT_FILE = re.compile(rf"^(?:{_STEM})(?P<variant>\.fp16)?(?:-\d+-of-\d+)?\.(?P<ext>safetensors|bin)$")
_INDEX_FILE = re.compile(rf"^(?:{_STEM})\.(?P<ext>safetensors|bin)\.index(?P<variant>\.fp16)?\.json$")


@dataclass(frozen=True)
class WeightChoice:
    """The weight files chosen in one folder and the diffusers ``variant`` that names them."""

    files: tuple[str, ...]
    variant: str | None


def _classify(name: str) -> tuple[str, bool] | None:
    """(extension, is_half_variant) for a weight or index file name, else None."""
    match = _WEIGHT_FILE.match(name) or _INDEX_FILE.match(name)
    if match is None:
        return None
    return match.group("ext"), match.group("variant") is not None


def choose_weight_files(names: Iterable[str], prefer_half: bool) -> WeightChoice | None:
    """Pick one consistent set of weight files among ``names`` (basenames in one folder)."""
    classified = [(name, _classify(name)) for name in names]
    weights = [(name, kind) for name, kind in classified if kind is not None]
    if not weights:
        return None
    has_safetensors = any(ext == "safetensors" for _, (ext, _half) in weights)
    ext_wanted = "safetensors" if has_safetensors else "bin"
    same_ext = [(name, half) for name, (ext, half) in weights if ext == ext_wanted]
    halves = [name for name, half in same_ext if half]
    fulls = [name for name, half in same_ext if not half]
    use_half = bool(halves) and (prefer_half or not fulls)
    chosen = halves if use_half else fulls
    return WeightChoice(files=tuple(sorted(chosen)), variant=HALF_VARIANT if use_half else None)


def is_side_file(name: str) -> bool:
    """Configs and tokenizer files that travel with the weights (small JSON and text)."""
    return _classify(name) is None and name.endswith((".json", ".txt", ".model"))


def select_folder_files(repo_files: Sequence[str], folders: Sequence[str], prefer_half: bool) -> list[str]:
    """The files to fetch from ``repo_files`` (repo-relative paths) for the given component folders.

    ``""`` stands for the repository root. Each folder contributes its side
    files (configs, tokenizer files) and one chosen set of weight files.
    """
    selected: list[str] = []
    for folder in folders:
        prefix = f"{folder}/" if folder else ""
        names = [f[len(prefix) :] for f in repo_files if f.startswith(prefix) and "/" not in f[len(prefix) :]]
        selected += [prefix + n for n in names if is_side_file(n)]
        choice = choose_weight_files(names, prefer_half)
        if choice is not None:
            selected += [prefix + n for n in choice.files]
    return selected
