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
(output only; see :mod:`streamgen.server.sessions.streams`), ``/static/*`` their
scripts and styles.

The files are small: they are read off the event loop once (again when a
file changes) and answered from memory as ordinary responses, never with
``sendfile`` (a client that stops reading mid-file is then closed by the
send timeout like any other, and one that disconnects costs one debug line,
not a traceback). A name that is not a plain file name of the client (odd
bytes, an absurd length, a path out of the folder) is a JSON 404.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
from pathlib import Path

from aiohttp import web

from ..context import context
from .http_errors import NotFoundError

logger = logging.getLogger(__name__)

PAGES = {"/": "index.html", "/watch": "watch.html", "/obs": "obs.html"}
MAX_NAME_CHARS = 200
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".json": "application/json"}
_cache: dict[Path, tuple[float, int, bytes]] = {}  # path -> (mtime, size, bytes)


def find_web_dir(configured: str | None) -> Path | None:
    """The directory holding the client's ``index.html`` (see module docstring)."""
    server_dir = Path(__file__).parent.parent  # streamgen/server (its web/ is a link, or a wheel's copy)
    checkout = Path(__file__).resolve().parents[3]  # the repository, in a source checkout
    candidates = [Path(configured)] if configured else []
    candidates += [server_dir / "web", checkout / "web"]
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
        return await file_response(web_dir / filename)

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
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise NotFoundError(f"no file /static/{_printable(name)}")
    root = web_dir.resolve()
    try:
        path = (root / name).resolve()
        found = root in path.parents and path.is_file()
    except (OSError, ValueError):  # a name the file system cannot even look up
        found = False
    if not found:
        raise NotFoundError(f"no file /static/{_printable(name)}")
    return await file_response(path)


async def file_response(path: Path) -> web.Response:
    """The file at ``path`` from memory (read off the loop when new or changed); 404 when it cannot be read."""
    try:
        stat = path.stat()
        cached = _cache.get(path)
        if cached is None or cached[:2] != (stat.st_mtime, stat.st_size):
            body = await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
            cached = _cache[path] = (stat.st_mtime, stat.st_size, body)
    except (OSError, ValueError):
        raise NotFoundError(f"no file {_printable(path.name)}") from None
    content_type = CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return web.Response(body=cached[2], content_type=content_type, charset="utf-8" if content_type.startswith("text/") else None,
                        headers={"Cache-Control": "no-cache"})


def _printable(text: str, limit: int = 80) -> str:
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def add_routes(app: web.Application, web_dir: Path | None) -> None:
    for path, filename in PAGES.items():
        app.router.add_get(path, _page(filename))
    app.router.add_get("/static/{name:.+}", static_file)
