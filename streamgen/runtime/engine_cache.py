"""The one engine cache: compiled artefacts (ONNX exports, TensorRT plans) on disk, keyed by everything they depend on.

An entry is one artefact file (plus, for graphs over 2 GB, sidecar files
whose names start with the artefact's name) and a JSON manifest beside it::

    <root>/<model>-<component>-<digest>.<ext>        the artefact
    <root>/<model>-<component>-<digest>.<ext>.data   sidecars, if any
    <root>/<model>-<component>-<digest>.json         the manifest: key, sha256, size, times
    <root>/<model>-<component>-<digest>.lock         the build lock (empty)

The digest is a hash of the :class:`EngineKey`, so changing any input that
shapes an artefact (weights, dtype, shape ranges, library versions, GPU
architecture) selects a new entry; nothing else does.

Building (:meth:`EngineCache.get_or_build`) happens under an exclusive
``fcntl.flock`` on the entry's lock file: a second process that wants the
same entry waits, then finds the first one's result and reuses it. The
build writes into a temporary folder in the cache root (same filesystem),
the checksum is computed there, then the files are renamed into place
(sidecars, then the artefact) and the manifest is written last, atomically.
An entry without a manifest, or whose files do not match the manifest's
sizes and checksums, is incomplete or corrupt: it is rebuilt with a warning.
Checksums are re-read once per file per cache object (a multi-GB engine
costs a few seconds at start-up), then trusted while size and mtime hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EngineError

if TYPE_CHECKING:
    import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no build lock, renames stay atomic
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

ENV_ENGINE_DIR = "STREAMGEN_ENGINE_DIR"
MANIFEST_VERSION = 1
DIGEST_CHARS = 20  # of the sha256 hex in file names (80 bits)
SAMPLES_PER_TENSOR = 256  # values hashed per weight tensor by weights_fingerprint
ARTEFACT_SUFFIXES = {"onnx": ".onnx", "onnxruntime": ".onnx", "tensorrt": ".plan", "compile": ".megacache"}
_CHUNK = 1 << 20


# ------------------------------------------------------------------ location
def default_cache_dir() -> Path:
    """``$STREAMGEN_ENGINE_DIR``; else the checkout's ``engines/`` when writable; else ``~/.cache/streamgen/engines``."""
    configured = os.environ.get(ENV_ENGINE_DIR)
    if configured:
        return Path(configured).expanduser()
    checkout = Path(__file__).resolve().parents[2] / "engines"
    if (checkout / "README.md").is_file() and os.access(checkout, os.W_OK):
        return checkout
    return Path.home() / ".cache" / "streamgen" / "engines"


# ----------------------------------------------------------------------- key
@dataclass(frozen=True)
class EngineKey:
    """Everything an artefact depends on; :meth:`digest` hashes exactly these fields."""

    model_id: str
    weights: str  # weights_fingerprint() of the component's module
    component: str  # "unet", "vae_encoder", "vae_decoder", "text_encoder", "text_encoder_2", "unet_control", "controlnet"
    dtype: str  # "float16", "float32", ...
    batch_range: tuple[int, int]  # rows
    resolution_range: tuple[int, int]  # pixels per side
    lora: str  # lora_fingerprint(): unfused adapters and their scales ("none")
    backend: str  # "onnx" (the export), "tensorrt", ...
    backend_version: str
    torch_version: str
    gpu_arch: str  # "sm_90", ... or "cpu"
    # Graph inputs and outputs beyond the component's plain ones (a steered UNet's ControlNet residuals, a
    # ControlNet's); "" for plain components, and then left out of the digest, so keys made before this field
    # existed still name their entries.
    inputs: str = ""

    def fields(self) -> dict[str, Any]:
        """The key as JSON-ready data (tuples become lists; an empty ``inputs`` is left out)."""
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if not data["inputs"]:
            del data["inputs"]
        return data

    def digest(self) -> str:
        """A stable hex digest of every field (sha256 of their canonical JSON)."""
        text = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def stem(self) -> str:
        """The entry's file name without extension: readable prefix + digest."""
        model = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model_id).strip("._-")[:40] or "model"
        return f"{model}-{self.component}-{self.digest()[:DIGEST_CHARS]}"

    def suffix(self) -> str:
        return ARTEFACT_SUFFIXES.get(self.backend, ".bin")

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> EngineKey:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


def weights_fingerprint(module: torch.nn.Module, samples: int = SAMPLES_PER_TENSOR) -> str:
    """A cheap hash of a module's weights: class, config, every tensor's name, shape, dtype and a strided sample of its values.

    About ``samples`` evenly spaced values of each tensor are hashed (never
    the whole of a multi-GB model), so any change that touches a tensor
    broadly (other weights, a fused LoRA, a dtype cast) changes the
    fingerprint. The module's class and config (diffusers/transformers) are
    hashed too: two configs can share every weight shape yet build different
    graphs (head counts, norm groups). Samples are gathered on the tensors'
    device and copied to the host once, not once per tensor.
    """
    import torch  # noqa: PLC0415  (this module is imported by `streamgen doctor`, which must stay light)

    digest = hashlib.sha256()
    digest.update(f"{type(module).__module__}.{type(module).__qualname__};{_config_text(module)};".encode())
    picks: list[torch.Tensor] = []
    for name, tensor in module.state_dict(keep_vars=False).items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel() > samples:
            index = torch.arange(samples, device=flat.device) * (flat.numel() - 1) // (samples - 1)  # integer: exact for any size
            flat = flat.index_select(0, index)
        picks.append(flat.to(torch.float64) if not flat.is_complex() else torch.view_as_real(flat).reshape(-1).double())
    if picks:
        values = torch.cat([p.to(picks[0].device) for p in picks]).cpu()
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:32]


def _config_text(module: torch.nn.Module) -> str:
    config = getattr(module, "config", None)
    if config is None:
        return ""
    to_dict = getattr(config, "to_dict", None)
    data = to_dict() if callable(to_dict) else dict(config) if isinstance(config, dict) else repr(config)
    if isinstance(data, dict):  # drop bookkeeping ("_use_default_values" is even in set order, varying per process)
        data = {k: v for k, v in data.items() if not str(k).startswith("_") and k != "transformers_version"}
    return json.dumps(data, sort_keys=True, default=str)


def lora_fingerprint(module: torch.nn.Module) -> str:
    """Unfused LoRA adapters on ``module`` (names, scales, merged state) as a short hash; ``none`` without any.

    A fused LoRA lives in the weights (see :func:`weights_fingerprint`); an
    unfused one also has scales and an active set that the weights do not
    show, and an export bakes those in.
    """
    seen: set[str] = set()
    for name, child in module.named_modules():
        scaling = getattr(child, "scaling", None)
        if not isinstance(scaling, dict) or not scaling:
            continue
        active = getattr(child, "active_adapters", ())
        merged = getattr(child, "merged_adapters", ())
        seen.add(json.dumps([name, sorted(scaling.items()), sorted(active), sorted(merged)], default=str))
    if not seen:
        return "none"
    return hashlib.sha256("\n".join(sorted(seen)).encode()).hexdigest()[:16]


def gpu_arch(device: torch.device | str) -> str:
    """``sm_<major><minor>`` of a CUDA device, else the device type (``cpu``)."""
    import torch  # noqa: PLC0415

    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


# ------------------------------------------------------------------- entries
@dataclass(frozen=True)
class EngineEntry:
    """One cache entry as its manifest describes it."""

    path: Path
    key: EngineKey
    sha256: str
    size: int  # bytes, artefact plus sidecars
    created: float  # unix time
    build_seconds: float
    files: dict[str, str] = field(default_factory=dict)  # file name → sha256
    complete: bool = True  # every file present with the manifest's size (checksums not re-read)


@dataclass(frozen=True)
class CacheEvent:
    """What :meth:`EngineCache.get_or_build` is doing: ``start`` (checking), ``built`` or ``reused``."""

    stage: str
    key: EngineKey
    path: Path
    entry: EngineEntry | None = None


_observers: list[Callable[[CacheEvent], None]] = []
_observers_lock = threading.Lock()


@contextlib.contextmanager
def observe(callback: Callable[[CacheEvent], None]) -> Iterator[None]:
    """Call ``callback`` with every :class:`CacheEvent` of any cache in this process (``build-engines`` uses it)."""
    with _observers_lock:
        _observers.append(callback)
    try:
        yield
    finally:
        with _observers_lock:
            _observers.remove(callback)


def _notify(event: CacheEvent) -> None:
    with _observers_lock:
        callbacks = list(_observers)
    for callback in callbacks:
        callback(event)


# --------------------------------------------------------------------- cache
class EngineCache:
    """Artefacts under ``root`` keyed by :class:`EngineKey`; shape ranges are carried for the keys' sake."""

    def __init__(self, root: str | Path, *, batch_range: tuple[int, int] = (1, 8), resolution_range: tuple[int, int] = (256, 512)) -> None:
        self.root = Path(root)
        self.batch_range = (int(batch_range[0]), int(batch_range[1]))
        self.resolution_range = (int(resolution_range[0]), int(resolution_range[1]))
        self._verified: dict[Path, tuple[int, float]] = {}  # artefact → (size, mtime) whose checksum matched

    def __repr__(self) -> str:
        return f"EngineCache({str(self.root)!r}, batch_range={self.batch_range}, resolution_range={self.resolution_range})"

    def path_for(self, key: EngineKey) -> Path:
        return self.root / f"{key.stem()}{key.suffix()}"

    def manifest_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.stem()}.json"

    def get_or_build(self, key: EngineKey, build: Callable[[Path], None]) -> Path:
        """The path of a valid entry for ``key``; ``build(path)`` writes the artefact when there is none.

        ``build`` gets a path in a private temporary folder and must write
        the artefact there (sidecars only under names starting with the
        artefact's name). Raises :class:`EngineError` when it fails.
        """
        path = self.path_for(key)
        _notify(CacheEvent("start", key, path))
        entry = self._valid_entry(key, quiet=True)
        if entry is None:
            self._ensure_root()
            try:
                with self._locked(key):
                    entry = self._valid_entry(key, quiet=False)  # another process may have built it meanwhile
                    if entry is None:
                        entry = self._build(key, build)
                        _notify(CacheEvent("built", key, path, entry))
                        return path
            except OSError as error:
                raise EngineError(f"cannot write {path.name} into the engine cache {self.root}: {error}") from error
        _notify(CacheEvent("reused", key, path, entry))
        return path

    def lookup(self, key: EngineKey) -> Path | None:
        """The artefact of a valid entry for ``key``, or None (nothing is built)."""
        return self.path_for(key) if self._valid_entry(key, quiet=True) is not None else None

    def store(self, key: EngineKey, build: Callable[[Path], None]) -> Path:
        """(Re)write the entry for ``key`` under its lock, replacing what was there: for artefacts that grow
        as a process sees more shapes (torch.compile's cache artefacts)."""
        path = self.path_for(key)
        self._ensure_root()
        try:
            with self._locked(key):
                entry = self._build(key, build)
        except OSError as error:
            raise EngineError(f"cannot write {path.name} into the engine cache {self.root}: {error}") from error
        _notify(CacheEvent("built", key, path, entry))
        return path

    def entries(self) -> list[EngineEntry]:
        """Every entry with a readable manifest, newest first (checksums are not re-read)."""
        if not self.root.is_dir():
            return []
        found = []
        for manifest in self.root.glob("*.json"):
            entry = _read_manifest(manifest)
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: e.created, reverse=True)

    # ---- internals -----------------------------------------------------------
    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise EngineError(f"cannot create the engine cache directory {self.root}: {error}") from None

    @contextlib.contextmanager
    def _locked(self, key: EngineKey) -> Iterator[None]:
        lock_path = self.root / f"{key.stem()}.lock"
        with open(lock_path, "a+b") as handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _valid_entry(self, key: EngineKey, *, quiet: bool) -> EngineEntry | None:
        """The entry when its manifest matches ``key`` and its files match the manifest; None otherwise."""
        path, manifest = self.path_for(key), self.manifest_path(key)
        if not manifest.exists() and not path.exists():
            return None
        problem = None
        entry = _read_manifest(manifest)
        if entry is None:
            problem = "its manifest is missing or unreadable"
        elif entry.key != key:
            problem = "its manifest names another key"
        else:
            problem = self._check_files(entry)
        if problem is None:
            return entry
        if not quiet:
            logger.warning("engine cache: %s is incomplete or corrupt (%s); rebuilding it", path.name, problem)
        return None

    def _check_files(self, entry: EngineEntry) -> str | None:
        for name, checksum in entry.files.items():
            file = self.root / name
            if not file.is_file():
                return f"{name} is missing"
            stat = file.stat()
            if self._verified.get(file) == (stat.st_size, stat.st_mtime):
                continue
            if sha256_file(file) != checksum:
                return f"the checksum of {name} does not match"
            self._verified[file] = (stat.st_size, stat.st_mtime)
        return None

    def _build(self, key: EngineKey, build: Callable[[Path], None]) -> EngineEntry:
        stem, path = key.stem(), self.path_for(key)
        for stale in self.root.glob(f".building-{stem}-*"):  # left by a build that crashed (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        self._remove_entry(key)
        workdir = Path(tempfile.mkdtemp(prefix=f".building-{stem}-", dir=self.root))
        try:
            started = time.perf_counter()
            target = workdir / path.name
            try:
                build(target)
            except EngineError:
                raise
            except Exception as error:  # noqa: BLE001 - any build failure is reported as an EngineError naming the entry
                raise EngineError(f"building {key.component} for {key.model_id} ({key.backend}) failed: {type(error).__name__}: {error}") from error
            seconds = time.perf_counter() - started
            files = self._built_files(workdir, path.name)
            checksums = {name: sha256_file(workdir / name) for name in files}
            size = sum((workdir / name).stat().st_size for name in files)
            for name in sorted(files, key=lambda n: n == path.name):  # sidecars first, the artefact last
                os.replace(workdir / name, self.root / name)
            entry = EngineEntry(path, key, checksums[path.name], size, time.time(), round(seconds, 3), checksums)
            _write_manifest(self.manifest_path(key), entry)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        logger.info("engine cache: built %s (%.1f MB in %.1f s)", path.name, size / 1e6, seconds)
        return entry

    @staticmethod
    def _built_files(workdir: Path, name: str) -> list[str]:
        files = sorted(p.name for p in workdir.iterdir())
        if name not in files:
            raise EngineError(f"the build of {name} wrote no file")
        strays = [f for f in files if not f.startswith(name)]
        if strays:
            raise EngineError(f"the build of {name} wrote files not named after it: {', '.join(strays)}")
        return files

    def _remove_entry(self, key: EngineKey) -> None:
        """Delete a corrupt entry's manifest first (so it never looks valid), then its files."""
        stem = key.stem()
        self.manifest_path(key).unlink(missing_ok=True)
        for file in self.root.glob(f"{stem}{key.suffix()}*"):
            self._verified.pop(file, None)
            file.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(path: Path, entry: EngineEntry) -> None:
    data = {
        "manifest_version": MANIFEST_VERSION,
        "file": entry.path.name,
        "key": entry.key.fields(),
        "digest": entry.key.digest(),
        "sha256": entry.sha256,
        "size": entry.size,
        "created": entry.created,
        "build_seconds": entry.build_seconds,
        "files": entry.files,
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(temporary, path)


def _read_manifest(path: Path) -> EngineEntry | None:
    try:
        data = json.loads(path.read_text())
        if data.get("manifest_version") != MANIFEST_VERSION:
            return None
        artefact = path.with_name(data["file"])
        files = {str(k): str(v) for k, v in data["files"].items()}
        entry = EngineEntry(
            path=artefact,
            key=EngineKey.from_fields(data["key"]),
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            created=float(data["created"]),
            build_seconds=float(data["build_seconds"]),
            files=files,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    present = sum(f.stat().st_size for f in (path.with_name(n) for n in files) if f.is_file())
    complete = present == entry.size and all(path.with_name(n).is_file() for n in files)
    return entry if complete else replace(entry, complete=False)
