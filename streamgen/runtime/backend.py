"""The backend interface and the registry of backends (imported lazily: none loads at import time).

A backend turns a model's eager call slots into faster callables:

- ``unavailable_reason(device)``: None when it can run here, else why not
  (a missing package, no GPU); probed without importing heavy optional
  packages at module import time;
- ``accelerate_image(model, cache)`` / ``accelerate_video(model, cache)``:
  build (or load from the engine cache) and install the callables; raise
  :class:`~streamgen.errors.EngineError` naming what failed (export of which
  op, build of which component). Nothing falls back silently.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Literal, Protocol

from ..errors import EngineError

Acceleration = Literal["auto", "none", "compile", "onnxruntime", "tensorrt"]
ACCELERATIONS: tuple[str, ...] = ("auto", "none", "compile", "onnxruntime", "tensorrt")

# name → "module:class", imported only when asked for
_REGISTRY = {
    "none": "streamgen.runtime.eager:EagerBackend",
    "compile": "streamgen.runtime.compile_backend:CompileBackend",
    "onnxruntime": "streamgen.runtime.ort_backend:OnnxRuntimeBackend",
    "tensorrt": "streamgen.runtime.tensorrt_backend:TensorRTBackend",
}


class Backend(Protocol):
    name: str

    def unavailable_reason(self, device: Any) -> str | None: ...

    def accelerate_image(self, model: Any, cache: Any) -> None: ...

    def accelerate_video(self, model: Any, cache: Any) -> None: ...


def check_acceleration(name: str) -> str:
    """The canonical name, or EngineError listing the choices."""
    if name not in ACCELERATIONS:
        raise EngineError(f"unknown acceleration {name!r}; choose one of {', '.join(ACCELERATIONS)}")
    return name


def backend_named(name: str) -> Backend:
    """The backend object for an explicit name (not ``auto``)."""
    check_acceleration(name)
    if name == "auto":
        raise EngineError("'auto' is not a backend; accelerate() picks one")
    module_name, _, cls = _REGISTRY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise EngineError(f"the {name} backend is not part of this installation ({error})") from None
    return getattr(module, cls)()


def unavailable_reason(name: str, device: Any) -> str | None:
    """Why backend ``name`` cannot run on ``device`` (None: it can)."""
    try:
        return backend_named(name).unavailable_reason(device)
    except EngineError as error:
        return str(error)


def package_missing(package: str, extra: str) -> str | None:
    """A reason naming the pip extra when ``package`` is not importable (found without importing it)."""
    if importlib.util.find_spec(package) is None:
        return f"{package} is not installed (pip install 'streamgen[{extra}]')"
    return None
