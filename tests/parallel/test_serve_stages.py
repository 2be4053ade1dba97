"""``streamgen serve --devices cpu,cpu`` and the same under ``torchrun``: real processes, a real session, a clean exit."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from streamgen.client.webrtc import connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from ..server.test_serve_command import free_port


async def _wait_healthy(base: str, process: subprocess.Popen, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"the server exited with {process.returncode}: {process.communicate()[0].decode()[-3000:]}")
            try:
                async with http.get(base + "/health") as response:
                    if response.status == 200:
                        return await response.json()
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("the server did not come up")


async def _stream_then_stop(command: list[str], port: int) -> tuple[dict, str, list[int]]:
    """Serve, stream a session through the stages, SIGTERM; the health, the output and every descendant pid."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    peer = None
    descendants: list[int] = []
    try:
        health = await _wait_healthy(base, process)
        descendants = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        peer = await connect_offer(base, MarkerVideoTrack(marked=False), {"width": 64, "height": 64, "prompt": "a fox"})
        await peer.wait_for_frames(5, timeout=90)
        process.send_signal(signal.SIGTERM)
        output = await asyncio.get_running_loop().run_in_executor(None, lambda: process.communicate(timeout=60)[0].decode())
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        if peer is not None:
            await peer.close(delete=False)
    return health, output, descendants


def _all_gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids):
            return True
        time.sleep(0.1)
    return False


async def test_serve_with_devices_streams_through_two_cpu_ranks_and_leaves_no_rank_behind():
    port = free_port()
    command = [sys.executable, "-m", "streamgen", "serve", "--model", "tiny-video", "--devices", "cpu,cpu", "--port", str(port)]
    health, output, descendants = await _stream_then_stop(command, port)
    stages = health["workers"][0]["stages"]
    assert stages["devices"] == ["cpu", "cpu"] and stages["split"] == [0, 1, 2] and stages["failure"] is None
    assert descendants, "rank 1 runs in a process of its own"
    assert _all_gone(descendants), output
    assert "Traceback" not in output


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="torchrun is not installed beside this Python")
async def test_torchrun_ranks_serve_one_staged_model():
    port = free_port()
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [
        torchrun, "--standalone", "--nproc-per-node", "2",
        "-m", "streamgen", "serve", "--model", "tiny-video", "--devices", "cpu,cpu", "--port", str(port),
    ]
    health, output, descendants = await _stream_then_stop(command, port)
    assert health["workers"][0]["stages"]["split"] == [0, 1, 2]
    assert len(descendants) >= 2  # torchrun's two workers
    assert _all_gone(descendants), output
