"""The streaming server: aiohttp + aiortc, WebRTC ``/offer``, WHIP, WHEP, sessions, metrics.

``streamgen serve`` runs :func:`run_server`; :func:`create_app` builds the
same application around already loaded pipelines (tests, embedding).
Importing this package is cheap: its names load their modules (aiortc,
aiohttp, torch) on first use (PEP 562), so ``streamgen serve`` checks its
flags in well under a second before anything heavy loads. Nothing in
aiortc is changed on import; see :mod:`streamgen.server.webrtc.aiortc_patches`
for what the server changes at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {"create_app": ".app", "run_server": ".app", "ServerConfig": ".config"}

if TYPE_CHECKING:  # pragma: no cover
    from .app import create_app, run_server
    from .config import ServerConfig


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value


__all__ = ["ServerConfig", "create_app", "run_server"]
