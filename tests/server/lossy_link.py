"""A bad network between a streamgen server and the stock client, emulated inside the client process.

Loopback never loses a packet, and ``tc netem`` needs a kernel module and
privileges CI machines do not have, so the stock client (``stock_client.py
--loss 2 --link-kbps 20000``) puts this in front of its own ICE
connection instead: every SRTP/SRTCP datagram the server sends it goes
through

- a bottleneck of ``kbps`` with a drop-tail queue holding ``queue_ms`` of
  traffic: a burst larger than the queue (a big keyframe sent at once, as
  aiortc sends every frame) loses its tail, as a home router would;
- independent random loss of ``loss`` (0..1) of the packets that get through.

Only the client's receiving side is affected (STUN and DTLS are left alone,
so the connection still comes up): it is the server's encoder and the
client's unpatched jitter buffer that are under test. The link also reads
the clear-text RTP header of every media packet it is handed (sequence
number, timestamp, SSRC) to count packets per frame *as the server sent
them*, before any loss: the largest frames are the keyframes.

Imports nothing from streamgen (it runs in the stock client's process).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import struct
from collections import Counter
from typing import Any, Callable

RTX_HISTORY = 128  # aiortc keeps this many sent packets for retransmission (aiortc.rtp.RTP_HISTORY_SIZE)


class Downlink:
    """The path from the server to this client (see the module docstring)."""

    def __init__(self, loss: float = 0.0, kbps: float | None = None, queue_ms: float = 50.0, seed: int = 0) -> None:
        self.loss, self.kbps, self.queue_s = loss, kbps, queue_ms / 1000
        self.rng = random.Random(seed)
        self.free_at = 0.0  # when the bottleneck has sent everything queued so far
        self.dropped_random = 0
        self.dropped_queue = 0
        self.media_packets = 0
        self.frame_packets: Counter[tuple[int, int]] = Counter()  # (ssrc, rtp timestamp) -> packets sent

    def install(self) -> None:
        """Route every datagram aioice hands to its connections through this link (this process only)."""
        import aioice  # noqa: PLC0415

        deliver = aioice.Connection.data_received
        link = self

        def data_received(connection: Any, data: bytes, component: int) -> None:
            link.receive(data, lambda: deliver(connection, data, component))

        aioice.Connection.data_received = data_received  # type: ignore[method-assign]

    def receive(self, data: bytes, deliver: Callable[[], None]) -> None:
        if len(data) < 12 or not 128 <= data[0] <= 191:  # not RTP/RTCP: DTLS, ... pass untouched
            deliver()
            return
        is_rtcp = 192 <= data[1] <= 223  # RFC 5761: RTCP packet types 200-207 sit where RTP has marker + payload type
        if not is_rtcp:
            self.media_packets += 1
            timestamp, ssrc = struct.unpack_from("!II", data, 4)
            self.frame_packets[(ssrc, timestamp)] += 1
        if self.loss and self.rng.random() < self.loss:
            self.dropped_random += 1
            return
        if not self.kbps:
            deliver()
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self.free_at)
        if start - now > self.queue_s:
            self.dropped_queue += 1
            return
        self.free_at = start + len(data) * 8 / (self.kbps * 1000)
        loop.call_at(self.free_at, deliver)

    def report(self) -> dict[str, Any]:
        """Packet counts and frame sizes in packets, of the stream with the most packets (not its RTX stream)."""
        per_ssrc: Counter[int] = Counter()
        for (ssrc, _), count in self.frame_packets.items():
            per_ssrc[ssrc] += count
        video = per_ssrc.most_common(1)[0][0] if per_ssrc else None
        sizes = sorted(count for (ssrc, _), count in self.frame_packets.items() if ssrc == video)
        return {
            "link_media_packets": self.media_packets,
            "link_dropped_random": self.dropped_random,
            "link_dropped_queue": self.dropped_queue,
            "frame_packets_p50": statistics.median(sizes) if sizes else None,
            "frame_packets_max": sizes[-1] if sizes else None,
            "frame_packets_top": sizes[-5:][::-1],
            "frames_over_rtx_history": sum(size > RTX_HISTORY for size in sizes),
        }
