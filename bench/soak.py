"""``python -m bench.soak``: many sessions come, steer, go and vanish for minutes; does the server stay healthy?

Starts the real server (``streamgen serve``, a subprocess on loopback, with
an admin token) and keeps ``--sessions`` client slots busy for
``--minutes``. Each slot loops, with its own seeded random generator:
connect through ``POST /offer``, stream a synthetic ``--size`` camera at
``--fps`` for a random lifetime (``--lifetime MIN,MAX`` seconds) while
sending control messages (``params`` with a new prompt, ``ping``,
``reset``) and checking every ack, then leave in one of three ways:

- *end*: ``DELETE /api/sessions/{id}`` with the session's secret, then close;
- *close*: close the peer connection (aiortc says goodbye: DTLS close);
- *vanish* (``--vanish`` probability; always for slot 0's first
  connection, so every run exercises the reaper): a separate client process
  (:mod:`bench.soak_client`) killed with SIGKILL; nothing more is ever sent.
  The server must notice by itself (``--peer-timeout``).

then pause briefly and reconnect. A sampler records the server process's
RSS, open file descriptors, threads, CPU and open sessions (listed with the
admin token) every ``--sample-every`` seconds; a watcher times how long
each vanished session takes to disappear.

The server runs with ``--slo-ms`` (default 2000: on 2 CPU cores the tiny
model admits 4 sessions at 2 s, 2 at its 500 ms default); refusals (503)
are counted and the slot tries again a second later. Before the soak, a
warm-up wave (every slot connects, streams
``--warmup`` seconds and ends) brings the server to its warm idle level
(codecs, caches, the model's buffers). After the soak every client leaves,
the run waits for the server to have no session, and the idle RSS, fds and
threads are compared with the warm idle level: ``memory_returned`` says
whether RSS came back within ``max(10 %, 32 MiB)`` of it. (The server hands
freed heap pages back to the system a couple of seconds after a session
ends, see :mod:`streamgen.server.sessions.memory`; the idle measurements wait
``--settle`` seconds, longer than that.)

Reports: RSS over time, fd and thread counts, sessions opened / refused
(503) / vanished / reaped and the reap time, errors (client-side failures,
failed acks, ERROR lines and tracebacks in the server log), and fps per
connection. Prints tables and writes ``bench/out/soak.json``.

``--adversarial`` runs the soak twice, each on a fresh server: once as
above, once with the hostile clients of :mod:`bench.adversary` beside the
slots (thin frames, bare offers, slow readers, stream-key churn), and
reports the well-behaved clients' fps and the p95 of the gaps between
their output frames (and, for ``--model identity``, of their glass-to-glass
latency) with and without them, plus what the adversaries got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from streamgen.client.webrtc import ClientPeer, ServerError, connect_offer
from streamgen.client.synthetic import MarkerVideoTrack

from .adversary import run_adversaries
from .common import OUT_DIR, machine, percentile, table, write_json
from .server import cpu_seconds, free_port, wait_healthy

MIB = 1024 * 1024
LEAVE_WAYS = ("end", "close", "vanish")


@dataclass(frozen=True)
class SoakSettings:
    model: str = "tiny"
    sessions: int = 8
    minutes: float = 10.0
    seed: int = 1
    size: int = 128
    fps: float = 10.0
    lifetime: tuple[float, float] = (20.0, 90.0)
    vanish: float = 0.25
    control_every: float = 2.0
    peer_timeout: float = 5.0
    warmup: float = 10.0
    sample_every: float = 10.0
    settle: float = 3.0
    slo_ms: float = 2000.0
    out: Path = OUT_DIR / "soak.json"
    adversarial: bool = False


@dataclass
class Connection:
    """One connection of one slot, as the client saw it."""

    slot: int
    index: int
    way: str
    started_at: float
    session_id: str | None = None
    lived_s: float = 0.0
    frames_out: int = 0
    first_frame_at: float | None = None
    acks_ok: int = 0
    acks_failed: int = 0
    error: str | None = None
    gaps_s: list[float] = field(default_factory=list)  # between consecutive output frames
    latencies_s: list[float] = field(default_factory=list)  # glass to glass, where the marker survives (identity)

    @property
    def fps_out(self) -> float | None:
        if self.first_frame_at is None or self.frames_out < 2:
            return None
        span = self.started_at + self.lived_s - self.first_frame_at
        return round(self.frames_out / span, 2) if span > 0 else None


@dataclass
class Run:
    """What the whole soak saw."""

    base: str
    token: str
    settings: SoakSettings
    process: subprocess.Popen
    http: aiohttp.ClientSession
    connections: list[Connection] = field(default_factory=list)
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    vanished: dict[str, float] = field(default_factory=dict)  # session id -> when its client was killed
    reaped: dict[str, float] = field(default_factory=dict)  # session id -> seconds from the kill to its disappearance
    samples: list[dict[str, Any]] = field(default_factory=list)
    children: set[subprocess.Popen] = field(default_factory=set)
    adversaries: dict[str, int] = field(default_factory=dict)

    async def open_sessions(self) -> list[str]:
        async with self.http.get(f"{self.base}/api/sessions", headers={"Authorization": f"Bearer {self.token}"}) as response:
            if response.status != 200:
                raise ServerError(response.status, await response.text())
            body = await response.json()
        listed = body["sessions"] if isinstance(body, dict) else body
        return [s["id"] for s in listed]


# ------------------------------------------------------------------ the server
def start_server(settings: SoakSettings, port: int, token: str, log_path: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "streamgen", "serve", "--model", settings.model, "--port", str(port),
        "--max-sessions", str(settings.sessions + 4), "--codec", "vp8", "--max-fps", str(settings.fps),
        "--idle-timeout", "30", "--peer-timeout", str(settings.peer_timeout), "--slo-ms", str(settings.slo_ms),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["STREAMGEN_TOKEN"] = token  # not on the command line, where ps would show it
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env)


def process_sample(pid: int) -> dict[str, Any]:
    """RSS (MiB), threads and open fds of a process (Linux /proc)."""
    out: dict[str, Any] = {"rss_mib": None, "threads": None, "fds": None}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_mib"] = round(int(line.split()[1]) / 1024, 1)
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


async def sampler(run: Run, started: float, stop: asyncio.Event) -> None:
    last_cpu, last_at = cpu_seconds(run.process.pid), time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), run.settings.sample_every)
        except TimeoutError:
            pass
        cpu, now = cpu_seconds(run.process.pid), time.monotonic()
        sample = {"t_s": round(now - started, 1), **process_sample(run.process.pid)}
        sample["cpu_pct"] = round(100 * (cpu - last_cpu) / (now - last_at), 1) if cpu is not None and last_cpu is not None else None
        last_cpu, last_at = cpu, now
        try:
            sample["sessions"] = len(await run.open_sessions())
        except (aiohttp.ClientError, ServerError) as error:
            run.errors.append(f"listing sessions: {error}")
        run.samples.append(sample)


async def reap_watcher(run: Run, stop: asyncio.Event) -> None:
    """Time from each SIGKILL to the server no longer listing that session."""
    while not stop.is_set() or len(run.reaped) < len(run.vanished):
        pending = [sid for sid in run.vanished if sid not in run.reaped]
        if pending:
            try:
                listed = set(await run.open_sessions())
            except (aiohttp.ClientError, ServerError):
                listed = set(pending)
            now = time.monotonic()
            for sid in pending:
                if sid not in listed:
                    run.reaped[sid] = round(now - run.vanished[sid], 2)
                elif now - run.vanished[sid] > run.settings.peer_timeout + 60:
                    run.reaped[sid] = float("inf")  # never: reported as unreaped
        elif stop.is_set():
            return
        await asyncio.sleep(0.25)


# ------------------------------------------------------------------- clients
async def live_client(run: Run, conn: Connection, rng: random.Random, lifetime: float) -> None:
    """An in-process client: streams, steers on the control channel, then leaves by ``conn.way``."""
    s = run.settings
    track = MarkerVideoTrack(s.size, s.size, s.fps, first_marker=conn.slot * 1_000_000 + conn.index * 10_000, marked=s.model == "identity")
    peer: ClientPeer = await connect_offer(run.base, track, {"prompt": f"soak slot {conn.slot}", "seed": conn.slot + 1}, token=run.token, codecs=["VP8"], http=run.http)
    conn.session_id = peer.session_id
    last: list[float] = []

    def on_frame(frame: Any) -> None:
        conn.frames_out += 1
        if conn.first_frame_at is None:
            conn.first_frame_at = frame.received_at
        if last:
            conn.gaps_s.append(frame.received_at - last[0])
        last[:] = [frame.received_at]
        sent = track.sent_at.get(frame.marker) if frame.marker is not None else None
        if sent is not None:
            conn.latencies_s.append(frame.received_at - sent)

    peer.on_frame = on_frame
    try:
        end = conn.started_at + lifetime
        n = 0
        while time.monotonic() < end:
            await asyncio.sleep(min(max(0.0, end - time.monotonic()), s.control_every * (0.5 + rng.random())))
            if time.monotonic() >= end or peer.pc.connectionState in ("failed", "closed"):
                break
            n += 1
            kind = rng.choice(("params", "params", "ping", "reset"))
            message: dict[str, Any] = {"type": kind}
            if kind == "params":
                message["params"] = {"prompt": f"soak slot {conn.slot} change {n}"}
            try:
                ack = await peer.control(message, timeout=10.0)
            except (TimeoutError, ConnectionError) as error:
                conn.acks_failed += 1
                run.errors.append(f"slot {conn.slot}: {kind} got no ack ({type(error).__name__})")
                continue
            if ack.get("ok"):
                conn.acks_ok += 1
            else:
                conn.acks_failed += 1
                run.errors.append(f"slot {conn.slot}: {kind} refused: {ack.get('error')}")
        if conn.way == "end":
            try:
                await peer.end()
            except ServerError as error:
                if error.status != 404:  # already gone (closed by the server) is fine
                    raise
    finally:
        conn.lived_s = round(time.monotonic() - conn.started_at, 2)
        await peer.close(delete=False)


async def vanishing_client(run: Run, conn: Connection, lifetime: float) -> None:
    """A client process that streams for ``lifetime`` seconds, then is killed with SIGKILL."""
    s = run.settings
    env = {**os.environ, "STREAMGEN_TOKEN": run.token}
    child = subprocess.Popen([sys.executable, "-m", "bench.soak_client", run.base, str(s.size), str(s.fps)], stdout=subprocess.PIPE, text=True, env=env)
    run.children.add(child)
    try:
        line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, child.stdout.readline), 30)
        answer = json.loads(line) if line.strip() else {"error": "the client process exited"}
        if "session_id" not in answer:
            if answer.get("status") == 503:
                raise ServerError(503, answer)
            raise RuntimeError(f"vanishing client failed: {answer}")
        conn.session_id = answer["session_id"]
        await asyncio.sleep(max(0.0, conn.started_at + lifetime - time.monotonic()))
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            if conn.session_id is not None:
                run.vanished[conn.session_id] = time.monotonic()
        child.stdout.close()
        run.children.discard(child)
        conn.lived_s = round(time.monotonic() - conn.started_at, 2)


async def slot_loop(run: Run, slot: int, until: float) -> None:
    s = run.settings
    rng = random.Random(s.seed * 1000 + slot)
    index = 0
    while time.monotonic() < until - 1.0:
        if slot == 0 and index == 0 and s.vanish > 0:
            way = "vanish"
        else:
            way = "vanish" if rng.random() < s.vanish else rng.choice(("end", "close"))
        lifetime = min(rng.uniform(*s.lifetime), max(1.0, until - time.monotonic()))
        conn = Connection(slot, index, way, time.monotonic())
        index += 1
        try:
            if way == "vanish":
                await vanishing_client(run, conn, lifetime)
            else:
                await live_client(run, conn, rng, lifetime)
            run.connections.append(conn)
        except ServerError as error:
            if error.status == 503:  # full (vanished sessions not reaped yet) or admission: try again soon
                run.refused += 1
                await asyncio.sleep(1.0)
                continue
            conn.error = str(error)
            run.errors.append(f"slot {slot}: {error}")
            run.connections.append(conn)
        except Exception as error:  # noqa: BLE001 - a soak counts failures instead of stopping at the first
            conn.error = f"{type(error).__name__}: {error}"
            run.errors.append(f"slot {slot}: {conn.error}")
            run.connections.append(conn)
        await asyncio.sleep(rng.uniform(0.2, 1.5))


async def warm_up(run: Run) -> None:
    """Every slot streams ``warmup`` seconds and ends: the server reaches its warm idle level."""
    s = run.settings

    async def one(slot: int) -> None:
        try:
            peer = await connect_offer(run.base, MarkerVideoTrack(s.size, s.size, s.fps, marked=False), {"prompt": "warm-up"}, token=run.token, codecs=["VP8"], http=run.http)
        except ServerError as error:
            if error.status == 503:  # admission control: the soak's slots will meet it too
                return
            raise
        try:
            await asyncio.sleep(s.warmup)
            await peer.end()
        finally:
            await peer.close(delete=False)

    if s.warmup > 0:
        await asyncio.gather(*(one(i) for i in range(s.sessions)))


async def wait_until_no_session(run: Run, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not await run.open_sessions():
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise TimeoutError(f"sessions were still open {timeout:g} s after every client left")


async def idle_level(run: Run, settle: float | None = None) -> dict[str, Any]:
    await asyncio.sleep(run.settings.settle if settle is None else settle)
    return process_sample(run.process.pid)


# ------------------------------------------------------------------------ run
async def soak(settings: SoakSettings) -> dict[str, Any]:
    port, token = free_port(), secrets.token_urlsafe(24)
    base = f"http://127.0.0.1:{port}"
    log_path = settings.out.parent / f"soak-server-{settings.model}.log"
    process = start_server(settings, port, token, log_path)
    stop = asyncio.Event()
    run: Run | None = None
    try:
        async with aiohttp.ClientSession() as http:
            run = Run(base, token, settings, process, http)
            await wait_healthy(http, base, process)
            fresh = await idle_level(run, min(1.0, settings.settle))
            await warm_up(run)
            await wait_until_no_session(run, 30)
            warm = await idle_level(run)
            started = time.monotonic()
            until = started + settings.minutes * 60
            tasks = [asyncio.ensure_future(sampler(run, started, stop)), asyncio.ensure_future(reap_watcher(run, stop))]
            hostile = asyncio.ensure_future(run_adversaries(base, token, until)) if settings.adversarial else None
            await asyncio.gather(*(slot_loop(run, i, until) for i in range(settings.sessions)))
            run.adversaries = await hostile if hostile is not None else {}
            soak_s = time.monotonic() - started
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), settings.peer_timeout + 70)
            drained_s = await wait_until_no_session(run, settings.peer_timeout + 30)
            end = await idle_level(run)
            run.samples.append({"t_s": round(time.monotonic() - started, 1), **end, "cpu_pct": None, "sessions": 0})
    finally:
        for child in list(run.children if run is not None else ()):
            child.kill()
            child.wait(10)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log = log_path.read_text(errors="replace")
    return summarize(run, fresh, warm, end, soak_s, drained_s, log)


def summarize(run: Run, fresh: dict, warm: dict, end: dict, soak_s: float, drained_s: float, log: str) -> dict[str, Any]:
    s = run.settings
    conns = run.connections
    reap_times = [v for v in run.reaped.values() if v != float("inf")]
    rss = [x["rss_mib"] for x in run.samples if x.get("rss_mib") is not None]
    tolerance = max(0.10 * (warm["rss_mib"] or 0), 32.0)
    fps = [c.fps_out for c in conns if c.fps_out is not None]
    gaps = [g for c in conns for g in c.gaps_s]
    latencies = [x for c in conns for x in c.latencies_s]
    log_errors = [line for line in log.splitlines() if " ERROR " in line or line.startswith("ERROR") or "Traceback" in line]
    return {
        "model": s.model,
        "sessions": s.sessions,
        "soak_s": round(soak_s, 1),
        "connections": len(conns),
        "by_way": {way: sum(c.way == way for c in conns) for way in LEAVE_WAYS},
        "refused_503": run.refused,
        "vanished": len(run.vanished),
        "reaped": len(reap_times),
        "unreaped": len(run.vanished) - len(reap_times),
        "reap_s_p50": percentile(reap_times, 50),
        "reap_s_max": max(reap_times) if reap_times else None,
        "acks_ok": sum(c.acks_ok for c in conns),
        "acks_failed": sum(c.acks_failed for c in conns),
        "client_errors": len(run.errors),
        "server_log_errors": len(log_errors),
        "fps_out_mean": round(statistics.mean(fps), 2) if fps else None,
        "fps_out_min": min(fps) if fps else None,
        "frame_gap_ms_p95": None if not gaps else round(1000 * percentile(gaps, 95), 1),
        "latency_ms_p95": None if not latencies else round(1000 * percentile(latencies, 95), 1),
        "adversarial": s.adversarial,
        "adversaries": run.adversaries,
        "rss_mib_fresh": fresh["rss_mib"],
        "rss_mib_warm_idle": warm["rss_mib"],
        "rss_mib_peak": max(rss) if rss else None,
        "rss_mib_end_idle": end["rss_mib"],
        "memory_returned": end["rss_mib"] is not None and warm["rss_mib"] is not None and end["rss_mib"] <= warm["rss_mib"] + tolerance,
        "fds_warm_idle": warm["fds"],
        "fds_peak": max((x["fds"] for x in run.samples if x.get("fds") is not None), default=None),
        "fds_end_idle": end["fds"],
        "threads_warm_idle": warm["threads"],
        "threads_peak": max((x["threads"] for x in run.samples if x.get("threads") is not None), default=None),
        "threads_end_idle": end["threads"],
        "drained_s": round(drained_s, 1),
        "errors": run.errors[:50],
        "server_log_error_lines": log_errors[:20],
        "timeline": run.samples,
        "connections_detail": [
            {**{k: v for k, v in asdict(c).items() if k not in ("gaps_s", "latencies_s")}, "fps_out": c.fps_out} for c in conns
        ],
    }


# --------------------------------------------------------------------- output
SUMMARY_COLUMNS = [
    ("model", "model"), ("sessions", "slots"), ("soak_s", "soak s"), ("connections", "connections"), ("refused_503", "503s"),
    ("vanished", "vanished"), ("reaped", "reaped"), ("reap_s_max", "reap s max"), ("acks_ok", "acks ok"), ("acks_failed", "acks failed"),
    ("client_errors", "client errors"), ("server_log_errors", "server errors"), ("fps_out_mean", "fps out"), ("fps_out_min", "fps min"),
    ("frame_gap_ms_p95", "gap p95 ms"), ("latency_ms_p95", "latency p95 ms"),
]
COMPARISON_COLUMNS = [
    ("phase", "well-behaved clients"), ("fps_out_mean", "fps out"), ("fps_out_min", "fps min"), ("frame_gap_ms_p95", "gap p95 ms"),
    ("latency_ms_p95", "latency p95 ms"), ("refused_503", "their 503s"), ("client_errors", "their errors"), ("server_log_errors", "server errors"),
]
MEMORY_COLUMNS = [
    ("rss_mib_fresh", "RSS fresh"), ("rss_mib_warm_idle", "RSS warm idle"), ("rss_mib_peak", "RSS peak"), ("rss_mib_end_idle", "RSS end idle"),
    ("memory_returned", "returned"), ("fds_warm_idle", "fds idle"), ("fds_peak", "fds peak"), ("fds_end_idle", "fds end"),
    ("threads_warm_idle", "threads idle"), ("threads_peak", "threads peak"), ("threads_end_idle", "threads end"),
]
TIMELINE_COLUMNS = [("t_s", "t s"), ("sessions", "sessions"), ("rss_mib", "RSS MiB"), ("fds", "fds"), ("threads", "threads"), ("cpu_pct", "CPU %")]


def parse_pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    pair = (float(low), float(high or low))
    if not 0 < pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX seconds with 0 < MIN <= MAX, got {text!r}")
    return pair


def parse_args(argv: list[str] | None) -> SoakSettings:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="server model: tiny (default) or identity (the transport alone)")
    parser.add_argument("--sessions", type=int, default=8, help="client slots kept busy at once (default 8)")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak duration (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the slots' choices (default 1)")
    parser.add_argument("--size", type=int, default=128, help="input width and height (default 128)")
    parser.add_argument("--fps", type=float, default=10.0, help="input frames per second per client (default 10)")
    parser.add_argument("--lifetime", type=parse_pair, default=(20.0, 90.0), metavar="MIN,MAX", help="seconds one connection lives (default 20,90)")
    parser.add_argument("--vanish", type=float, default=0.25, help="share of connections that vanish (SIGKILL) instead of leaving (default 0.25)")
    parser.add_argument("--control-every", type=float, default=2.0, metavar="S", help="mean seconds between control messages (default 2)")
    parser.add_argument("--peer-timeout", type=float, default=5.0, metavar="S", help="the server's --peer-timeout (default 5)")
    parser.add_argument("--warmup", type=float, default=10.0, metavar="S", help="seconds of the warm-up wave (default 10; 0: none)")
    parser.add_argument("--sample-every", type=float, default=10.0, metavar="S", help="seconds between resource samples (default 10)")
    parser.add_argument("--settle", type=float, default=3.0, metavar="S", help="seconds the server idles before each idle measurement (default 3)")
    parser.add_argument("--slo-ms", type=float, default=2000.0, metavar="MS", help="the server's --slo-ms: admission control admits sessions that meet it (default 2000)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "soak.json", help="JSON output (default bench/out/soak.json)")
    parser.add_argument("--adversarial", action="store_true", help="run twice: without, then with hostile clients beside the slots (bench/adversary.py)")
    a = parser.parse_args(argv)
    if a.sessions < 1 or a.minutes <= 0 or not 0 <= a.vanish <= 1:
        parser.error("--sessions must be >= 1, --minutes > 0 and --vanish within [0, 1]")
    return SoakSettings(
        a.model, a.sessions, a.minutes, a.seed, a.size, a.fps, a.lifetime, a.vanish, a.control_every, a.peer_timeout, a.warmup,
        a.sample_every, a.settle, a.slo_ms, a.out, a.adversarial,
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    phases = [replace(settings, adversarial=False), settings] if settings.adversarial else [settings]
    results = []
    for phase in phases:
        hostile = " with hostile clients beside them" if phase.adversarial else ""
        print(f"soak: {phase.sessions} slot(s) of {phase.model} for {phase.minutes:g} min{hostile} ...", flush=True)
        result = asyncio.run(soak(phase))
        results.append(result)
        print(table([result], SUMMARY_COLUMNS))
        print(table([result], MEMORY_COLUMNS))
        print(table(result["timeline"], TIMELINE_COLUMNS))
        for line in result["errors"][:10]:
            print(f"error: {line}")
    if settings.adversarial:
        rows = [{"phase": "alone" if not r["adversarial"] else "beside the adversaries", **r} for r in results]
        print(table(rows, COMPARISON_COLUMNS))
        print("adversaries: " + ", ".join(f"{k} x{v}" for k, v in results[-1]["adversaries"].items()))
    report = {"benchmark": "soak", "machine": machine(), "settings": {**asdict(settings), "out": str(settings.out)}, "results": results}
    write_json("soak", report, settings.out)
    print(f"wrote {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
