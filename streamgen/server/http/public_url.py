"""Where clients reach this server: the base of every URL it hands out, right behind a proxy.

Behind a reverse proxy the address a client uses (``https://studio.example.org/gpu2/``)
is not the one the server sees (``http://10.0.0.7:8000/``). Every URL the
server puts in a response (WHIP/WHEP ``Location``, the OBS ``Link`` header,
the browser-source and session URLs in JSON) is built from :func:`public_base`:

1. ``--public-url`` (``ServerConfig.public_url``), when given, is the base,
   whatever the request says: what a server behind a load balancer sets, so
   that a session opened through the balancer's shared path learns the path
   that reaches *this* server (``/gpu2``);
2. else ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and
   ``X-Forwarded-Prefix``, but only from a peer in ``--trusted-proxies``
   (addresses or networks): anyone else could make the server hand out links
   to a host of their choosing;
3. else the scheme and ``Host`` of the request (the Host check accepted it).

Forwarded values are checked (scheme http or https, a host[:port], a prefix
of plain path characters); a malformed one is ignored, never echoed.
``Location`` headers carry the prefix and a path (clients resolve them
against the URL they used, which is the proxy's); URLs meant to be copied
elsewhere (the browser-source link) are absolute.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from ...errors import ConfigError

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(:\d{1,5})?$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")


@dataclass(frozen=True)
class PublicBase:
    """``origin`` (scheme://host[:port]) and ``prefix`` ("" or "/a/b") of the URLs clients use."""

    origin: str
    prefix: str = ""

    def path(self, path: str) -> str:
        """A server path (``/whip/ID``) as the client reaches it (``/gpu2/whip/ID``)."""
        return f"{self.prefix}{path}"

    def url(self, path: str) -> str:
        return f"{self.origin}{self.prefix}{path}"


def parse_public_url(text: str) -> PublicBase:
    """``--public-url`` → its base; ConfigError saying what is wrong."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(f"public_url must look like https://host[:port][/prefix] (no user, query or fragment), got {text!r}")
    prefix = parts.path.rstrip("/")
    if not _HOST.match(parts.netloc) or not _clean_prefix(prefix):
        raise ConfigError(f"public_url {text!r}: the host or the path has characters a URL base cannot have")
    return PublicBase(f"{parts.scheme}://{parts.netloc}", prefix)


def parse_trusted_proxies(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Addresses or networks (``10.0.0.5``, ``10.0.0.0/8``, ``::1``) whose forwarded headers are believed."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"trusted_proxies: {entry!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/8)") from None
    return tuple(networks)


def is_trusted(remote: str | None, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    if not remote or not networks:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address in network for network in networks)


def public_base(request: web.Request, public_url: str | None, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> PublicBase:
    """The base of the URLs this request's client should be given (see module docstring)."""
    if public_url:
        return parse_public_url(public_url)
    scheme, host, prefix = request.scheme, request.host, ""
    if is_trusted(request.remote, trusted):
        forwarded_scheme = _first(request.headers.get("X-Forwarded-Proto"))
        forwarded_host = _first(request.headers.get("X-Forwarded-Host"))
        forwarded_prefix = _first(request.headers.get("X-Forwarded-Prefix"))
        if forwarded_scheme in ("http", "https"):
            scheme = forwarded_scheme
        if forwarded_host and _HOST.match(forwarded_host):
            host = forwarded_host
        if forwarded_prefix is not None and _clean_prefix(forwarded_prefix.rstrip("/")):
            prefix = forwarded_prefix.rstrip("/")
    return PublicBase(f"{scheme}://{host}", prefix)


def client_address(request: web.Request, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str | None:
    """The client's address: the peer's, or behind a trusted proxy the nearest untrusted one in ``X-Forwarded-For``.

    Per-client limits (unconnected sessions, stream-key claims) count
    clients, not the proxy every request of a fleet comes through.
    """
    remote = request.remote
    if not is_trusted(remote, trusted):
        return remote
    chain = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",") if part.strip()]
    for hop in reversed(chain):  # rightmost first: the entries a trusted proxy appended, then the client's own claims
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return remote  # a malformed chain: count it against the proxy rather than believe it
        if not is_trusted(hop, trusted):
            return hop
    return chain[0] if chain else remote


def _clean_prefix(prefix: str) -> bool:
    """Plain path segments only: no dot segments (a prefix must not climb out of itself), no encoded characters."""
    return bool(_PREFIX.match(prefix)) and not any(part in (".", "..") for part in prefix.split("/"))


def _first(value: str | None) -> str | None:
    """The first of a comma-separated forwarded value (the proxy nearest the client wrote it), trimmed."""
    if value is None:
        return None
    return value.split(",")[0].strip()
