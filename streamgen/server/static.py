"""The browser client: plain files from ``web/``, no build step.

Where the files are found, first match wins:

1. ``ServerConfig.web_dir`` (``streamgen serve --web-dir``), to serve a
   modified client;
2. ``streamgen/server/web`` inside the installed package: in a source
   checkout this is a symlink to the repository's ``web/``; a wheel holds a
   copy (pyproject's package-data lists ``server/web/*``);
3. the repository's ``web/`` next to the ``streamgen`` package.

``GET /`` is the main page, ``GET /watch`` the WHEP viewer page of one
session, ``GET /obs`` the OBS browser source that follows a WHIP stream key
(output only; see :mod:`streamgen.server.streams`), ``/static/*`` their
scripts and styles.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from .context import context
from .http_errors import NotFoundError

logger = logging.getLogger(__name__)

PAGES = {"/": "index.html", "/watch": "watch.html", "/obs": "obs.html"}


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


async def static_file(request: web.Request) -> web.StreamResponse:
    """``/static/<name>``: a file of the client, or a JSON 404 (never a listing, never a path outside it).

    aiohttp's own static route answers a missing file with an empty
    ``application/octet-stream`` 404; every other error here is JSON.
    """
    web_dir = context(request).web_dir
    name = request.match_info["name"]
    if web_dir is None:
        raise NotFoundError("the browser client is not installed with this server; see README, 'Server'")
    root = web_dir.resolve()
    path = (root / name).resolve()
    if root not in path.parents or not path.is_file():
        raise NotFoundError(f"no file /static/{_printable(name)}")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


def _printable(text: str, limit: int = 80) -> str:
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def add_routes(app: web.Application, web_dir: Path | None) -> None:
    for path, filename in PAGES.items():
        app.router.add_get(path, _page(filename))
    app.router.add_get("/static/{name:.+}", static_file)
