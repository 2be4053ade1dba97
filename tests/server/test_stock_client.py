"""A stock aiortc client (none of streamgen's patches, aiortc's own jitter buffer and encoder settings) is served at every size.

streamgen's aiortc changes (:mod:`streamgen.server.aiortc_patches`) are
process-wide, and this test process has them (the server applies them at
start). The client therefore runs in a subprocess (``stock_client.py``, which
imports nothing from streamgen) against a server started here, sending a
marked synthetic camera through ``POST /offer`` and asking for output of its
own size. The check is behaviour, not tight timing: frames keep coming
(a sane frame rate), their counters are readable and the latency stays far
from the seconds a stalled jitter buffer produces.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from .helpers import running_server

STOCK_CLIENT = Path(__file__).with_name("stock_client.py")
SIZES = (256, 512)
MIN_FPS = 10.0
MAX_P50_MS = 500.0


async def run_stock_client(base_url: str, size: int, seconds: float = 3.0, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(STOCK_CLIENT), base_url, "--size", str(size), "--warmup", "1", "--seconds", str(seconds), "--texture", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode()[-2000:]
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("size", SIZES)
async def test_stock_aiortc_client_gets_a_steady_stream(identity_pipeline, size):
    async with running_server(identity_pipeline) as server:
        result = await run_stock_client(server.base_url, size)
    assert "error" not in result, result
    assert result["widths"] == [size], result
    assert result["fps"] >= MIN_FPS, result
    assert result["marked"] >= 0.9 * result["frames"], result  # frames arrive whole, not as decoder garbage
    assert result["latency_ms_p50"] is not None and result["latency_ms_p50"] < MAX_P50_MS, result
