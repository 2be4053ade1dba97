"""Offline-aware access to the Hugging Face hub: cache first, one quick check, then download.

huggingface_hub retries a failing download for about half a minute before it
gives up, and a server that starts without a network would hang there for
every component. streamgen avoids that:

1. it looks in the local cache first (``local_files_only``), and uses what is
   there when it is complete;
2. with ``HF_HUB_OFFLINE=1`` it stops there and raises :class:`ModelLoadError`
   saying how to download the model;
3. otherwise it asks the hub for the repository's file list ONCE with a short
   timeout; a network failure, a missing or gated repository ends the load
   right away with a message that says what to do;
4. only then does it download, and only the files it will load.

The result is always a local path, so everything after this module loads
from disk through the same code the tests exercise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import ModelLoadError
from ...preset_names import presets_hint

# Seconds to wait for the hub's answer to "which files does this repo have?".
HUB_CHECK_TIMEOUT_S = 5.0

_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when the user asked for no hub access (``HF_HUB_OFFLINE``), read at call time."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    from huggingface_hub import constants  # noqa: PLC0415

    return bool(constants.HF_HUB_OFFLINE)


def download_command(repo: str, include: Sequence[str] = ()) -> str:
    """The shell command that puts ``repo`` (or just the ``include`` patterns of it) in the cache."""
    patterns = "".join(f' "{p}"' for p in include)
    return f"hf download {repo}" + (f" --include{patterns}" if include else "")


def how_to_get(repo: str, include: Sequence[str] = ()) -> str:
    """The advice every not-available message ends with."""
    return (
        f"Download it on a machine with internet access: `{download_command(repo, include)}` "
        "(older huggingface_hub: `huggingface-cli download` with the same arguments; set HF_HOME to "
        "share or move the cache), or pass a local directory instead of the hub id."
    )


@dataclass(frozen=True)
class SnapshotRequest:
    """What to fetch from one hub repository.

    ``select`` maps the repository's file list to the files to download;
    ``missing`` names what a local snapshot still lacks (empty when usable);
    ``include`` are the patterns to suggest in a download command.
    """

    repo: str
    what: str
    select: Callable[[list[str]], list[str]]
    missing: Callable[[Path], list[str]]
    include: tuple[str, ...] = ()


def fetch_snapshot(request: SnapshotRequest) -> Path:
    """A local folder holding what ``request`` needs from the hub (cache first, then download)."""
    cached = cached_snapshot(request.repo)
    if cached is not None and not request.missing(cached):
        return cached
    if hub_offline():
        raise ModelLoadError(_offline_message(request.what, request.repo, cached, request.missing, request.include))
    files = list_repo_files(request.repo, request.what, request.include)
    wanted = request.select(files)
    if not wanted:
        raise ModelLoadError(
            f"{request.what} {request.repo!r} on the hub has no weights streamgen can load "
            "(expected a diffusers-layout repository with safetensors or .bin files)."
        )
    folder = _download(request.repo, request.what, request.include, lambda: _snapshot(request.repo, wanted))
    missing = request.missing(folder)
    if missing:
        raise ModelLoadError(f"{request.what} {request.repo!r} is incomplete after download: missing {', '.join(missing)}.")
    return folder


def fetch_file(repo: str, filename: str, what: str) -> Path:
    """One file of a hub repository (e.g. a single-file checkpoint), cache first."""
    from huggingface_hub import hf_hub_download  # noqa: PLC0415

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here only means "not cached"
        pass
    include = (filename,)
    if hub_offline():
        raise ModelLoadError(
            f"{what} {repo}/{filename} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, "
            f"so streamgen did not try the network. {how_to_get(repo, include)}"
        )
    if filename not in list_repo_files(repo, what, include):
        raise ModelLoadError(f"{what}: the hub repository {repo!r} has no file {filename!r}.")
    return Path(_download(repo, what, include, lambda: hf_hub_download(repo, filename)))


def cached_snapshot(repo: str) -> Path | None:
    """The cached snapshot folder of ``repo`` at its main revision, if any (never touches the network)."""
    from huggingface_hub import snapshot_download  # noqa: PLC0415

    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError, bad ids, unreadable cache: all "not cached"
        return None


def list_repo_files(repo: str, what: str, include: Sequence[str] = ()) -> list[str]:
    """The repository's file list, asked once with a short timeout; failures become ModelLoadError."""
    from huggingface_hub import HfApi, constants  # noqa: PLC0415
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError  # noqa: PLC0415

    try:
        info = HfApi().model_info(repo, timeout=HUB_CHECK_TIMEOUT_S)
    except GatedRepoError as error:
        raise ModelLoadError(
            f"{what} {repo!r} is gated: accept its license at {constants.ENDPOINT}/{repo} and log in "
            f"(`hf auth login` or HF_TOKEN), then try again. {how_to_get(repo, include)}"
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelLoadError(
            f"{what} {repo!r} was not found on the Hugging Face hub (check the name; private repositories "
            f"need `hf auth login`). {_presets_hint()}"
        ) from error
    except Exception as error:  # noqa: BLE001 - network errors come from httpx/requests/OSError alike
        raise ModelLoadError(
            f"{what} {repo!r} is not in the local cache and the Hugging Face hub ({constants.ENDPOINT}) "
            f"could not be reached ({type(error).__name__}: {error}). {how_to_get(repo, include)} "
            "Set HF_HUB_OFFLINE=1 to skip the network check."
        ) from error
    return [s.rfilename for s in (info.siblings or [])]


def _snapshot(repo: str, files: list[str]) -> Path:
    from huggingface_hub import snapshot_download  # noqa: PLC0415

    return Path(snapshot_download(repo, allow_patterns=files))


def _download(repo: str, what: str, include: Sequence[str], action: Callable[[], Path | str]) -> Path:
    try:
        return Path(action())
    except Exception as error:  # noqa: BLE001 - report any download failure with the way out
        raise ModelLoadError(f"downloading {what} {repo!r} failed ({type(error).__name__}: {error}). {how_to_get(repo, include)}") from error


def _offline_message(what: str, repo: str, cached: Path | None, missing: Callable[[Path], list[str]], include: Sequence[str]) -> str:
    state = "is not in the local Hugging Face cache" if cached is None else f"is only partly cached (missing {', '.join(missing(cached))})"
    return f"{what} {repo!r} {state} and HF_HUB_OFFLINE is set, so streamgen did not try the network. {how_to_get(repo, include)}"


def _presets_hint() -> str:
    return f"Built-in presets: {presets_hint()}."
