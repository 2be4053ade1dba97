"""``ServerConfig``: every knob of ``streamgen serve`` in one typed, validated place.

The CLI builds one from its flags; tests build one directly. Values are
checked once, here, so the rest of the server can trust them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..runtime.backend import ACCELERATIONS
from ..sched import Slo, SloLimits
from .http.cors import parse_origins
from .http.host_check import HostRules, parse_allowed_hosts
from .http.public_url import parse_public_url, parse_trusted_proxies
from .webrtc.ice_servers import IcePolicy

VideoCodec = Literal["VP8", "H264"]
CODEC_CHOICES: dict[str, tuple[VideoCodec, ...]] = {
    "auto": ("VP8", "H264"),
    "vp8": ("VP8",),
    "h264": ("H264",),
    "h264,vp8": ("H264", "VP8"),
}


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one streamgen server.

    ``model`` is any name :func:`streamgen.load_stream_pipeline` accepts, or
    ``identity`` (returns the input frames: measures the transport alone).
    ``codecs`` lists the video codecs the server negotiates, preferred first.
    ``bitrate`` is the encoder's starting bitrate and ``max_bitrate`` the
    ceiling receiver feedback (REMB) may raise it to, in bits per second.
    ``max_fps`` caps the frames per second a session feeds the model.
    ``token``: the admin token. When set, creating a session needs it as
    ``Authorization: Bearer <token>``; it also reads, changes, watches and
    ends any session and lists them all (see :mod:`streamgen.server.http.access`;
    each session has its own secret besides).
    ``allowed_hosts``: ``Host`` names answered besides those the server is
    bound to (``name`` or ``name:port``; ``"*"``: no check, unsafe; see
    :mod:`streamgen.server.http.host_check`).
    ``cors_origins``: web origins (``https://example.org``) whose pages may
    call the server (``"*"``: any); none by default (see
    :mod:`streamgen.server.http.cors`).
    ``metrics_session_labels``: per-session series, labelled with session
    ids, on ``/metrics`` (off: server-wide totals only).
    ``default_params`` are the settings of a session whose client sent none
    (WHIP/OBS), in the same schema as the ``params`` of ``POST /offer``.
    ``slo_ms`` is a session's default per-frame latency deadline and
    ``min_fps`` the frame rate below which admission control refuses new
    sessions (best effort above it); a client may ask for its own
    ``{"slo": {"deadline_ms", "fps", "min_fps"}}`` within
    ``[min_slo_ms, max_slo_ms]`` and ``max_fps``.
    ``acceleration``: how model components run (see :mod:`streamgen.runtime`).
    ``threads``: the model's CPU threads (None: ``OMP_NUM_THREADS`` or cores − 1).
    ``max_width``/``max_height``: the largest stream a session may ask for
    (None: twice the model's native size).
    ``header_timeout``: seconds a client has, from the first byte of a
    request, to send all its headers; ``body_timeout``: seconds to send the
    body a handler reads; ``send_timeout``: seconds a response may sit
    unsent because the client does not read it (then the connection is
    closed); ``keepalive_timeout``: seconds an idle HTTP
    connection stays open; ``max_connections``: open HTTP connections
    beyond which new ones are refused (see
    :mod:`streamgen.server.http.aiohttp_patches`).
    ``connect_grace``: a session whose peer has not connected this long may
    be displaced by a newcomer when the server is full;
    ``max_pending_per_client``: sessions one address may have waiting for
    their peer to connect (see :mod:`streamgen.server.sessions.manager`).
    ``drain_seconds``: after a SIGTERM, how long sessions in progress may go
    on while new ones are refused (0: stop at once; see :mod:`streamgen.server.drain`).
    ``peer_timeout``: a connected peer that sends nothing at all (no media,
    RTCP or data-channel packet) for this long has vanished and its
    session (or viewer) is closed, well before ICE consent expires (~30 s).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "tiny"
    device: str = "auto"
    dtype: str = "auto"
    replicas: int = 1
    devices: tuple[str, ...] = ()
    max_sessions: int = 4
    max_viewers_per_session: int = 8
    codecs: tuple[VideoCodec, ...] = ("VP8", "H264")
    bitrate: int = 2_500_000
    max_bitrate: int = 8_000_000
    max_fps: float = 30.0
    idle_timeout: float = 30.0
    connect_timeout: float = 20.0
    connect_grace: float = 5.0
    max_pending_per_client: int = 4
    max_body_bytes: int = 256 * 1024
    max_input_width: int = 3840
    max_input_height: int = 2160
    token: str | None = None
    ice_servers: tuple[str, ...] = ()  # stun:/turn:/turns: URLs, for the server's peers and handed to every client
    ice_username: str | None = None  # static TURN credentials ...
    ice_credential: str | None = None
    turn_secret: str | None = None  # ... or per-client ones derived from coturn's use-auth-secret secret
    turn_ttl: int = 3600
    ice_transport_policy: str = "all"  # relay: clients use TURN-relayed candidates only
    stats_interval: float = 1.0
    default_params: dict[str, Any] = field(default_factory=dict)
    web_dir: str | None = None
    slo_ms: float = 500.0
    min_fps: float = 1.0
    min_slo_ms: float = 30.0
    max_slo_ms: float = 5000.0
    threads: int | None = None
    acceleration: str = "none"
    max_width: int | None = None
    max_height: int | None = None
    allowed_hosts: tuple[str, ...] = ()
    tls_cert: str | None = None  # PEM certificate chain: serve HTTPS (browsers allow cameras only on secure pages)
    tls_key: str | None = None
    tls_self_signed: bool = False  # HTTPS with a certificate made at start (its fingerprint is printed)
    public_url: str | None = None  # the base clients use (behind a proxy: https://host/prefix); see server/http/public_url.py
    trusted_proxies: tuple[str, ...] = ()  # peers whose X-Forwarded-Proto/Host/Prefix are believed (addresses or networks)
    cors_origins: tuple[str, ...] = ()
    metrics_session_labels: bool = False
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    send_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    max_connections: int = 512
    peer_timeout: float = 10.0
    drain_seconds: float = 30.0  # SIGTERM: how long running sessions may go on while new ones are refused (server/drain.py)
    # What sessions may steer with (image models): ControlNets by name, one IP-Adapter, and the estimators of
    # model-based preprocessors ("depth=SOURCE", "pose=SOURCE"); all loaded at start, never on a client's request.
    controlnets: tuple[str, ...] = ()
    ip_adapter: str | None = None
    preprocessor_models: tuple[str, ...] = ()
    max_image_bytes: int = 4 * 1024 * 1024

    @property
    def ice(self) -> IcePolicy:
        """The ICE servers and the credentials clients get (server/webrtc/ice_servers.py)."""
        return IcePolicy(
            self.ice_servers, self.ice_username, self.ice_credential, self.turn_secret, self.turn_ttl, self.ice_transport_policy  # type: ignore[arg-type]
        )

    @property
    def tls(self) -> bool:
        return self.tls_self_signed or self.tls_cert is not None

    @property
    def trusted_networks(self) -> tuple:
        return parse_trusted_proxies(self.trusted_proxies)

    @property
    def answered_hosts(self) -> tuple[str, ...]:
        """``allowed_hosts`` and the host of ``public_url``: a proxy that passes the public Host through is answered."""
        if self.public_url is None:
            return self.allowed_hosts
        return (*self.allowed_hosts, urlsplit(self.public_url).netloc)

    @property
    def params_body_bytes(self) -> int:
        """The largest parameter update: a reference image travels in it as base64 (4 bytes per 3)."""
        return max(self.max_body_bytes, self.max_image_bytes * 4 // 3 + 64 * 1024)

    def __post_init__(self) -> None:
        _positive_int("port", self.port, allow_zero=True, high=65535)
        _positive_int("replicas", self.replicas, high=64)
        if self.devices and self.replicas != 1:
            raise ConfigError("give --devices or --replicas, not both (--devices runs one replica per device for image models)")
        _positive_int("max_sessions", self.max_sessions, high=10_000)
        _positive_int("max_viewers_per_session", self.max_viewers_per_session, allow_zero=True, high=1000)
        _positive_int("max_body_bytes", self.max_body_bytes, high=64 * 1024 * 1024)
        _positive_int("max_image_bytes", self.max_image_bytes, high=8 * 1024 * 1024)
        for entry in self.preprocessor_models:
            kind, _, source = entry.partition("=")
            if kind not in ("depth", "pose") or not source:
                raise ConfigError(f"--preprocessor-model takes KIND=SOURCE with KIND depth or pose (e.g. depth=depth-anything/Depth-Anything-V2-Small-hf), got {entry!r}")
        _positive_int("max_input_width", self.max_input_width, high=16384)
        _positive_int("max_input_height", self.max_input_height, high=16384)
        _positive_int("bitrate", self.bitrate, high=100_000_000)
        _positive_int("max_bitrate", self.max_bitrate, high=100_000_000)
        if self.max_bitrate < self.bitrate:
            raise ConfigError(f"max_bitrate ({self.max_bitrate}) must be at least bitrate ({self.bitrate})")
        _positive_int("max_connections", self.max_connections, high=1_000_000)
        _positive_int("max_pending_per_client", self.max_pending_per_client, high=10_000)
        for name in ("max_fps", "idle_timeout", "connect_timeout", "connect_grace", "stats_interval", "header_timeout", "body_timeout", "send_timeout", "keepalive_timeout", "peer_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of {'frames per second' if name == 'max_fps' else 'seconds'}, got {value!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: the certificate chain and its private key (PEM files)")
        if self.tls_self_signed and self.tls_cert is not None:
            raise ConfigError("--tls-self-signed makes its own certificate; drop it or --tls-cert/--tls-key")
        if isinstance(self.ice_servers, str) or not all(isinstance(u, str) for u in self.ice_servers):
            raise ConfigError(f"ice_servers must be a list of stun:/turn: URLs, got {self.ice_servers!r}")
        object.__setattr__(self, "ice_servers", tuple(self.ice_servers))
        IcePolicy(self.ice_servers, self.ice_username, self.ice_credential, self.turn_secret, self.turn_ttl, self.ice_transport_policy)  # type: ignore[arg-type]  # checks them together
        drain = self.drain_seconds
        if not isinstance(drain, (int, float)) or isinstance(drain, bool) or not math.isfinite(drain) or not 0 <= drain <= 86400:
            raise ConfigError(f"drain_seconds must be a number of seconds from 0 (stop at once) to 86400, got {drain!r}")
        for name in ("slo_ms", "min_fps", "min_slo_ms", "max_slo_ms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if not self.min_slo_ms <= self.slo_ms <= self.max_slo_ms:
            raise ConfigError(f"slo_ms ({self.slo_ms:g}) must be between min_slo_ms ({self.min_slo_ms:g}) and max_slo_ms ({self.max_slo_ms:g})")
        if self.min_fps > self.max_fps:
            raise ConfigError(f"min_fps ({self.min_fps:g}) must not be above max_fps ({self.max_fps:g})")
        if self.acceleration not in ACCELERATIONS:
            raise ConfigError(f"acceleration must be one of {', '.join(ACCELERATIONS)}, got {self.acceleration!r}")
        if self.threads is not None:
            _positive_int("threads", self.threads, high=1024)
        for name in ("max_width", "max_height"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name), high=16384)
        if not self.codecs or any(c not in ("VP8", "H264") for c in self.codecs):
            raise ConfigError(f"codecs must be a non-empty list of VP8 and/or H264, got {self.codecs!r}")
        if self.token is not None and not self.token.strip():
            raise ConfigError("token must not be empty; leave it unset to disable authentication")
        if not isinstance(self.default_params, dict):
            raise ConfigError("default_params must be a JSON object")
        self._check_exposure()

    def _check_exposure(self) -> None:
        """Host names, origins and the metrics flag (lists are stored as tuples)."""
        for name in ("allowed_hosts", "cors_origins"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.host, str) or not self.host.strip():
            raise ConfigError(f"host must be an address or name to listen on, got {self.host!r}")
        try:
            HostRules.for_server(self.host, ())
        except ValueError as error:
            raise ConfigError(f"host: {error}") from None
        parse_allowed_hosts(self.allowed_hosts)
        parse_origins(self.cors_origins)
        if not isinstance(self.trusted_proxies, (tuple, list)) or not all(isinstance(v, str) for v in self.trusted_proxies):
            raise ConfigError(f"trusted_proxies must be a list of addresses or networks, got {self.trusted_proxies!r}")
        object.__setattr__(self, "trusted_proxies", tuple(self.trusted_proxies))
        parse_trusted_proxies(self.trusted_proxies)
        if self.public_url is not None:
            if not isinstance(self.public_url, str):
                raise ConfigError(f"public_url must be a URL, got {self.public_url!r}")
            parse_public_url(self.public_url)
        if not isinstance(self.metrics_session_labels, bool):
            raise ConfigError(f"metrics_session_labels must be true or false, got {self.metrics_session_labels!r}")

    @property
    def default_slo(self) -> Slo:
        """Best effort: up to ``max_fps``, frames within ``slo_ms``, sessions admitted down to ``min_fps``."""
        return Slo(target_fps=self.max_fps, deadline_s=self.slo_ms / 1000, min_fps=self.min_fps)

    @property
    def slo_limits(self) -> SloLimits:
        return SloLimits(min_deadline_s=self.min_slo_ms / 1000, max_deadline_s=self.max_slo_ms / 1000, max_fps=self.max_fps)

    @property
    def max_input_pixels(self) -> int:
        return self.max_input_width * self.max_input_height


def parse_codecs(text: str) -> tuple[VideoCodec, ...]:
    """``auto`` / ``vp8`` / ``h264`` / ``h264,vp8`` → the codec preference list."""
    key = text.strip().lower().replace(" ", "")
    if key not in CODEC_CHOICES:
        raise ConfigError(f"codec must be one of {', '.join(CODEC_CHOICES)}; got {text!r}")
    return CODEC_CHOICES[key]


def parse_default_params(text: str | None) -> dict[str, Any]:
    """The ``--defaults`` JSON object (validated later, against the model, when a session starts)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--defaults must be a JSON object: {error}") from None
    if not isinstance(value, dict):
        raise ConfigError("--defaults must be a JSON object, e.g. '{\"prompt\": \"a watercolor\"}'")
    return value


def parse_names(text: str | None) -> tuple[str, ...]:
    """A comma-separated flag (``--allowed-hosts``, ``--cors-origins``) → its entries, blanks dropped."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def _positive_int(name: str, value: Any, *, allow_zero: bool = False, high: int) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer between {low} and {high}, got {value!r}")
