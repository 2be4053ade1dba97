"""STUN and TURN servers, and the credentials every client is handed for them.

A server on a rented GPU is behind NAT and a firewall; a browser behind a
strict NAT (or a locked-down network) can reach it only through a TURN relay.
The operator names ICE servers (``--ice-server``, repeatable: ``stun:``,
``turn:``, ``turns:`` with ``?transport=udp|tcp``) and TURN credentials,
either static (``--ice-username``/``--ice-credential``) or derived from a
secret shared with the TURN server (``--turn-secret``: the TURN REST scheme
coturn's ``use-auth-secret`` implements):

    username   = "<unix time it expires>:<who>"       (who: a fresh id per client)
    credential = base64(HMAC-SHA1(secret, username))

so each client gets its own short-lived credential (``--turn-ttl``, default
one hour) and the secret never leaves the server. The server hands them to
every client it serves: ``GET /api/ice`` (the page, ``/watch``, ``/obs``) and
``Link: <turn:...>; rel="ice-server"`` headers on WHIP/WHEP answers (the
WHIP/WHEP convention, RFC 9725), and uses them for its own peer connections.
``--ice-transport-policy relay`` tells clients to use relayed candidates
only (testing, locked-down networks).

aiortc (the server's side) uses the first STUN and the first TURN server it
is given; browsers use them all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ...errors import ConfigError

TransportPolicy = Literal["all", "relay"]
TRANSPORT_POLICIES: tuple[str, ...] = ("all", "relay")
DEFAULT_TURN_TTL_S = 3600
_URL = re.compile(r"^(stun|stuns|turn|turns):(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(:\d{1,5})?(\?transport=(udp|tcp))?$")


@dataclass(frozen=True)
class IceServer:
    """One ICE server entry as clients take it: URLs and, for TURN, a username and credential."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"], out["credential"] = self.username, self.credential
        return out


def parse_ice_url(url: str) -> str:
    """Check one ``--ice-server`` URL; ConfigError saying the accepted form."""
    text = url.strip()
    match = _URL.match(text)
    if match is None:
        raise ConfigError(
            f"ICE server {url!r} is not a STUN/TURN URL: write stun:host[:port], turn:host[:port][?transport=udp|tcp] "
            "or turns:host[:port][?transport=tcp]"
        )
    port = match.group(3)
    if port is not None and not 0 < int(port[1:]) < 65536:
        raise ConfigError(f"ICE server {url!r}: the port must be 1-65535")
    if match.group(1).startswith("stun") and match.group(4):
        raise ConfigError(f"ICE server {url!r}: ?transport= applies to turn: and turns: URLs")
    return text


def is_turn(url: str) -> bool:
    return url.startswith(("turn:", "turns:"))


def turn_rest_credentials(secret: str, who: str, ttl_s: int, now: float | None = None) -> tuple[str, str]:
    """``(username, credential)`` of the TURN REST scheme: valid for ``ttl_s`` seconds from ``now``."""
    expires = int((time.time() if now is None else now) + ttl_s)
    username = f"{expires}:{who}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class IcePolicy:
    """The server's ICE configuration (see module docstring); checked when it is made."""

    urls: tuple[str, ...] = ()
    username: str | None = None
    credential: str | None = None
    turn_secret: str | None = None
    turn_ttl_s: int = DEFAULT_TURN_TTL_S
    transport_policy: TransportPolicy = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "urls", tuple(parse_ice_url(u) for u in self.urls))
        if self.transport_policy not in TRANSPORT_POLICIES:
            raise ConfigError(f"ice_transport_policy must be all or relay, got {self.transport_policy!r}")
        if (self.username is None) != (self.credential is None):
            raise ConfigError("--ice-username and --ice-credential go together (static TURN credentials)")
        if self.turn_secret is not None and self.username is not None:
            raise ConfigError("TURN credentials are either static (--ice-username/--ice-credential) or derived from --turn-secret, not both")
        if self.turn_secret is not None and not self.turn_secret:
            raise ConfigError("--turn-secret must not be empty")
        if not isinstance(self.turn_ttl_s, int) or isinstance(self.turn_ttl_s, bool) or not 60 <= self.turn_ttl_s <= 7 * 86400:
            raise ConfigError(f"turn_ttl must be 60 to 604800 seconds, got {self.turn_ttl_s!r}")
        turn = [u for u in self.urls if is_turn(u)]
        if turn and self.username is None and self.turn_secret is None:
            raise ConfigError(f"{turn[0]} needs credentials: --ice-username/--ice-credential, or --turn-secret (coturn's use-auth-secret)")
        if (self.username is not None or self.turn_secret is not None) and not turn:
            raise ConfigError("TURN credentials were given but no turn: or turns: URL (--ice-server turn:host:3478)")
        if self.transport_policy == "relay" and not turn:
            raise ConfigError("--ice-transport-policy relay needs a TURN server (--ice-server turn:...)")

    @property
    def has_turn(self) -> bool:
        return any(is_turn(u) for u in self.urls)

    def servers_for(self, who: str | None = None) -> list[IceServer]:
        """The entries one client gets: STUN URLs as they are; TURN URLs with its credentials (fresh ones under a secret)."""
        stun = tuple(u for u in self.urls if not is_turn(u))
        turn = tuple(u for u in self.urls if is_turn(u))
        servers = [IceServer(stun)] if stun else []
        if turn:
            if self.turn_secret is not None:
                username, credential = turn_rest_credentials(self.turn_secret, who or secrets.token_hex(6), self.turn_ttl_s)
            else:
                username, credential = self.username, self.credential
            servers.append(IceServer(turn, username, credential))
        return servers

    def client_config(self, who: str | None = None) -> dict[str, Any]:
        """``RTCConfiguration`` for a browser: ``{"iceServers": [...], "iceTransportPolicy": ...}``."""
        return {"iceServers": [s.to_json() for s in self.servers_for(who)], "iceTransportPolicy": self.transport_policy}

    def link_headers(self, who: str | None = None) -> list[str]:
        """``Link`` header values announcing the ICE servers on a WHIP/WHEP answer (one per URL)."""
        values = []
        for server in self.servers_for(who):
            for url in server.urls:
                value = f'<{url}>; rel="ice-server"'
                if server.username is not None:
                    value += f'; username="{_quoted(server.username)}"; credential="{_quoted(server.credential or "")}"; credential-type="password"'
                values.append(value)
        return values

    def aiortc_servers(self, who: str | None = None) -> Sequence[Any]:
        """The server's own ``RTCIceServer`` list (aiortc takes the first STUN and the first TURN URL)."""
        from aiortc import RTCIceServer  # noqa: PLC0415

        return [RTCIceServer(list(s.urls), s.username, s.credential) for s in self.servers_for(who)]


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
