"""``streamgen serve``: the WebRTC / WHIP / WHEP server with the browser page.

    streamgen serve --model tiny                        # page at http://127.0.0.1:8000/
    streamgen serve --model identity                    # no model: measures the transport
    streamgen serve --host 0.0.0.0 --token SECRET --codec h264 --bitrate 4000
    streamgen serve --host 0.0.0.0 --token SECRET --allowed-hosts studio.lan

Flags map one to one onto :class:`streamgen.server.config.ServerConfig`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket

from .early_checks import check_model_name

DEFAULTS_HELP = 'settings for sessions whose client sends none (WHIP/OBS), as JSON, e.g. \'{"prompt": "a watercolor", "width": 512, "height": 512}\''


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the streaming server (browser page, WebRTC, WHIP, WHEP)", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    net.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    net.add_argument("--token", default=os.environ.get("STREAMGEN_TOKEN"), help="the admin token: creating a session (/offer, WHIP) needs 'Authorization: Bearer TOKEN', and it reads, steers, watches and ends every session and lists them; each session also has its own secret (default: $STREAMGEN_TOKEN, else none)")
    net.add_argument("--tls-cert", default=None, metavar="PEM", help="serve HTTPS with this certificate chain (with --tls-key): browsers open cameras only on secure pages, and http:// is secure only on localhost")
    net.add_argument("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert")
    net.add_argument("--tls-self-signed", action="store_true", help="serve HTTPS with a certificate made at start (its SHA-256 fingerprint is printed: compare it with the browser's warning); for a quick test from another machine")
    net.add_argument("--public-url", default=None, metavar="URL", help="the base clients reach this server by, e.g. https://studio.example.org/gpu2 behind a proxy: WHIP/WHEP Location, the OBS link and session URLs use it (its host is answered by the Host check)")
    net.add_argument("--trusted-proxies", default="", metavar="ADDRS", help="comma-separated addresses or networks (10.0.0.5, 10.0.0.0/8) whose X-Forwarded-Proto/Host/Prefix headers are believed when building URLs (default: none)")
    net.add_argument("--allowed-hosts", default="", metavar="NAMES", help="comma-separated Host names answered besides the bound ones, e.g. studio.lan,example.org:8443 (loopback names are always answered on a loopback bind; on 0.0.0.0 also IP addresses); '*' turns the check off, which is unsafe (DNS rebinding)")
    net.add_argument("--cors-origins", default="", metavar="ORIGINS", help="comma-separated web origins whose pages may call this server, e.g. https://studio.example.org (default none: same-origin only; '*' for any)")
    net.add_argument("--metrics-sessions", action="store_true", help="label /metrics series with session ids (default: server-wide totals only)")
    net.add_argument("--ice-server", "--stun", dest="ice_server", action="append", default=[], metavar="URL", help="STUN or TURN server, for the server's peers and handed to every client: stun:host[:port], turn:host[:port][?transport=udp|tcp], turns:host[:port] (repeatable; default none)")
    net.add_argument("--ice-username", default=None, help="static TURN username (with --ice-credential)")
    net.add_argument("--ice-credential", default=None, help="static TURN password")
    net.add_argument("--turn-secret", default=None, metavar="SECRET", help="TURN REST: derive short-lived per-client credentials from the secret shared with the TURN server (coturn use-auth-secret/static-auth-secret)")
    net.add_argument("--turn-ttl", type=int, default=3600, metavar="S", help="how long --turn-secret credentials stay valid (default 3600)")
    net.add_argument("--ice-transport-policy", choices=("all", "relay"), default="all", help="relay: clients use TURN-relayed candidates only (testing, locked-down networks)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="tiny", help="preset, hub id or local path; 'identity' returns the input unchanged (default tiny)")
    model.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default)")
    model.add_argument("--dtype", default="auto", help="float16, bfloat16, float32 or auto (default)")
    model.add_argument("--replicas", type=int, default=1, help="model copies, each with its own worker thread (default 1)")
    model.add_argument("--devices", default=None, metavar="LIST", help="several devices, e.g. cuda:0,cuda:1 (or cpu,cpu): a video model's DiT blocks run as pipeline stages across them; an image model runs one replica per device")
    model.add_argument("--defaults", default=None, metavar="JSON", help=DEFAULTS_HELP)
    model.add_argument("--acceleration", default="none", choices=("auto", "none", "compile", "onnxruntime", "tensorrt"), help="how model components run: none (torch eager, default), compile (torch.compile; CUDA graphs on GPUs), onnxruntime, tensorrt, or auto (the fastest available here, measured once; engines are cached under engines/)")
    model.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: $OMP_NUM_THREADS, else cores - 1, leaving a core for codecs and the event loop)")
    steer = parser.add_argument_group("steering (image models: sessions choose among what is loaded here)")
    steer.add_argument("--controlnet", action="append", default=[], metavar="NAME", help="load a ControlNet sessions may attach: a preset (canny-sd15, depth-sd15, pose-sd15, ...; tiny for the tiny model), hub id or local path (repeatable)")
    steer.add_argument("--ip-adapter", default=None, metavar="SOURCE", help="load an IP-Adapter: sessions then steer with a reference image (ip_adapter_image, ip_adapter_scale); tiny for the tiny model, or a weight file (hub owner/repo/file or local path)")
    steer.add_argument("--preprocessor-model", action="append", default=[], metavar="KIND=SOURCE", help="load the estimator of a model-based preprocessor, e.g. depth=depth-anything/Depth-Anything-V2-Small-hf or pose=tiny (repeatable)")
    steer.add_argument("--max-image-kb", type=int, default=4096, help="largest IP-Adapter reference image a parameter update may carry, KiB (default 4096)")
    sched = parser.add_argument_group("scheduling (service-level objectives)")
    sched.add_argument("--slo-ms", type=float, default=500.0, metavar="MS", help="default per-frame latency deadline; frames that cannot meet it are dropped and admission control keeps it for every session (default 500)")
    sched.add_argument("--min-fps", type=float, default=1.0, help="refuse a new session when it would slow any session below this frame rate (default 1: best effort)")
    sched.add_argument("--slo-range", default="30,5000", metavar="MIN,MAX", help="deadlines a client may ask for in its offer's \"slo\", in ms (default 30,5000)")
    sched.add_argument("--max-resolution", default=None, metavar="WxH", help="largest stream a session may ask for (default: twice the model's native size)")
    media = parser.add_argument_group("media")
    media.add_argument("--codec", default="auto", help="video codecs: auto (VP8 then H.264), vp8, h264, or h264,vp8 (default auto)")
    media.add_argument("--bitrate", type=int, default=2500, metavar="KBPS", help="encoder starting bitrate in kbit/s (default 2500; aiortc's own is 500 for VP8)")
    media.add_argument("--max-bitrate", type=int, default=8000, metavar="KBPS", help="the most receiver feedback may raise it to, kbit/s (default 8000)")
    media.add_argument("--max-fps", type=float, default=30.0, help="input frames per second a session feeds the model; faster input is dropped (default 30)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-sessions", type=int, default=4, help="concurrent publishing sessions; more get 503 (default 4)")
    limits.add_argument("--max-viewers", type=int, default=8, help="WHEP viewers per session (default 8)")
    limits.add_argument("--idle-timeout", type=float, default=30.0, metavar="S", help="close a session after this many seconds without input (default 30)")
    limits.add_argument("--connect-timeout", type=float, default=20.0, metavar="S", help="close a session whose peer has not connected by then (default 20)")
    limits.add_argument("--connect-grace", type=float, default=5.0, metavar="S", help="when the server is full, a newcomer displaces a session whose peer has not connected within this many seconds (default 5)")
    limits.add_argument("--max-pending", type=int, default=4, metavar="N", help="sessions one client address may have whose peer has not connected yet (default 4)")
    limits.add_argument("--peer-timeout", type=float, default=10.0, metavar="S", help="close a session (or viewer) whose connected peer sent no packet at all (media, RTCP, data channel) for this long: it vanished (default 10; ICE consent alone notices after ~30)")
    limits.add_argument("--drain-seconds", type=float, default=30.0, metavar="S", help="on SIGTERM, refuse new sessions and let running ones go on for up to this long before closing them (default 30; 0 stops at once; a second SIGTERM stops at once)")
    limits.add_argument("--header-timeout", type=float, default=10.0, metavar="S", help="seconds a client has to send a request's headers, from its first byte; then 408 and the connection is closed (default 10)")
    limits.add_argument("--send-timeout", type=float, default=10.0, metavar="S", help="seconds a response may sit unsent because the client does not read it; then the connection is closed (default 10)")
    limits.add_argument("--body-timeout", type=float, default=10.0, metavar="S", help="seconds a client has to send a request body; then 408 and the connection is closed (default 10)")
    limits.add_argument("--keepalive-timeout", type=float, default=15.0, metavar="S", help="close an HTTP connection idle for this long (default 15)")
    limits.add_argument("--max-connections", type=int, default=512, help="open HTTP connections; more are refused with 503 (default 512)")
    limits.add_argument("--max-body-kb", type=int, default=256, help="largest request body, KiB (default 256)")
    limits.add_argument("--max-input", default="3840x2160", metavar="WxH", help="largest input frame accepted (default 3840x2160); frames are scaled to the model's resolution")
    parser.add_argument("--web-dir", default=None, help="serve the browser client from this directory instead of the bundled one")
    parser.add_argument("--stats-interval", type=float, default=1.0, metavar="S", help="seconds between stats messages on the control channel (default 1)")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """Flags → :class:`~streamgen.server.config.ServerConfig` (raises ConfigError on bad values)."""
    from ..errors import ConfigError  # noqa: PLC0415
    from ..server.config import ServerConfig, parse_codecs, parse_default_params, parse_names  # noqa: PLC0415

    width, height = size_flag("--max-input", args.max_input, "1920x1080")
    low, _, high = args.slo_range.partition(",")
    try:
        min_slo, max_slo = float(low), float(high)
    except ValueError:
        raise ConfigError(f"--slo-range must look like 30,5000 (milliseconds), got {args.slo_range!r}") from None
    max_width, max_height = size_flag("--max-resolution", args.max_resolution, "1024x1024") if args.max_resolution else (None, None)
    return ServerConfig(
        host=args.host,
        port=args.port,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        replicas=args.replicas,
        devices=_devices_flag(args.devices),
        max_sessions=args.max_sessions,
        max_viewers_per_session=args.max_viewers,
        codecs=parse_codecs(args.codec),
        bitrate=args.bitrate * 1000,
        max_bitrate=args.max_bitrate * 1000,
        max_fps=args.max_fps,
        idle_timeout=args.idle_timeout,
        connect_timeout=args.connect_timeout,
        connect_grace=args.connect_grace,
        max_pending_per_client=args.max_pending,
        max_body_bytes=args.max_body_kb * 1024,
        max_input_width=width,
        max_input_height=height,
        token=args.token or None,
        ice_servers=tuple(args.ice_server),
        ice_username=args.ice_username,
        ice_credential=args.ice_credential,
        turn_secret=args.turn_secret,
        turn_ttl=args.turn_ttl,
        ice_transport_policy=args.ice_transport_policy,
        stats_interval=args.stats_interval,
        default_params=parse_default_params(args.defaults),
        web_dir=args.web_dir,
        slo_ms=args.slo_ms,
        min_fps=args.min_fps,
        min_slo_ms=min_slo,
        max_slo_ms=max_slo,
        threads=args.threads,
        acceleration=args.acceleration,
        max_width=max_width,
        max_height=max_height,
        allowed_hosts=parse_names(args.allowed_hosts),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_self_signed=args.tls_self_signed,
        public_url=args.public_url,
        trusted_proxies=parse_names(args.trusted_proxies),
        cors_origins=parse_names(args.cors_origins),
        metrics_session_labels=args.metrics_sessions,
        header_timeout=args.header_timeout,
        send_timeout=args.send_timeout,
        body_timeout=args.body_timeout,
        keepalive_timeout=args.keepalive_timeout,
        max_connections=args.max_connections,
        peer_timeout=args.peer_timeout,
        drain_seconds=args.drain_seconds,
        controlnets=tuple(args.controlnet),
        ip_adapter=args.ip_adapter,
        preprocessor_models=tuple(args.preprocessor_model),
        max_image_bytes=args.max_image_kb * 1024,
    )


def size_flag(flag: str, text: str, example: str) -> tuple[int, int]:
    """``WxH`` → (width, height); ConfigError naming the flag otherwise."""
    from ..errors import ConfigError  # noqa: PLC0415

    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ConfigError(f"{flag} must look like {example}, got {text!r}")
    return int(width), int(height)


def run(args: argparse.Namespace) -> int:
    from ..parallel.torchrun import torchrun_rank  # noqa: PLC0415  (no torch import)

    joined = torchrun_rank()
    if joined is not None and joined[0] != 0:  # a torchrun rank other than 0 serves only its pipeline stage
        from ..parallel.torchrun import run_torchrun_stage  # noqa: PLC0415

        return run_torchrun_stage(args.model, _devices_flag(args.devices), args.dtype, joined, args.acceleration)
    check_model_name(args.model)  # a misspelt model is one line at once, not after seconds of imports
    # The port is taken first (before torch and the model load, for seconds) and handed
    # to aiohttp: a port in use is one line at once, and nothing can take it in between.
    sockets = open_listening_sockets(args.host, args.port)
    try:
        config = build_config(args)
        for noisy in ("aioice", "aiortc"):  # per-candidate ICE chatter at INFO
            if not args.verbose:
                logging.getLogger(noisy).setLevel(logging.WARNING)
        from ..server import run_server  # noqa: PLC0415  (aiortc, torch: only when serving)

        run_server(config, sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
    return 0


def open_listening_sockets(host: str, port: int, backlog: int = 128, flag: str = "--port") -> list[socket.socket]:
    """Listening TCP sockets for every address ``host`` names, bound as asyncio/aiohttp would bind them.

    Like ``loop.create_server``: SO_REUSEADDR on POSIX (a restart need not wait
    for TIME_WAIT; a port another server listens on is still refused), and
    IPv6 sockets only take IPv6 so that ``localhost``'s two addresses do not
    clash. Raises ConfigError (one line) when the port cannot be had.
    """
    from ..errors import ConfigError  # noqa: PLC0415

    if not 0 <= port <= 65535:
        raise ConfigError(f"{flag} must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ConfigError(f"--host {host!r}: cannot resolve it ({error.strerror})") from None
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            if port == 0:  # one ephemeral port for every address
                port = sock.getsockname()[1]
    except OSError as error:
        for sock in sockets:
            sock.close()
        where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(f"cannot listen on {where}: the port is already in use (another streamgen?); pick another with {flag}") from None
        if error.errno == errno.EACCES:
            raise ConfigError(f"cannot listen on {where}: permission denied (ports below 1024 need privileges); pick another with {flag}") from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"cannot listen on {where}: no interface of this machine has that address; check --host") from None
        raise ConfigError(f"cannot listen on {where}: {error.strerror or error}") from None
    return sockets


def _devices_flag(value: str | None) -> tuple[str, ...]:
    """``--devices``: checked before any model loads (names, no GPU twice, GPUs that exist)."""
    if not value:
        return ()
    from ..parallel.staged_model import parse_devices  # noqa: PLC0415

    return parse_devices(value)
