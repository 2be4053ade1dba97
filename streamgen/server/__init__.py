"""The streaming server: aiohttp + aiortc, WebRTC ``/offer``, WHIP, WHEP, sessions, metrics.

``streamgen serve`` runs :func:`run_server`; :func:`create_app` builds the
same application around already loaded pipelines (tests, embedding).
Importing this package loads aiortc and aiohttp but changes nothing in them;
see :mod:`streamgen.server.aiortc_patches` for what the server changes at
start-up.
"""

from .app import create_app, run_server
from .config import ServerConfig
from .identity import IdentityPipeline

__all__ = ["IdentityPipeline", "ServerConfig", "create_app", "run_server"]
