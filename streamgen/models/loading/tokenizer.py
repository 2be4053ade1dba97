"""A CLIP-compatible tokenizer built offline, for tiny and dummy-weight models.

Real checkpoints ship their own tokenizer; tiny and ``weights="dummy"`` models
must work with no hub. This tokenizer uses CLIP's byte-level alphabet with no
merges, so every character becomes one token: ids stay below 520, which fits
any CLIP text encoder's vocabulary, and the sequence length is CLIP's 77.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile

from transformers import CLIPTokenizer

CLIP_MAX_LENGTH = 77
_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for raw bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@functools.lru_cache(maxsize=1)
def _tokenizer_files() -> str:
    folder = tempfile.mkdtemp(prefix="streamgen-tokenizer-")
    alphabet = _byte_alphabet()
    tokens = [*_SPECIAL_TOKENS, *alphabet, *(c + "</w>" for c in alphabet)]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    return folder


def offline_clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer that needs no download."""
    folder = _tokenizer_files()
    return CLIPTokenizer(
        os.path.join(folder, "vocab.json"),
        os.path.join(folder, "merges.txt"),
        model_max_length=CLIP_MAX_LENGTH,
    )


OFFLINE_VOCAB_SIZE = len(_SPECIAL_TOKENS) + 2 * 256
