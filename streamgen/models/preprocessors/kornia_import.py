"""kornia, imported when a filter preprocessor first runs: an image stream without them never needs it.

kornia is a dependency of streamgen; a machine that lacks it (a trimmed
environment, the GPU bench machine before its wheels are installed) still
runs every stream that uses no canny, edge or blur preprocessor, and one
that does gets a clear error saying what to install.
"""

from __future__ import annotations

from types import ModuleType

from ...errors import ModelLoadError


def kornia() -> ModuleType:
    try:
        import kornia as module  # noqa: PLC0415
    except ImportError as error:
        raise ModelLoadError(f"the canny, soft_edge, lineart, blur and tile preprocessors need kornia ({error}); `pip install kornia`") from None
    return module
