"""HTTPS for a browser on another machine: a real or a self-signed certificate, the page streams over it, and a
page on plain HTTP from another machine says why the camera is missing and what to do."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from streamgen.errors import ConfigError
from streamgen.server.config import ServerConfig
from streamgen.server.tls import certificate_names, given_files, self_signed_files

from .helpers import running_server
from .test_browser import CHROMIUM, CHROMIUM_FLAGS


def test_a_self_signed_certificate_covers_the_servers_names_and_prints_its_real_fingerprint(tmp_path):
    from cryptography import x509

    names = certificate_names("0.0.0.0", ("studio.lan", "example.org:8443"), "gpu.example.org")
    files = self_signed_files(names, tmp_path)
    certificate = x509.load_pem_x509_certificate(files.cert.read_bytes())
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(sans.get_values_for_type(x509.DNSName))
    assert {"localhost", "studio.lan", "example.org", "gpu.example.org"} <= dns
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    der = ssl.PEM_cert_to_DER_cert(files.cert.read_text())
    assert files.fingerprint.replace(":", "") == hashlib.sha256(der).hexdigest().upper()
    assert oct(files.key.stat().st_mode & 0o777) == "0o600", "the private key is readable by its owner only"
    assert given_files(str(files.cert), str(files.key)).fingerprint == files.fingerprint


def test_tls_flags_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="go together"):
        ServerConfig(tls_cert="cert.pem")
    with pytest.raises(ConfigError, match="makes its own"):
        ServerConfig(tls_cert="c.pem", tls_key="k.pem", tls_self_signed=True)
    with pytest.raises(ConfigError, match="does not exist"):
        given_files(str(tmp_path / "nope.pem"), str(tmp_path / "nope.key"))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    one, other = self_signed_files(["localhost"], tmp_path / "a"), self_signed_files(["localhost"], tmp_path / "b")
    assert one.fingerprint != other.fingerprint, "every start makes a new pair"
    with pytest.raises(ConfigError, match="cannot be used"):
        given_files(str(one.cert), str(other.key))  # a key that is not the certificate's


async def test_the_server_answers_https_with_the_certificate_whose_fingerprint_it_printed(identity_pipeline, tmp_path):
    files = self_signed_files(["localhost", "127.0.0.1"], tmp_path)
    async with running_server(identity_pipeline, tls_cert=str(files.cert), tls_key=str(files.key)) as server:
        assert server.base_url.startswith("https://")
        pinned = aiohttp.Fingerprint(bytes.fromhex(files.fingerprint.replace(":", "")))
        async with aiohttp.ClientSession() as http:
            async with http.get(server.base_url + "/livez", ssl=pinned) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(server.base_url + "/livez"):  # an unknown issuer: a client that checks refuses it
                    pass


pytestmark_browser = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium")


@pytestmark_browser
async def test_the_page_streams_its_camera_over_https(identity_pipeline, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright Python package is not installed")
    async with running_server(identity_pipeline, tls_self_signed=True) as server, playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=[*CHROMIUM_FLAGS, "--ignore-certificate-errors"],  # the user accepted the self-signed certificate
        )
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.goto(server.base_url + "/")
            assert await page.evaluate("window.isSecureContext") and await page.is_hidden("#insecure-note")
            await page.click("#start")
            await page.wait_for_function("window.streamgen.outputFrames > 3", timeout=60_000)
        finally:
            await browser.close()


@pytestmark_browser
async def test_a_plain_http_page_from_another_machine_says_why_there_is_no_camera(identity_pipeline, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright Python package is not installed")
    async with running_server(identity_pipeline, allowed_hosts=("studio.test",)) as server, playwright_api.async_playwright() as playwright:
        port = server.base_url.rsplit(":", 1)[1]
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=[*CHROMIUM_FLAGS, "--host-resolver-rules=MAP studio.test 127.0.0.1"],  # a name that is not localhost: not secure
        )
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.goto(f"http://studio.test:{port}/")
            assert not await page.evaluate("window.isSecureContext")
            note = await page.text_content("#insecure-note")
            assert await page.is_visible("#insecure-note") and "--tls-self-signed" in note and "ssh -L" in note
            await page.click("#start")  # the camera source: a clear error, not "Cannot read properties of undefined"
            await page.wait_for_selector("#error:not([hidden])")
            error = await page.text_content("#error")
            assert "not secure" in error and "undefined" not in error
        finally:
            await browser.close()


def test_the_serve_command_logs_the_fingerprint_of_its_self_signed_certificate(tmp_path):
    from .test_serve_command import free_port  # noqa: PLC0415

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamgen", "serve", "--model", "identity", "--port", str(port), "--tls-self-signed"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line.decode())
            if "is serving" in lines[-1] or process.poll() is not None:
                break
        text = "".join(lines)
        fingerprint = next(line for line in lines if "SHA-256 fingerprint" in line).rsplit(" ", 1)[-1].strip()
        served = ssl.get_server_certificate(("127.0.0.1", port))
        der = ssl.PEM_cert_to_DER_cert(served)
        assert fingerprint.replace(":", "") == hashlib.sha256(der).hexdigest().upper(), text
        assert f"https://127.0.0.1:{port}/" in text
    finally:
        process.terminate()
        process.communicate(timeout=30)
