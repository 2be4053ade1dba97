"""The ``Host`` header check: the server answers only the names it is bound to (DNS rebinding).

A web page on ``evil.example`` can make its own name resolve to 127.0.0.1
(DNS rebinding) and then talk to a server on the visitor's loopback as if it
were same-origin. Every such request carries ``Host: evil.example``, so the
server answers a request only when its ``Host`` is a name it serves:

- bound to a name or address (``--host 192.168.1.5``): that name;
- bound to loopback (``127.0.0.1``, ``::1``, ``localhost``): also
  ``localhost``, ``127.0.0.1`` and ``[::1]``;
- bound to every interface (``0.0.0.0``, ``::``): ``localhost`` and any IP
  literal (a rebinding attack needs a name of the attacker's: a request
  addressed to an IP literal came from a page served by that address);
  host *names* must be listed;
- plus every entry of ``--allowed-hosts`` (``name`` for any port,
  ``name:port`` for that port only); ``*`` turns the check off (unsafe: any
  page the server's users visit can reach it).

The port of a bound name is not checked: SSH tunnels and container port maps
change it, and rebinding does not depend on it. A request without a
``Host``, with more than one, or with a malformed one is refused too. The
refusal is ``421 Misdirected Request`` with a JSON error that names
``--allowed-hosts``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from ...errors import ConfigError
from .http_errors import json_error, loggable

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
EVERY_INTERFACE = ("0.0.0.0", "::", "")
ANY_HOST = "*"
NAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$")


@dataclass(frozen=True)
class HostName:
    """A normalised host: lower case, IP literals in canonical form without brackets, no trailing dot."""

    name: str
    port: int | None = None  # None: any port (an allowlist entry) / no port given (a header)

    @property
    def is_ip(self) -> bool:
        return _ip(self.name) is not None


def parse_host(text: str, *, bare_ipv6: bool = False) -> HostName:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port`` → :class:`HostName` (ValueError if malformed).

    ``bare_ipv6``: also take an IPv6 address without brackets (and so without
    a port), as an operator may write it in ``--allowed-hosts``; a ``Host``
    header must bracket it.
    """
    text = text.strip()
    if bare_ipv6 and text.count(":") > 1 and not text.startswith("["):
        address = _ip(text)
        if address is None:
            raise ValueError(f"{text!r} is not an IPv6 address")
        return HostName(address.compressed)
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        address = _ip(inside)
        if not bracket or not isinstance(address, ipaddress.IPv6Address):
            raise ValueError(f"{text!r} is not a bracketed IPv6 address")
        return HostName(address.compressed, _port(rest, text))
    name, colon, port = text.partition(":")
    name = name.lower().removesuffix(".")
    if not NAME.match(name):
        raise ValueError(f"{text!r} is not a host name")
    address = _ip(name)
    return HostName(address.compressed if address is not None else name, _port(colon + port, text))


def _port(rest: str, text: str) -> int | None:
    if rest in ("", ":"):
        return None
    digits = rest.removeprefix(":")
    if not rest.startswith(":") or not digits.isdigit() or not 0 < int(digits) < 65536:
        raise ValueError(f"{text!r} has a bad port")
    return int(digits)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone (%eth0) does not change the address
    except ValueError:
        return None


def parse_allowed_hosts(entries: Iterable[str]) -> tuple[HostName, ...]:
    """``--allowed-hosts`` entries (``*`` aside) → host names; ConfigError names a bad one."""
    out = []
    for entry in entries:
        if entry == ANY_HOST:
            continue
        try:
            out.append(parse_host(entry, bare_ipv6=True))
        except ValueError as error:
            raise ConfigError(f"allowed_hosts: {error}; write a host name or address, optionally with :port (e.g. example.org, example.org:8443, [::1])") from None
    return tuple(out)


@dataclass(frozen=True)
class HostRules:
    """Which ``Host`` headers a server answers (see module docstring)."""

    names: tuple[HostName, ...]
    any_ip: bool = False
    any_host: bool = False

    @classmethod
    def for_server(cls, bind: str, allowed: Iterable[str]) -> HostRules:
        allowed = tuple(allowed)
        names = list(parse_allowed_hosts(allowed))
        bind = bind.strip().lower()
        every_interface = bind in EVERY_INTERFACE
        if every_interface:
            names.append(HostName("localhost"))  # IP literals: any_ip
        else:
            if _is_loopback(bind):
                names += [HostName(n) for n in LOOPBACK_NAMES]
            names.append(parse_host(bind, bare_ipv6=True))
        return cls(tuple(dict.fromkeys(names)), any_ip=every_interface, any_host=ANY_HOST in allowed)

    def allows(self, header: str | None) -> bool:
        if self.any_host:
            return True
        if header is None:
            return False
        try:
            host = parse_host(header)
        except ValueError:
            return False
        if self.any_ip and host.is_ip:
            return True
        return any(host.name == n.name and n.port in (None, host.port) for n in self.names)


def _is_loopback(bind: str) -> bool:
    address = _ip(bind.strip("[]"))
    return bind == "localhost" or (address is not None and address.is_loopback)


def host_check(rules: HostRules) -> Callable:
    """The middleware: refuse (421, JSON) a request whose ``Host`` the server does not serve."""

    @web.middleware
    async def check_host(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        hosts = request.headers.getall("Host", [])
        if len(hosts) == 1 and rules.allows(hosts[0]):
            return await handler(request)
        message = refusal(hosts)
        logger.info("%s %s -> 421: %s", request.method, loggable(request.path), message)
        return json_error(421, message)

    return check_host


def refusal(hosts: list[str]) -> str:
    """Why a request with these ``Host`` headers is refused, and what the operator can do."""
    if len(hosts) != 1:
        return f"a request needs exactly one Host header (it has {len(hosts)})"
    shown = loggable(hosts[0], 80)
    try:
        host = parse_host(hosts[0])
    except ValueError:
        return f"Host {shown!r} is malformed"
    name = f"[{host.name}]" if ":" in host.name else host.name
    return (
        f"this server does not answer to Host {shown!r} (DNS rebinding protection); "
        f"if you reach it by that name, start it with --allowed-hosts {name}"
    )
