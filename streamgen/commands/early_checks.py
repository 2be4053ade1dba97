"""What a command checks before it imports torch or loads a model, so a mistake is reported in well under a second.

- a model name: a preset, ``identity``, an existing local path, or a hub id
  (``owner/name``); anything else is refused with the nearest preset
  ("did you mean 'sd-turbo'?");
- an output file: its folder exists and a file can really be created there
  (``/sys/out.mp4`` passes a permission check as root and still fails);
- unknown flags get the nearest flag (:class:`SuggestingParser`).

Nothing here imports torch, diffusers or aiortc (tests/cli checks the time).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from pathlib import Path

from ..errors import ConfigError
from ..preset_names import ALL_PRESET_NAMES, IDENTITY, IMAGE_PRESET_NAMES, VIDEO_PRESET_NAMES

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def nearest(word: str, choices: tuple[str, ...] | list[str]) -> str | None:
    """The choice closest to ``word`` when one is close enough to be a likely typo."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def check_model_name(name: str, *, allow_identity: bool = True) -> None:
    """ConfigError (one line, with the nearest preset) unless ``name`` can name a model."""
    if name in ALL_PRESET_NAMES or (allow_identity and name == IDENTITY):
        return
    path = Path(name).expanduser()
    if path.exists():
        return
    if name.startswith((".", "/", "~")) or name.lower().endswith(WEIGHT_SUFFIXES):
        raise ConfigError(f"model {name!r}: no such file or folder (a local model is a diffusers folder or a single .safetensors file)")
    if HUB_ID.match(name):
        return  # a hub id: whether it exists is known when it loads
    names = (*ALL_PRESET_NAMES, IDENTITY) if allow_identity else ALL_PRESET_NAMES
    guess = nearest(name, names)
    hint = f"; did you mean {guess!r}?" if guess else ""
    raise ConfigError(
        f"unknown model {name!r}{hint or '.'} Image presets: {', '.join(IMAGE_PRESET_NAMES)}; video presets: {', '.join(VIDEO_PRESET_NAMES)}; "
        "or a hub id (owner/name), a local diffusers folder or a single .safetensors file"
    )


def is_video_preset(name: str) -> bool:
    return name in VIDEO_PRESET_NAMES


def check_writable_file(path: Path, flag: str = "--output") -> None:
    """ConfigError unless a file can be created (or overwritten) at ``path``; leaves nothing behind."""
    if path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a folder; give a file name such as out.mp4")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise ConfigError(f"{flag} {str(path)!r}: folder {str(folder)!r} does not exist")
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as error:
        raise ConfigError(f"{flag} {str(path)!r} cannot be written: {error.strerror or error}") from None
    if not existed:
        try:
            os.unlink(path)
        except OSError:
            pass


class SuggestingParser(argparse.ArgumentParser):
    """An argument parser whose "unrecognized arguments" and bad choices name the nearest valid one."""

    def error(self, message: str) -> None:  # type: ignore[override]
        hint = self._suggestion(message)
        super().error(message + hint)

    def _suggestion(self, message: str) -> str:
        match = re.match(r"unrecognized arguments: (.*)", message)
        if match:
            options = [o for action in self._all_actions() for o in action.option_strings if o.startswith("--")]
            for word in match.group(1).split():
                flag = word.split("=", 1)[0]
                if flag.startswith("--"):
                    guess = nearest(flag, options)
                    if guess:
                        return f" (did you mean {guess}?)"
        match = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = [c.strip().strip("'") for c in match.group(3).split(",")]
            guess = nearest(match.group(2), choices)
            if guess:
                return f" (did you mean {guess!r}?)"
        return ""

    def _all_actions(self) -> list[argparse.Action]:
        actions = list(self._actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for parser in action.choices.values():
                    actions += parser._actions
        return actions
