"""The browser client: plain files from ``web/``, no build step.

Where the files are found, first match wins:

1. ``ServerConfig.web_dir`` (``streamgen serve --web-dir``), to serve a
   modified client;
2. ``streamgen/server/web`` inside the installed package: in a source
   checkout this is a symlink to the repository's ``web/``; a wheel holds a
   copy (pyproject's package-data lists ``server/web/*``);
3. the repository's ``web/`` next to the ``streamgen`` package.

``GET /`` is the main page, ``GET /watch`` the WHEP viewer page (an OBS
browser source), ``/static/*`` their scripts and styles.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from .context import context
from .http_errors import NotFoundError

logger = logging.getLogger(__name__)

PAGES = {"/": "index.html", "/watch": "watch.html"}


def find_web_dir(configured: str | None) -> Path | None:
    """The directory holding the client's ``index.html`` (see module docstring)."""
    here = Path(__file__).resolve().parent
    candidates = [Path(configured)] if configured else []
    candidates += [Path(__file__).parent / "web", here.parents[1] / "web"]
    for candidate in candidates:
        if (candidate / "index.html").is_file():
            return candidate
    logger.warning("the browser client was not found (looked in %s); the API still works", ", ".join(map(str, candidates)))
    return None


def _page(filename: str):
    async def handler(request: web.Request) -> web.StreamResponse:
        web_dir = context(request).web_dir
        if web_dir is None:
            raise NotFoundError("the browser client is not installed with this server; see README, 'Server'")
        return web.FileResponse(web_dir / filename, headers={"Cache-Control": "no-cache"})

    return handler


def add_routes(app: web.Application, web_dir: Path | None) -> None:
    for path, filename in PAGES.items():
        app.router.add_get(path, _page(filename))
    if web_dir is not None:
        app.router.add_static("/static/", web_dir, show_index=False, append_version=False)
