"""``streamgen serve``: flags become a ServerConfig, and the command really serves."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from streamgen.cli import build_parser, main
from streamgen.commands.serve import build_config
from streamgen.errors import ConfigError


def parse(*argv: str):
    return build_config(build_parser().parse_args(["serve", *argv]))


def test_flags_map_onto_the_server_config():
    config = parse(
        "--host", "0.0.0.0", "--port", "9000", "--model", "identity", "--codec", "h264", "--bitrate", "3000",
        "--max-bitrate", "6000", "--max-fps", "24", "--max-sessions", "2", "--max-input", "1920x1080",
        "--token", "t0k", "--defaults", '{"prompt": "a fox", "width": 512}', "--stun", "stun:example.org:3478",
    )
    assert (config.host, config.port, config.model, config.codecs) == ("0.0.0.0", 9000, "identity", ("H264",))
    assert (config.bitrate, config.max_bitrate, config.max_fps, config.max_sessions) == (3_000_000, 6_000_000, 24.0, 2)
    assert (config.max_input_width, config.max_input_height, config.token) == (1920, 1080, "t0k")
    assert config.default_params == {"prompt": "a fox", "width": 512} and config.ice_servers == ("stun:example.org:3478",)


def test_scheduling_engine_and_thread_flags_map_onto_the_server_config():
    config = parse(
        "--slo-ms", "250", "--min-fps", "5", "--slo-range", "50,2000", "--max-resolution", "768x512",
        "--threads", "3", "--acceleration", "compile",
    )
    assert (config.slo_ms, config.min_fps, config.min_slo_ms, config.max_slo_ms) == (250.0, 5.0, 50.0, 2000.0)
    assert (config.max_width, config.max_height, config.threads, config.acceleration) == (768, 512, 3, "compile")
    assert config.default_slo.deadline_s == 0.25 and config.default_slo.min_fps == 5.0


def test_slow_client_flags_map_onto_the_server_config():
    config = parse("--header-timeout", "4", "--body-timeout", "6", "--keepalive-timeout", "20", "--max-connections", "64", "--peer-timeout", "7")
    assert (config.header_timeout, config.body_timeout, config.keepalive_timeout) == (4.0, 6.0, 20.0)
    assert (config.max_connections, config.peer_timeout) == (64, 7.0)
    defaults = parse()
    assert (defaults.header_timeout, defaults.body_timeout, defaults.keepalive_timeout, defaults.max_connections, defaults.peer_timeout) == (10.0, 10.0, 15.0, 512, 10.0)


def test_exposure_flags_map_onto_the_server_config():
    config = parse("--allowed-hosts", "studio.lan, example.org:8443,[::1]", "--cors-origins", "https://studio.example.org,http://localhost:3000", "--metrics-sessions")
    assert config.allowed_hosts == ("studio.lan", "example.org:8443", "[::1]")
    assert config.cors_origins == ("https://studio.example.org", "http://localhost:3000")
    assert config.metrics_session_labels is True
    default = parse()
    assert (default.allowed_hosts, default.cors_origins, default.metrics_session_labels) == ((), (), False)


@pytest.mark.parametrize(
    "argv, word",
    [
        (["--codec", "av1"], "codec"),
        (["--max-input", "big"], "max-input"),
        (["--defaults", "[1]"], "JSON object"),
        (["--bitrate", "9000", "--max-bitrate", "1000"], "max_bitrate"),
        (["--max-fps", "0"], "max_fps"),
        (["--slo-ms", "10"], "slo_ms"),
        (["--slo-range", "fast"], "slo-range"),
        (["--max-resolution", "huge"], "max-resolution"),
        (["--min-fps", "99"], "min_fps"),
        (["--threads", "0"], "threads"),
        (["--allowed-hosts", "http://example.org"], "allowed_hosts"),
        (["--allowed-hosts", "example.org:99999"], "allowed_hosts"),
        (["--cors-origins", "example.org"], "cors_origins"),
        (["--cors-origins", "https://example.org/app"], "cors_origins"),
    ],
)
def test_bad_flags_are_config_errors(argv, word):
    with pytest.raises(ConfigError, match=word):
        parse(*argv)


def test_bad_flags_exit_with_a_message(capsys):
    assert main(["serve", "--codec", "av1"]) == 2
    assert "codec must be one of" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_serve_starts_serves_the_page_and_stops_on_sigint():
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "streamgen", "serve", "--model", "identity", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as http:
            health = None
            for _ in range(600):  # up to 60 s for a cold import of torch on a busy machine
                if process.poll() is not None:
                    break
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as response:
                        health = await response.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            assert health is not None and health["model"] == "identity", process.stdout.read().decode() if process.poll() is not None else "no answer"
            async with http.get(f"http://127.0.0.1:{port}/") as response:
                assert response.status == 200 and "streamgen" in await response.text()
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert "Traceback" not in output


async def test_sigterm_stops_a_streaming_server_within_seconds():
    """Two SIGTERMs with a session streaming through the tiny model (the first starts a drain, the second stops): sessions closed, exit 0, a few seconds."""
    from streamgen.client.webrtc import connect_offer
    from streamgen.client.synthetic import MarkerVideoTrack

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "streamgen", "serve", "--model", "tiny", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    peer = None
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(900):
                if process.poll() is not None:
                    break
                try:
                    async with http.get(base + "/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        peer = await connect_offer(base, MarkerVideoTrack(), {"width": 128, "height": 128})
        await peer.wait_for_frames(3, timeout=60)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert process.poll() is None, "the first SIGTERM drains: the running session goes on"
        process.send_signal(signal.SIGTERM)
        output = await asyncio.get_running_loop().run_in_executor(None, lambda: process.communicate(timeout=30)[0].decode())
        assert time.monotonic() - started < 8, output
    finally:
        if process.poll() is None:
            process.kill()
        if peer is not None:
            await peer.close(delete=False)
    assert process.returncode == 0, output
    assert "Traceback" not in output
