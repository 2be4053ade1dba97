"""Stream keys: a stable name for "whatever OBS publishes now", and who may follow it.

OBS's WHIP settings hold a server URL and a bearer token, nothing else, and
every Start Streaming creates a new session with a new id and secret. A
browser source or a control script that named a session would break at each
restart, so they name the publisher instead: ``POST /whip`` publishes to the
stream key ``default``, ``POST /whip/streams/{key}`` to a named one, and the
latest live session published to a key is "the stream" of that key.

Credentials of a key (the admin token can do everything below too):

- the *follow secret*: random, made at the key's first publish and kept for
  the server's lifetime, so URLs holding it survive OBS stopping and
  starting. It reads the stream, watches its current session (WHEP) and
  changes its parameters; it cannot publish or end a session. Every WHIP
  ``201`` of a publish to the key carries it.
- publishing: on a server with an admin token publishing needs that token,
  as creating any session does. Without one, the first publish to a key
  *claims* it with the bearer token it sent (OBS's "Bearer Token" box then
  works as the stream's password): later publishes to the key need the same
  token, and it ends the key's sessions (OBS's Stop sends ``DELETE
  /whip/{id}`` with it). A key first published without a bearer token stays
  open to anyone, as that whole server is.

A new publish to a key leaves the key's older sessions alone (two OBS
instances on one key would otherwise knock each other off in a loop of
reconnects); the newest is the one followed, and when it ends the newest
of those still live. Parameters changed through a key are remembered and
given to its next sessions, so a prompt set from OBS survives a restart of
the stream.

At most :data:`MAX_STREAMS` keys are kept. A claim is never lost to other
clients' churn: to make room for a new key, the key published to least
lately that has no live session *and no claim* is forgotten; a claimed key
makes room only for its own client (the address that claimed it), which
holds at most :data:`MAX_CLAIMS_PER_CLIENT` claims (its oldest idle claim
makes room for a new one). When nothing may be forgotten, the new key is
refused (503) and every existing key keeps working. So a client that
publishes to hundreds of throw-away keys cannot evict the claim of a key it
wants to take over.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from ...errors import CapacityError, InputError
from ..http.access import new_session_secret, same_secret
from ..http.http_errors import NotFoundError, UnauthorizedError

if TYPE_CHECKING:
    from .session import Session

DEFAULT_STREAM = "default"
MAX_STREAMS = 256
MAX_CLAIMS_PER_CLIENT = 16
STREAM_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
STREAM_SECRET_HEADER = "X-Stream-Secret"
BROWSER_SOURCE_PAGE = "/obs"
_NO_STREAM_SECRET = new_session_secret()  # compared against when the key is unknown, so timing tells nothing

ASK_FOR_FOLLOW_SECRET = (
    "this needs the stream's follow secret or the admin token: send 'Authorization: Bearer <secret>' "
    "(the secret is in the browser-source URL the server gives for the stream: the WHIP answer's Link header, or its log)"
)


def parse_stream_key(text: str) -> str:
    """A stream key from a URL; InputError (400) if it is not one (key names are public, their format too)."""
    if not STREAM_KEY.match(text):
        raise InputError("a stream key is 1 to 64 letters, digits, '-' or '_' (e.g. /whip/streams/studio-a)")
    return text


@dataclass
class Stream:
    """One stream key: its credentials, its sessions (oldest first) and the parameters set through it."""

    key: str
    follow_secret: str
    publisher_secret: str | None  # the claim of a server without an admin token; None: open (or the admin token rules)
    owner: str | None = None  # the client address that claimed it (claims make room only for their own client)
    params: dict[str, Any] = field(default_factory=dict)
    session_ids: list[str] = field(default_factory=list)
    viewer_ids: set[str] = field(default_factory=set)  # WHEP viewers that joined through the key
    published_at: float = field(default_factory=time.monotonic)


class StreamRegistry:
    """Every stream key of one server (see module docstring).

    Sessions are not told which key they belong to: the registry keeps the
    ids and asks the session manager's ``sessions`` mapping which are still
    open, dropping the others as it goes.
    """

    def __init__(self, capacity: int = MAX_STREAMS, claims_per_client: int = MAX_CLAIMS_PER_CLIENT) -> None:
        self.capacity = capacity
        self.claims_per_client = claims_per_client
        self._streams: dict[str, Stream] = {}
        self._key_of: dict[str, str] = {}  # session id -> stream key, for the sessions listed in a Stream

    def get(self, key: str) -> Stream | None:
        return self._streams.get(key)

    def all(self) -> list[Stream]:
        return list(self._streams.values())

    # ------------------------------------------------------------- publishing
    def check_publisher(self, key: str, given: str | None, admin_token: str | None) -> None:
        """May the bearer ``given`` publish to ``key``? (The admin token was already required where there is one.)"""
        stream = self._streams.get(key)
        if admin_token is not None or stream is None or stream.publisher_secret is None:
            return
        if not same_secret(given, stream.publisher_secret):
            raise UnauthorizedError(
                f"stream {key!r} was claimed by the bearer token of its first publisher; publish with that token "
                "(in OBS: Settings, Stream, Bearer Token), or to another stream key",
                invalid=given is not None,
            )

    def publish(
        self, key: str, session_id: str, given: str | None, admin_token: str | None, open_sessions: Mapping[str, Any],
        client: str | None = None,
    ) -> tuple[Stream, bool]:
        """Make ``session_id`` the latest session of ``key`` (published from address ``client``); returns the stream and whether it is new."""
        self.check_publisher(key, given, admin_token)  # again: another first publish may have claimed the key meanwhile
        stream = self._streams.get(key)
        created = stream is None
        if stream is None:
            claim = given if admin_token is None and given else None
            self._make_room(open_sessions, client if claim is not None else None)
            stream = self._streams[key] = Stream(key, new_session_secret(), claim, client if claim is not None else None)
        self.live_sessions(stream, open_sessions)  # forget the ended ones
        stream.session_ids.append(session_id)
        stream.published_at = time.monotonic()
        self._key_of[session_id] = key
        return stream, created

    def _make_room(self, open_sessions: Mapping[str, Any], claimant: str | None) -> None:
        """Room for one more key (see module docstring); ``claimant``: the client about to claim it, if it does."""
        idle = [s for s in self._streams.values() if not self.live_sessions(s, open_sessions)]
        own_idle_claims = [s for s in idle if s.publisher_secret is not None and s.owner == claimant]
        if claimant is not None:
            claims = sum(1 for s in self._streams.values() if s.publisher_secret is not None and s.owner == claimant)
            if claims >= self.claims_per_client:
                if not own_idle_claims:
                    raise CapacityError(
                        f"this client already claims {claims} stream keys with live sessions, the most one client may; "
                        "publish to one of them, or stop one"
                    )
                self._forget(min(own_idle_claims, key=lambda s: s.published_at))
                return
        if len(self._streams) < self.capacity:
            return
        unclaimed = [s for s in idle if s.publisher_secret is None]
        candidates = unclaimed or own_idle_claims
        if not candidates:
            raise CapacityError(
                f"this server already holds {self.capacity} stream keys that are live or claimed; publish to an existing key, "
                "or try again later"
            )
        self._forget(min(candidates, key=lambda s: s.published_at))

    def _forget(self, stream: Stream) -> None:
        for session_id in stream.session_ids:
            self._key_of.pop(session_id, None)
        del self._streams[stream.key]

    # ---------------------------------------------------------------- lookups
    def live_sessions(self, stream: Stream, open_sessions: Mapping[str, Any]) -> list[str]:
        """The ids of ``stream``'s sessions still open, oldest first (ended ones are forgotten here)."""
        ended = [sid for sid in stream.session_ids if sid not in open_sessions]
        for sid in ended:
            self._key_of.pop(sid, None)
        stream.session_ids = [sid for sid in stream.session_ids if sid in open_sessions]
        return list(stream.session_ids)

    def current(self, stream: Stream, open_sessions: Mapping[str, Session]) -> Session | None:
        """The latest live session of ``stream``, if any."""
        live = self.live_sessions(stream, open_sessions)
        return open_sessions[live[-1]] if live else None

    def stream_of(self, session_id: str) -> Stream | None:
        key = self._key_of.get(session_id)
        return self._streams.get(key) if key is not None else None

    def add_viewer(self, stream: Stream, viewer_id: str, open_sessions: Mapping[str, Session]) -> None:
        """Remember a viewer that joined through ``stream``'s follow endpoint: its follow secret may remove it, no other viewer."""
        watching = {v for sid in self.live_sessions(stream, open_sessions) for v in open_sessions[sid].viewers}
        stream.viewer_ids = (stream.viewer_ids & watching) | {viewer_id}

    def viewer_secret(self, viewer_id: str) -> Callable[[Session], str | None]:
        """For ``DELETE /whep/{id}/{viewer_id}``: the follow secret of the session's stream, if the viewer joined through it."""

        def secret_of(session: Session) -> str | None:
            stream = self.stream_of(session.id)
            return stream.follow_secret if stream is not None and viewer_id in stream.viewer_ids else None

        return secret_of

    def publisher_secret_of(self, session: Session) -> str | None:
        """What besides its own secret ends ``session`` (``DELETE /whip/{id}``): the bearer token that claimed its stream."""
        stream = self.stream_of(session.id)
        return stream.publisher_secret if stream is not None else None

    # ---------------------------------------------------------- authorization
    def authorize(self, key: str, given: str | None, admin_token: str | None) -> Stream:
        """The stream ``key`` if ``given`` is its follow secret or the admin token.

        Without either, an unknown key and a wrong credential get the same
        401; only the admin token learns (404) that a key does not exist.
        """
        if given is None:
            raise UnauthorizedError(ASK_FOR_FOLLOW_SECRET)
        stream = self._streams.get(key)
        if same_secret(given, admin_token):
            if stream is None:
                raise NotFoundError(f"no stream {key!r}: a stream key exists from its first WHIP publish (/whip/streams/{key}) on")
            return stream
        if same_secret(given, stream.follow_secret if stream is not None else _NO_STREAM_SECRET) and stream is not None:
            return stream
        raise UnauthorizedError(ASK_FOR_FOLLOW_SECRET, invalid=True)


def browser_source_url(origin: str, key: str, secret: str) -> str:
    """The ``/obs`` page following ``key``; the secret goes after ``#``, which browsers never send to the server."""
    return f"{origin}{BROWSER_SOURCE_PAGE}#{urlencode({'stream': key, 'secret': secret})}"


def browser_source_link(url: str) -> str:
    """The ``Link`` header value that hands a WHIP publisher its browser-source URL (RFC 8288)."""
    return f'<{url}>; rel="related"; type="text/html"; title="OBS browser source"'


def binds_loopback(host: str) -> bool:
    """Is the server bound to loopback only (so whoever reads its log is on this machine)?"""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


STREAMS_KEY: web.AppKey[StreamRegistry] = web.AppKey("streamgen.streams", StreamRegistry)


def streams(request: web.Request) -> StreamRegistry:
    return request.app[STREAMS_KEY]

