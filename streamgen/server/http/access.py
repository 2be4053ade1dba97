"""Who may do what: the admin token and each session's own secret.

- Creating a session (``POST /offer``, ``POST /whip``) needs the admin token
  (``--token``) when the server has one, and is open otherwise.
- The answer that creates a session carries its secret (``session_secret``
  in the ``/offer`` JSON, the ``X-Session-Secret`` header of the WHIP
  ``201``), and only that answer: it is never listed, logged or put in a URL.
- Reading, changing, watching or ending one session needs
  ``Authorization: Bearer <its secret>`` or the admin token.
- Listing every session needs the admin token; a server without one refuses
  to list (403: no credential could be enough).
- A WHIP stream key has credentials of its own (a follow secret; without an
  admin token, the bearer token that claimed it): they reach that key's
  sessions through the stream endpoints, and open two session actions
  besides: a WHEP viewer that joined through the key leaves with the follow
  secret, a WHIP session ends with the claiming token (see :mod:`streamgen.server.sessions.streams`).

Unauthenticated callers learn nothing about which sessions exist: a missing
credential, a wrong one and a session that does not exist all get the same
401. Only a caller with the admin token gets 404 for an unknown session; a
session's own secret still gets a truthful 404 after the session ended (the
server remembers the secrets of the last :data:`ENDED_REMEMBERED` ended
sessions for that). Every comparison is constant-time.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from .http_errors import ForbiddenError, NotFoundError, UnauthorizedError

if TYPE_CHECKING:
    from ..sessions.session import Session
    from ..sessions.manager import SessionManager

ENDED_REMEMBERED = 1024
SECRET_BYTES = 24
SESSION_SECRET_HEADER = "X-Session-Secret"
_NO_SESSION_SECRET = secrets.token_urlsafe(SECRET_BYTES)  # compared against when the session is unknown, so timing tells nothing


def new_session_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def bearer(request: web.Request) -> str | None:
    """The credential of ``Authorization: Bearer <credential>``; ``""`` for another scheme; None without the header."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, given = header.partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


def same_secret(given: str | None, secret: str | None) -> bool:
    """Constant-time equality; a header with bytes that are no text never matches."""
    if given is None or secret is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), secret.encode("utf-8"))


def require_token(request: web.Request, token: str | None) -> None:
    """Creating a session: the admin token when the server has one."""
    if token is None:
        return
    given = bearer(request)
    if not same_secret(given, token):
        raise UnauthorizedError("this server needs a bearer token: send 'Authorization: Bearer <token>'", invalid=given is not None)


def require_admin(request: web.Request, token: str | None, what: str) -> None:
    """``what`` (e.g. "listing sessions") is for the operator only."""
    if token is None:
        raise ForbiddenError(f"{what} needs the admin token, and this server has none: start it with --token (or $STREAMGEN_TOKEN) and send 'Authorization: Bearer <token>'")
    given = bearer(request)
    if not same_secret(given, token):
        raise UnauthorizedError(f"{what} needs the admin token: send 'Authorization: Bearer <token>'", invalid=given is not None)


def authorize_session(
    request: web.Request, manager: SessionManager, token: str | None, session_id: str, also: Callable[[Session], str | None] | None = None
) -> Session:
    """The session ``session_id`` if the request holds its secret or the admin token (see module docstring).

    ``also``: a second secret that opens this one action on a live session
    (a stream key's credentials, :mod:`streamgen.server.sessions.streams`); None when
    the session has none.
    """
    given = bearer(request)
    if given is None:
        raise UnauthorizedError(_ASK_FOR_SECRET)
    if same_secret(given, token):
        return manager.get(session_id)
    session = manager.sessions.get(session_id)
    holds_secret = same_secret(given, session.secret if session is not None else _NO_SESSION_SECRET)
    if session is not None and not holds_secret and also is not None:
        holds_secret = same_secret(given, also(session) or _NO_SESSION_SECRET)
    if session is not None and holds_secret:
        return session
    reason = manager.ended_with_secret(session_id, given)
    if reason is not None:
        raise NotFoundError(f"no session {session_id!r}: it has ended ({reason})")
    raise UnauthorizedError(_ASK_FOR_SECRET, invalid=True)


_ASK_FOR_SECRET = (
    "this needs the session's secret or the admin token: send 'Authorization: Bearer <secret>' "
    "(the secret came with the answer that created the session: session_secret in /offer's JSON, X-Session-Secret of WHIP's 201)"
)


class EndedSessions:
    """The secrets (and close reasons) of the sessions that ended last, so their owners get 404, not 401."""

    def __init__(self, capacity: int = ENDED_REMEMBERED) -> None:
        self.capacity = capacity
        self._ended: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def remember(self, session_id: str, secret: str, reason: str) -> None:
        self._ended[session_id] = (secret, reason)
        self._ended.move_to_end(session_id)
        while len(self._ended) > self.capacity:
            self._ended.popitem(last=False)

    def reason_for(self, session_id: str, given: str) -> str | None:
        """Why ``session_id`` ended, if ``given`` is its secret."""
        ended = self._ended.get(session_id)
        holds_secret = same_secret(given, ended[0] if ended is not None else _NO_SESSION_SECRET)
        return ended[1] if ended is not None and holds_secret else None
