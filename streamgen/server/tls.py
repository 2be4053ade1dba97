"""HTTPS for the page: browsers give camera and screen access only to a secure page.

``http://localhost`` counts as secure, so the page works on the machine that
runs the server; opened from another machine over plain HTTP, Start fails
(``navigator.mediaDevices`` does not exist). ``streamgen serve`` serves HTTPS
with ``--tls-cert``/``--tls-key`` (a real certificate), or with
``--tls-self-signed``: a certificate made at start for the names the server
answers, whose SHA-256 fingerprint is printed so the user can check what the
browser's warning shows before accepting it.

The self-signed key and certificate live in a private temporary directory
for the life of the process (``ssl`` loads them from files) and are never
reused: each start makes a new pair.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

SELF_SIGNED_DAYS = 30


@dataclass(frozen=True)
class TlsFiles:
    """A certificate chain and its key, on disk, and the certificate's SHA-256 fingerprint (``AB:CD:...``)."""

    cert: Path
    key: Path
    fingerprint: str


def server_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2+, the ssl module's secure defaults) for ``files``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(files.cert), str(files.key))
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"the TLS certificate {files.cert} and key {files.key} cannot be used: {error}") from None
    return context


def given_files(cert: str, key: str) -> TlsFiles:
    """``--tls-cert``/``--tls-key``: both must exist and belong together (checked by loading them)."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise ConfigError(f"{flag} {path!r} does not exist (a PEM file)")
    files = TlsFiles(Path(cert), Path(key), fingerprint_of(Path(cert).read_bytes()))
    server_ssl_context(files)
    return files


def self_signed_files(names: list[str], directory: Path | None = None) -> TlsFiles:
    """A new key and a certificate for ``names`` (host names and IP addresses), valid :data:`SELF_SIGNED_DAYS` days."""
    from cryptography import x509  # noqa: PLC0415  (aiortc's dependency: always installed with the server)
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for name in dict.fromkeys(n for n in names if n):
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamgen (self-signed)")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="streamgen-tls-"))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem)
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return TlsFiles(cert_path, key_path, fingerprint_of(pem))


def fingerprint_of(pem: bytes) -> str:
    """SHA-256 of the first certificate in ``pem`` (its DER form), as browsers show it: ``AB:CD:...``."""
    der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii", "replace").split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    import hashlib  # noqa: PLC0415

    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def certificate_names(host: str, allowed_hosts: tuple[str, ...], public_host: str | None) -> list[str]:
    """The names a self-signed certificate covers: loopback, the bind address, the allowed and public hosts (ports dropped)."""
    names = ["localhost", "127.0.0.1", "::1"]
    if host.strip() in ("0.0.0.0", "::", ""):  # every interface: the machine's own name and addresses, as others reach it
        names += _this_machine()
    for entry in (host, *allowed_hosts, *([public_host] if public_host else [])):
        entry = entry.strip()
        if not entry or entry in ("0.0.0.0", "::", "*"):
            continue
        name = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry  # example.org:8443 -> example.org; IPv6 stays
        names.append(name.strip("[]"))
    return names


def _this_machine() -> list[str]:
    import socket  # noqa: PLC0415

    try:
        name = socket.gethostname()
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        return []
    return [name, *sorted(a for a in addresses if not a.startswith("127."))]
