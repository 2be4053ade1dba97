"""``python -m bench.server``: N aiortc clients stream through ``streamgen serve`` for a fixed time.

For each model (default: ``identity`` then ``tiny``) the benchmark starts the
real server as a subprocess on loopback, connects ``--clients`` aiortc
clients through ``POST /offer`` (the browser's path), each sending a
synthetic ``--size`` x ``--size`` camera at ``--fps`` with a frame counter
stamped into every frame, and reports:

- time to first frame, client side (offer sent → first output frame decoded)
  and server side (session created → first output frame ready);
- frames per second in (sent) and out (received), per client;
- glass-to-glass latency p50/p95: from the moment a frame is handed to the
  client's WebRTC sender until its output is decoded by the client. With
  ``identity`` the counter is read back from the output frame (``marker``).
  A diffusion model's output hides the counter, so the output frame's
  timestamp is used instead (``pts``): the server gives every output frame
  its input frame's timestamp. With ``identity`` both are measured and their
  largest disagreement is reported (``marker_vs_pts_ms``);
- latency drift: p50 of the last third of the run minus p50 of the first
  third (positive = latency grows over time);
- input frames the server dropped (a newer frame replaced them before the
  model was free), the server's own latency, and the server process's CPU
  use (100 % = one core);
- per session: achieved fps out, latency p50/p95, and the share of output
  frames whose glass-to-glass latency missed the deadline ``--slo-ms``
  (which is also the server's ``--slo-ms``); clients refused by admission
  control (503) are counted, not fatal.

``--cpu-hog`` runs one busy process beside the server (what a shared
machine looks like) and runs every model twice in the same invocation:
with streamgen's thread budget (passive OpenMP waiting, cores − 1 model
threads) and without it (the OpenMP default wait policy, a model thread
per core), so the two are compared under the same load.

``identity`` costs nothing to run, so its latency is the transport's own
cost: decode, scale, encode, jitter buffers, loopback network.

Prints a table and writes ``bench/out/server.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from streamgen.client.webrtc import ClientPeer, ReceivedFrame, ServerError, connect_offer
from streamgen.client.synthetic import CLOCK_RATE, MarkerVideoTrack

from .common import OUT_DIR, machine, ms, percentile, table, write_json

MARKER_STRIDE = 1_000_000  # client i's markers start at i * MARKER_STRIDE


@dataclass(frozen=True)
class BenchSettings:
    models: tuple[str, ...] = ("identity", "tiny")
    clients: int = 2
    duration: float = 20.0
    warmup: float = 2.0
    fps: float = 30.0
    size: int = 256
    codec: str = "vp8"
    out: Path = OUT_DIR / "server.json"
    slo_ms: float = 500.0
    cpu_hog: bool = False


@dataclass
class ClientRecord:
    """What one client saw."""

    track: MarkerVideoTrack
    started_at: float
    peer: ClientPeer | None = None
    first_frame_at: float | None = None
    first_output_pts: int | None = None
    samples: list[tuple[float, float | None, float | None]] = field(default_factory=list)  # (received_at, marker latency, pts latency)

    def on_frame(self, frame: ReceivedFrame) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = frame.received_at
        by_marker = self._latency(frame.marker, frame.received_at)
        by_pts = None
        if self.first_output_pts is not None and frame.pts is not None:
            index = round((frame.pts + self.first_output_pts) * self.track.fps / CLOCK_RATE)
            by_pts = self._latency(self.track.first_marker + index, frame.received_at)
        self.samples.append((frame.received_at, by_marker, by_pts))

    def _latency(self, marker: int | None, received_at: float) -> float | None:
        sent = self.track.sent_at.get(marker) if marker is not None else None
        return None if sent is None else received_at - sent


# --------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


THREAD_MODES = {
    # streamgen's default: passive OpenMP waiting, cores - 1 model threads
    "budget": ({}, []),
    # what a server without a budget does: OpenMP's default (spinning) wait, one model thread per core
    "no-budget": ({"OMP_WAIT_POLICY": ""}, ["--threads", str(os.cpu_count() or 1)]),
}


def start_server(model: str, port: int, settings: BenchSettings, log_path: Path, threads: str = "budget") -> subprocess.Popen:
    env_changes, flags = THREAD_MODES[threads]
    command = [
        sys.executable, "-m", "streamgen", "serve", "--model", model, "--port", str(port),
        "--max-sessions", str(max(4, settings.clients)), "--codec", settings.codec,
        "--max-fps", str(settings.fps), "--idle-timeout", "60", "--slo-ms", str(settings.slo_ms), *flags,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(env_changes)
    log = log_path.open("w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def start_cpu_hog() -> subprocess.Popen:
    """One busy process: a pure-Python spin loop that takes a whole core."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


async def wait_healthy(http: aiohttp.ClientSession, base: str, process: subprocess.Popen, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}; see its log")
        try:
            async with http.get(f"{base}/health") as response:
                return await response.json()
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    raise TimeoutError("the server did not answer /health")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------- clients
async def connect_client(base: str, index: int, settings: BenchSettings, http: aiohttp.ClientSession) -> ClientRecord:
    track = MarkerVideoTrack(settings.size, settings.size, settings.fps, first_marker=index * MARKER_STRIDE)
    record = ClientRecord(track=track, started_at=time.monotonic())
    params = {"prompt": f"benchmark client {index}", "seed": index + 1}
    record.peer = await connect_offer(base, track, params, codecs=[settings.codec.upper()], http=http)
    record.peer.on_frame = record.on_frame
    return record


async def learn_first_output_pts(record: ClientRecord, timeout: float = 30.0) -> None:
    """The server's pts of the session's first output frame: the origin of the client's output timestamps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = (await record.peer.describe())["stats"]  # the peer sends its session's secret
        if stats["first_output_pts"] is not None and record.first_frame_at is not None:
            record.first_output_pts = stats["first_output_pts"]
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("no output frame reached the client")


# ------------------------------------------------------------------------ runs
async def connect_or_refused(base: str, index: int, settings: BenchSettings, http: aiohttp.ClientSession) -> ClientRecord | None:
    """A connected client, or None when admission control refused it (503)."""
    try:
        return await connect_client(base, index, settings, http)
    except ServerError as error:
        if error.status == 503:
            return None
        raise


async def run_model(model: str, settings: BenchSettings, threads: str = "budget") -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    process = start_server(model, port, settings, settings.out.parent / f"server-{model}-{threads}.log", threads)
    records: list[ClientRecord] = []
    refused = 0
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base, process)
            connected = []
            for i in range(settings.clients):  # one after another: admission sees each admitted session
                connected.append(await connect_or_refused(base, i, settings, http))
            records = [r for r in connected if r is not None]
            refused = len(connected) - len(records)
            if not records:
                raise RuntimeError("admission control refused every client")
            await asyncio.gather(*(learn_first_output_pts(r) for r in records))
            await asyncio.sleep(settings.warmup)
            window_start, cpu_start = time.monotonic(), cpu_seconds(process.pid)
            sent_start = [r.track.frames_sent for r in records]
            await asyncio.sleep(settings.duration)
            window_end, cpu_end = time.monotonic(), cpu_seconds(process.pid)
            sent_end = [r.track.frames_sent for r in records]
            server_stats = []
            for r in records:
                server_stats.append((await r.peer.describe())["stats"])
            for r in records:
                await r.peer.close()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    span = window_end - window_start
    cpu = None if cpu_start is None or cpu_end is None else round(100 * (cpu_end - cpu_start) / span, 1)
    result = summarize(model, settings, records, server_stats, (window_start, window_end), sent_end, sent_start, cpu)
    result["threads"] = threads
    result["refused"] = refused
    return result


def per_session(records: list[ClientRecord], server_stats: list[dict], window: tuple[float, float], method: str, slo_ms: float) -> list[dict[str, Any]]:
    start, end = window
    out = []
    for r, stats in zip(records, server_stats):
        steady = [s for s in r.samples if start <= s[0] <= end]
        values = [(m if method == "marker" else p) for _, m, p in steady]
        values = [v for v in values if v is not None]
        misses = sum(v * 1000 > slo_ms for v in values)
        out.append({
            "fps_out": round(len(steady) / (end - start), 2),
            "latency_ms_p50": ms(percentile(values, 50)),
            "latency_ms_p95": ms(percentile(values, 95)),
            "deadline_miss_pct": round(100 * misses / len(values), 1) if values else None,
            "server_deadline_misses": stats.get("deadline_misses"),
        })
    return out


def summarize(model: str, settings: BenchSettings, records: list[ClientRecord], server_stats: list[dict], window: tuple[float, float], sent_end: list[int], sent_start: list[int], cpu: float | None) -> dict[str, Any]:
    start, end = window
    span = end - start
    method = "marker" if model == "identity" else "pts"
    latencies, drift_parts, disagreement = [], [], []
    for r in records:
        steady = [s for s in r.samples if start <= s[0] <= end]
        chosen = [(t, by_marker if method == "marker" else by_pts) for t, by_marker, by_pts in steady]
        values = [v for _, v in chosen if v is not None]
        latencies += values
        third = span / 3
        early = [v for t, v in chosen if v is not None and t < start + third]
        late = [v for t, v in chosen if v is not None and t > end - third]
        if early and late:
            drift_parts.append(statistics.median(late) - statistics.median(early))
        disagreement += [abs(a - b) for _, a, b in steady if a is not None and b is not None]
    received = [len([s for s in r.samples if start <= s[0] <= end]) for r in records]
    ttff = [r.first_frame_at - r.started_at for r in records if r.first_frame_at is not None]
    frames_in = sum(s["frames_in"] for s in server_stats)
    dropped = sum(s["dropped"] for s in server_stats)
    return {
        "model": model,
        "clients": len(records),
        "size": f"{settings.size}x{settings.size}",
        "fps_target": settings.fps,
        "codec": settings.codec,
        "duration_s": round(span, 1),
        "ttff_ms_client_max": ms(max(ttff)) if ttff else None,
        "ttff_ms_client_p50": ms(statistics.median(ttff)) if ttff else None,
        "ttff_ms_server_max": max((s["time_to_first_frame_ms"] or 0) for s in server_stats),
        "fps_in": round(statistics.mean((e - b) / span for e, b in zip(sent_end, sent_start)), 1),
        "fps_out": round(statistics.mean(n / span for n in received), 1),
        "latency_method": method,
        "latency_ms_p50": ms(percentile(latencies, 50)),
        "latency_ms_p95": ms(percentile(latencies, 95)),
        "latency_samples": len(latencies),
        "latency_drift_ms": ms(statistics.mean(drift_parts)) if drift_parts else None,
        "server_latency_ms_p50": round(statistics.median([s["latency_ms_p50"] for s in server_stats if s["latency_ms_p50"] is not None] or [0]), 1),
        "dropped": dropped,
        "dropped_pct": round(100 * dropped / frames_in, 1) if frames_in else 0.0,
        "server_cpu_pct": cpu,
        "marker_vs_pts_ms": ms(max(disagreement)) if disagreement else None,
        "slo_ms": settings.slo_ms,
        "deadline_miss_pct": round(100 * sum(v * 1000 > settings.slo_ms for v in latencies) / len(latencies), 1) if latencies else None,
        "sessions": per_session(records, server_stats, window, method, settings.slo_ms),
    }


# ---------------------------------------------------------------------- output
COLUMNS = [
    ("model", "model"), ("threads", "threads"), ("clients", "clients"), ("refused", "refused"), ("ttff_ms_client_max", "TTFF ms"), ("fps_in", "fps in"), ("fps_out", "fps out"),
    ("latency_ms_p50", "g2g p50 ms"), ("latency_ms_p95", "g2g p95 ms"), ("latency_method", "via"), ("latency_drift_ms", "drift ms"),
    ("server_latency_ms_p50", "server ms"), ("dropped_pct", "dropped %"), ("deadline_miss_pct", "miss %"), ("server_cpu_pct", "server CPU %"),
]
SESSION_COLUMNS = [("model", "model"), ("threads", "threads"), ("session", "session"), ("fps_out", "fps out"), ("latency_ms_p50", "p50 ms"), ("latency_ms_p95", "p95 ms"), ("deadline_miss_pct", "miss %")]


def parse_args(argv: list[str] | None) -> BenchSettings:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="identity,tiny", help="comma-separated models to run, one server each (default identity,tiny)")
    parser.add_argument("--clients", type=int, default=2, help="concurrent aiortc clients (default 2)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per model (default 20; use 300 to check that latency does not grow)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds streamed before measuring (default 2)")
    parser.add_argument("--fps", type=float, default=30.0, help="input frames per second per client (default 30)")
    parser.add_argument("--size", type=int, default=256, help="input width and height (default 256)")
    parser.add_argument("--codec", default="vp8", choices=["vp8", "h264"], help="video codec (default vp8)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "server.json", help="JSON output (default bench/out/server.json)")
    parser.add_argument("--slo-ms", type=float, default=500.0, help="per-frame deadline: the server's --slo-ms and the miss threshold (default 500)")
    parser.add_argument("--cpu-hog", action="store_true", help="run a busy process beside the server, with the thread budget on and off")
    args = parser.parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    return BenchSettings(models, args.clients, args.duration, args.warmup, args.fps, args.size, args.codec, args.out, args.slo_ms, args.cpu_hog)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    results = []
    hog = start_cpu_hog() if settings.cpu_hog else None
    try:
        for model in settings.models:
            for threads in (("budget", "no-budget") if settings.cpu_hog else ("budget",)):
                print(f"running {model} ({threads}{', CPU hog' if hog else ''}): {settings.clients} client(s), {settings.duration:g} s ...", flush=True)
                results.append(asyncio.run(run_model(model, settings, threads)))
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    print(table(results, COLUMNS))
    rows = [{"model": r["model"], "threads": r["threads"], "session": i, **s} for r in results for i, s in enumerate(r["sessions"])]
    print(table(rows, SESSION_COLUMNS))
    report = {"benchmark": "server", "machine": machine(), "settings": {**asdict(settings), "out": str(settings.out)}, "results": results}
    write_json("server", report, settings.out)
    print(f"wrote {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
